"""schemathesis against the OpenAPI document, on `lambda_handler` served in-process.

A tiny WSGI adapter turns each HTTP request into an API Gateway HTTP API (2.0) event (binary bodies
base64-encoded, as API Gateway does) and the handler's proxy reply back into an HTTP response. Only
`POST /run` is served by this handler; the `/runs` operations are served once the async routes exist.
No network: no host is allowlisted, DNS is the fake resolver, and every connection is refused.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import aiohttp
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from fair_runners.openapi import build
from fair_runners.runners import _session
from handler.app import lambda_handler

from ._aws import moto_aws
from .conftest import FakeLambdaContext

EXAMPLES = int(300 * float(os.environ.get("FAIR_RUNNERS_FUZZ_SCALE", "1")))

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def wsgi_app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """Serve `lambda_handler` as API Gateway would call it."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    raw = environ["wsgi.input"].read(length) if length else b""
    try:
        body, encoded = raw.decode("utf-8"), False
    except UnicodeDecodeError:
        body, encoded = base64.b64encode(raw).decode(), True
    headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
    if environ.get("CONTENT_TYPE"):
        headers["content-type"] = environ["CONTENT_TYPE"]
    method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO") or "/"
    event = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": environ.get("QUERY_STRING", ""),
        "headers": headers,
        "requestContext": {"http": {"method": method, "path": path}, "domainName": "local.execute-api.aws"},
        "body": body if raw else None,
        "isBase64Encoded": encoded,
    }
    reply = lambda_handler(event, FakeLambdaContext(30))
    payload = reply["body"].encode()
    status = reply["statusCode"]
    start_response(f"{status} X", [*reply["headers"].items(), ("Content-Length", str(len(payload)))])
    return [payload]


@pytest.fixture(autouse=True)
def _sealed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No backend and no AWS: connections refused, S3 is moto's (empty: `datasets_uri` reads are 4xx)."""
    monkeypatch.delenv("FAIR_RUNNERS_ALLOWED_HOSTS", raising=False)
    monkeypatch.setenv("FAIR_RUNNERS_MAX_ATTEMPTS", "1")

    async def refuse(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise aiohttp.ClientConnectionError("schemathesis: no connections")

    monkeypatch.setattr(_session.GuardedConnector, "connect", refuse)
    yield from moto_aws(monkeypatch)


schema = schemathesis.openapi.from_dict(build())
schema.app = wsgi_app
schema = schema.include(path="/run")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_run_endpoint_against_its_document(case: Any) -> None:
    response = case.call()
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
    # 405: schemathesis also tries methods the document does not declare.
    assert response.status_code in ((200, 400, 413) if case.method.upper() == "POST" else (405,))
    if response.status_code >= 400:
        body = json.loads(response.content)
        assert body["success"] is False and body["error"].strip()
