"""Event sources: recognise an event's shape and turn it into (route, payload); shape replies back.

| Source                                   | Recognised by                                   |
|------------------------------------------|-------------------------------------------------|
| API Gateway HTTP API (2.0), Function URL | `version == "2.0"` and `requestContext.http`    |
| API Gateway REST API (v1 proxy)          | `httpMethod`                                    |
| Step Functions Distributed Map batch     | `Items` (+ optional `BatchInput`, flat or under `request`) |
| Direct invoke                            | anything else: the event is the request         |
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from fair_runners import InvalidRequest
from fair_runners._limits import check_body, check_decoded_body

SourceKind = Literal["http_v2", "function_url", "rest_v1", "map_batch", "direct"]


@dataclass(frozen=True)
class Source:
    """What kind of event arrived and what it asks for."""

    kind: SourceKind
    method: str = "POST"
    path: str = "/run"
    headers: dict[str, str] | None = None
    body: str | None = None
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


def _headers(raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict):
        return {}
    return {str(k).lower(): str(v) for k, v in raw.items() if v is not None}


def _body(event: dict[str, Any]) -> str | None:
    body = event.get("body")
    if body is None:
        return None
    if not isinstance(body, str):
        raise InvalidRequest("the HTTP body must be a string", [{"loc": "body", "msg": "not a string"}])
    encoded = event.get("isBase64Encoded") is True
    check_body(body, base64=encoded)  # before decoding or parsing anything
    if encoded:
        try:
            decoded = base64.b64decode(body, validate=True).decode("utf-8")
            check_decoded_body(decoded)
            return decoded
        except (binascii.Error, ValueError):
            raise InvalidRequest(
                "the body is marked base64 but is not valid base64 UTF-8",
                [{"loc": "body", "msg": "invalid base64 or not UTF-8"}],
            ) from None
    return body


def detect(event: Any) -> Source:
    """Classify an event (never raises for HTTP-shaped events' bodies: those are parsed later)."""
    if isinstance(event, dict):
        context = event.get("requestContext")
        if (
            event.get("version") == "2.0"
            and isinstance(context, dict)
            and isinstance(context.get("http"), dict)
        ):
            http = context["http"]
            domain = str(context.get("domainName", ""))
            kind: SourceKind = "function_url" if ".lambda-url." in domain else "http_v2"
            return Source(
                kind=kind,
                method=str(http.get("method", "")).upper(),
                path=str(event.get("rawPath") or http.get("path") or "/"),
                headers=_headers(event.get("headers")),
                payload=event,
            )
        if "httpMethod" in event:
            return Source(
                kind="rest_v1",
                method=str(event.get("httpMethod", "")).upper(),
                path=str(event.get("path") or event.get("resource") or "/"),
                headers=_headers(event.get("headers")),
                payload=event,
            )
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


def http_payload(source: Source) -> Any:
    """The JSON request inside an HTTP event's body."""
    assert isinstance(source.payload, dict)
    body = _body(source.payload)
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


def http_response(status: int, body: Any, request_id: str) -> dict[str, Any]:
    """An API Gateway / Function URL proxy response."""
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json", "X-Request-Id": request_id},
        "body": json.dumps(body, ensure_ascii=False, separators=(",", ":")),
        "isBase64Encoded": False,
    }
