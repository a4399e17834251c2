"""Event sources: recognise a Lambda event's shape and read what it asks for.

| Source                     | Recognised by                                     | Read with                |
|----------------------------|---------------------------------------------------|--------------------------|
| API Gateway HTTP API (2.0) | `version == "2.0"` and `requestContext.http`      | `APIGatewayProxyEventV2` |
| Lambda Function URL        | the same, on a `*.lambda-url.*` domain            | `LambdaFunctionUrlEvent` |
| API Gateway REST API (v1)  | `httpMethod`                                      | `APIGatewayProxyEvent`   |
| Step Functions Map batch   | `Items` (+ `BatchInput`, flat or under `request`) | (ours)                   |
| Direct invoke              | anything else: the event is the request           | (ours)                   |

The HTTP shapes are read through Powertools' event source data classes; only the Map batch and the direct
invoke, which Powertools has no class for, are read here. A body is size-checked before it is decoded or
parsed, and a malformed event is a 400 naming what is wrong, never an exception.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from aws_lambda_powertools.utilities.data_classes import (
    APIGatewayProxyEvent,
    APIGatewayProxyEventV2,
    LambdaFunctionUrlEvent,
)
from aws_lambda_powertools.utilities.data_classes.common import BaseProxyEvent

from .._errors import InvalidRequest
from .._limits import check_body, check_decoded_body

SourceKind = Literal["http_v2", "function_url", "rest_v1", "map_batch", "direct"]
T = TypeVar("T")


@dataclass(frozen=True)
class Source:
    """What kind of event arrived and what it asks for."""

    kind: SourceKind
    method: str = "POST"
    path: str = "/run"
    headers: dict[str, str] | None = None
    # The Powertools view of an HTTP event; the request itself for the other kinds.
    http: BaseProxyEvent | None = None
    payload: Any = None
    # When the event arrived (monotonic): API Gateway's ~29 s clock starts before any work of ours.
    received_at: float = field(default_factory=time.monotonic)

    @property
    def is_http(self) -> bool:
        """True for events answered with `{statusCode, headers, body}`."""
        return self.kind in ("http_v2", "function_url", "rest_v1")

    @property
    def behind_api_gateway(self) -> bool:
        """True where API Gateway's ~29 s integration timeout applies."""
        return self.kind in ("http_v2", "rest_v1")


def _read(getter: Callable[[], T], default: T) -> T:
    """A data class property, or `default` when the event lacks it or holds the wrong type."""
    try:
        value = getter()
    except (KeyError, TypeError, AttributeError, ValueError):
        return default
    return value if value is not None else default


def _headers(event: BaseProxyEvent) -> dict[str, str]:
    empty: dict[str, str] = {}
    raw = _read(lambda: dict(event.headers), empty)
    return {str(k).lower(): str(v) for k, v in raw.items() if v is not None}


def _http_source(event: dict[str, Any]) -> Source | None:
    context = event.get("requestContext")
    if event.get("version") == "2.0" and isinstance(context, dict) and isinstance(context.get("http"), dict):
        domain = str(context.get("domainName", ""))
        v2: APIGatewayProxyEventV2 | LambdaFunctionUrlEvent
        if ".lambda-url." in domain:
            kind: SourceKind = "function_url"
            v2 = LambdaFunctionUrlEvent(event)
        else:
            kind, v2 = "http_v2", APIGatewayProxyEventV2(event)
        method = _read(lambda: str(v2.request_context.http.method), "")
        path = _read(lambda: str(v2.raw_path), "") or _read(lambda: str(v2.request_context.http.path), "")
        return Source(kind, method.upper(), path or "/", _headers(v2), v2, event)
    if "httpMethod" in event:
        v1 = APIGatewayProxyEvent(event)
        method = _read(lambda: str(v1.http_method), "")
        path = _read(lambda: str(v1.path), "") or _read(lambda: str(v1.resource), "")
        return Source("rest_v1", method.upper(), path or "/", _headers(v1), v1, event)
    return None


def detect(event: Any) -> Source:
    """Classify an event (an HTTP event's body is read later, by `http_payload`)."""
    if isinstance(event, dict):
        http = _http_source(event)
        if http is not None:
            return http
        if "Items" in event:
            items = event.get("Items")
            batch_input = event.get("BatchInput") or {}
            if not isinstance(items, list):
                raise InvalidRequest(
                    "Items must be a list of datasets", [{"loc": "Items", "msg": "not a list"}]
                )
            if not isinstance(batch_input, dict):
                raise InvalidRequest(
                    "BatchInput must be an object", [{"loc": "BatchInput", "msg": "not an object"}]
                )
            # The state machine nests the request under `request` (often just `{"request_uri": ...}`).
            nested = batch_input.get("request")
            if isinstance(nested, dict):
                batch_input = {**{k: v for k, v in batch_input.items() if k != "request"}, **nested}
            return Source(kind="map_batch", payload={**batch_input, "datasets": items})
    return Source(kind="direct", payload=event)


def _body(source: Source) -> str | None:
    event = source.http
    assert event is not None
    body = _read(lambda: event.body, None)
    if body is None:
        return None
    if not isinstance(body, str):
        raise InvalidRequest("the HTTP body must be a string", [{"loc": "body", "msg": "not a string"}])
    encoded = _read(lambda: bool(event.is_base64_encoded), False)
    check_body(body, base64=encoded)  # before decoding or parsing anything
    if not encoded:
        return body
    try:
        decoded = base64.b64decode(body, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise InvalidRequest(
            "the body is marked base64 but is not valid base64 UTF-8",
            [{"loc": "body", "msg": "invalid base64 or not UTF-8"}],
        ) from None
    check_decoded_body(decoded)
    return decoded


def http_payload(source: Source) -> Any:
    """The JSON request inside an HTTP event's body."""
    body = _body(source)
    if body is None or not body.strip():
        raise InvalidRequest(
            "the request body is empty", [{"loc": "body", "msg": "a JSON object is required"}]
        )
    try:
        return json.loads(body, parse_constant=_constant)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(
            f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            [{"loc": "body", "msg": f"invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"}],
        ) from None
    except RecursionError:
        raise InvalidRequest("the body is nested too deeply", [{"loc": "body", "msg": "too deep"}]) from None
    except ValueError as exc:  # CPython's limit on the digits of an integer literal (4,300)
        raise InvalidRequest(
            "the body is not valid JSON here: a number is too long",
            [{"loc": "body", "msg": f"invalid JSON: {str(exc)[:200]}"}],
        ) from None


def _constant(name: str) -> float:
    """`NaN`/`Infinity` are not JSON, but parsing them as numbers lets the checks name the field."""
    return float(name)
