"""Helpers shared by the security and fuzz tests: event builders, a leak scanner over every output."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from fair_runners import InvalidRequest, PayloadTooLarge
from fair_runners._redact import install_log_redaction
from fair_runners.edge import lambda_app as handler_app

from .conftest import ALQUIMIA_KEY, LLM_KEY, FakeLambdaContext

# Secrets used by the tests: none may ever show up in a response, an error, a log line or a metric.
ENV_KEY = "env-secret-key-0123456789"
EXTRA_KEY = 'sk-live-"quoted"\\slash-ABCDEFGH'
TEST_KEYS = (ALQUIMIA_KEY, LLM_KEY, ENV_KEY, EXTRA_KEY)

SHAPES = ("http_v2", "function_url", "rest_v1", "map_batch", "direct")


def http_v2(
    body: str | None, *, path: str = "/run", method: str = "POST", b64: bool = False
) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) event."""
    return {
        "version": "2.0",
        "routeKey": f"{method} {path}",
        "rawPath": path,
        "headers": {"content-type": "application/json"},
        "requestContext": {"http": {"method": method, "path": path}, "domainName": "x.execute-api.aws"},
        "body": body,
        "isBase64Encoded": b64,
    }


def function_url(body: str | None, *, b64: bool = False) -> dict[str, Any]:
    """A Lambda Function URL event."""
    event = http_v2(body, path="/", b64=b64)
    event["requestContext"]["domainName"] = "abc.lambda-url.us-east-1.on.aws"
    return event


def rest_v1(body: str | None, *, b64: bool = False) -> dict[str, Any]:
    """An API Gateway REST API (v1 proxy) event."""
    return {
        "resource": "/run",
        "path": "/run",
        "httpMethod": "POST",
        "headers": {"Content-Type": "application/json"},
        "body": body,
        "isBase64Encoded": b64,
    }


def event_for(shape: str, payload: Any) -> Any:
    """`payload` (a request) wrapped in the event shape `shape`."""
    if shape in ("http_v2", "function_url", "rest_v1"):
        body = json.dumps(payload)
        return {"http_v2": http_v2, "function_url": function_url, "rest_v1": rest_v1}[shape](body)
    if shape == "map_batch":
        if isinstance(payload, dict):
            rest = {k: v for k, v in payload.items() if k != "datasets"}
            return {"Items": payload.get("datasets"), "BatchInput": rest}
        return {"Items": payload}
    return payload


def b64(text: str) -> str:
    """Base64 of UTF-8 text."""
    return base64.b64encode(text.encode()).decode()


@dataclass
class Outcome:
    """What `lambda_handler` did with one event: an HTTP status and body, a result, or a typed error."""

    status: int
    body: Any = None
    error: InvalidRequest | None = None
    raw: Any = field(default=None, repr=False)


def invoke(event: Any, context: Any | None = None) -> Outcome:
    """Call `lambda_handler`; HTTP replies and direct results/typed errors become an `Outcome`.

    Any exception other than `InvalidRequest`/`PayloadTooLarge` propagates (the tests fail on it).
    """
    context = context or FakeLambdaContext(30)
    try:
        reply = handler_app.lambda_handler(event, context)
    except InvalidRequest as exc:
        status = 413 if isinstance(exc, PayloadTooLarge) else 400
        return Outcome(status=status, error=exc, raw=str(exc))
    if isinstance(reply, dict) and "statusCode" in reply:
        return Outcome(status=reply["statusCode"], body=json.loads(reply["body"]), raw=reply)
    return Outcome(status=200, body=reply, raw=reply)


def assert_clean(*values: Any, keys: tuple[str, ...] = TEST_KEYS) -> None:
    """No test key, raw or JSON-escaped, appears anywhere in `values`."""
    for value in values:
        text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
        for key in keys:
            assert key not in text, f"secret {key[:4]}... leaked"
            escaped = json.dumps(key)[1:-1]
            assert escaped not in text, f"secret {key[:4]}... leaked (escaped)"


def assert_rejected(outcome: Outcome, loc_prefix: str | None = None, status: int = 400) -> None:
    """A 4xx with a message (and, when given, a detail whose `loc` starts with `loc_prefix`)."""
    assert outcome.status == status, outcome
    if outcome.error is not None:
        message, details = outcome.error.message, outcome.error.details
    else:
        assert outcome.body["success"] is False
        message, details = outcome.body["error"], outcome.body.get("details", [])
    assert isinstance(message, str) and message.strip()
    if loc_prefix is not None:
        assert any(str(d.get("loc", "")).startswith(loc_prefix) for d in details), details


class LeakScan:
    """Collects every log line (Powertools, root logger) and stdout/stderr of a test for the leak scan."""

    def __init__(self, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
        self._caplog = caplog
        self._capsys = capsys
        self.powertools = io.StringIO()
        self.texts: list[str] = []

    def text(self) -> str:
        """Everything captured so far."""
        out = self._capsys.readouterr()
        self.texts += [out.out, out.err]
        return "\n".join([*self.texts, self.powertools.getvalue(), self._caplog.text])


@pytest.fixture
def leak_scan(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[LeakScan]:
    """Capture all output at DEBUG (the Powertools logger and the root logger as Lambda has them) and,
    after the test, assert that no test key is in any of it."""
    caplog.set_level(logging.DEBUG)
    install_log_redaction(caplog.handler)  # as the Lambda runtime's root handler gets it at import
    scan = LeakScan(caplog, capsys)
    powertools_handler = handler_app.logger.registered_handler
    assert isinstance(powertools_handler, logging.StreamHandler)
    old_stream = powertools_handler.setStream(scan.powertools)
    old_level = handler_app.logger.log_level
    handler_app.logger.setLevel(logging.DEBUG)
    try:
        yield scan
    finally:
        powertools_handler.setStream(old_stream)
        handler_app.logger.setLevel(old_level)
    assert_clean(scan.text())
