"""`fair-runners serve`: a local HTTP API in front of `lambda_handler`, the no-Docker `sam local start-api`.

Every request, whatever its method and path, becomes an API Gateway HTTP API (payload 2.0) event; the
handler routes it (and answers 404/405 itself), and its `{statusCode, headers, body}` goes back to the
client. Invocations run one at a time on a worker thread, like one warm Lambda instance: the handler runs
its own event loop and keeps module-level logger and metrics state.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ._invoke import Handler, LambdaContext, invoke

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript", "+json", "+xml")
_TEXT_TYPES_EXACT = ("application/x-www-form-urlencoded",)


def _is_text(content_type: str) -> bool:
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind in _TEXT_TYPES_EXACT or any(t in kind for t in _TEXT_TYPES) or not kind


def build_event(request: Request, body: bytes, stage: str = "$default") -> dict[str, Any]:
    """The API Gateway HTTP API v2 event for one request."""
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in request.headers.items():
        if name == "cookie":
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
            continue
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    query: dict[str, str] = {}
    for name, value in parse_qsl(request.url.query, keep_blank_values=True):
        query[name] = f"{query[name]},{value}" if name in query else value
    if not body:
        text, is_base64 = None, False
    elif _is_text(headers.get("content-type", "")):
        try:
            text, is_base64 = body.decode("utf-8"), False
        except UnicodeDecodeError:
            text, is_base64 = base64.b64encode(body).decode(), True
    else:
        text, is_base64 = base64.b64encode(body).decode(), True
    now = time.time()
    request_id = str(uuid.uuid4())
    host = headers.get("host", "127.0.0.1")
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": request.url.path,
        "rawQueryString": request.url.query,
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "local",
            "domainName": host,
            "domainPrefix": host.split(".", 1)[0],
            "http": {
                "method": request.method,
                "path": request.url.path,
                "protocol": f"HTTP/{request.scope.get('http_version', '1.1')}",
                "sourceIp": request.client.host if request.client else "127.0.0.1",
                "userAgent": headers.get("user-agent", ""),
            },
            "requestId": request_id,
            "routeKey": "$default",
            "stage": stage,
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": is_base64,
    }
    if cookies:
        event["cookies"] = cookies
    if query:
        event["queryStringParameters"] = query
    if text is not None:
        event["body"] = text
    return event


def to_response(result: Any) -> Response:
    """The HTTP response API Gateway would send for a handler's return value (payload format 2.0)."""
    if not (isinstance(result, dict) and "statusCode" in result):
        # 2.0 format: anything without statusCode is a JSON body with status 200.
        return JSONResponse(result)
    body = result.get("body") or ""
    content = base64.b64decode(body) if result.get("isBase64Encoded") else str(body).encode()
    response = Response(content=content, status_code=int(result["statusCode"]))
    for name, value in (result.get("headers") or {}).items():
        response.headers[str(name)] = str(value)
    if "content-type" not in {str(k).lower() for k in (result.get("headers") or {})}:
        response.headers["content-type"] = "application/json"
    for cookie in result.get("cookies") or []:
        response.headers.append("set-cookie", str(cookie))
    return response


class LambdaProxy:
    """The ASGI app: every HTTP request -> v2 event -> `handler` -> HTTP response."""

    def __init__(self, handler: Handler, timeout_s: float = 900.0, log: Callable[[str], None] | None = None):
        self.handler = handler
        self.timeout_s = timeout_s
        self.log = log
        self._one_at_a_time = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # nothing to set up, but say so
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return  # websockets: not an API Gateway HTTP API feature
        request = Request(scope, receive)
        event = build_event(request, await request.body())
        response = await run_in_threadpool(self._invoke, event)
        await response(scope, receive, send)

    def _invoke(self, event: dict[str, Any]) -> Response:
        with self._one_at_a_time:  # the deadline starts when the instance picks the event up
            context = LambdaContext(
                timeout_s=self.timeout_s, aws_request_id=event["requestContext"]["requestId"]
            )
            outcome = invoke(self.handler, event, context)
        http = event["requestContext"]["http"]
        if outcome.error is not None:
            # What API Gateway answers when the integration fails.
            response: Response = JSONResponse({"message": "Internal Server Error"}, status_code=500)
            detail = f"{outcome.error['errorType']}: {outcome.error['errorMessage']}"
        else:
            response = to_response(outcome.response)
            detail = ""
        if self.log is not None:
            self.log(
                f"{http['method']} {event['rawPath']} -> {response.status_code} "
                f"in {outcome.duration_ms:,.0f} ms (request {context.aws_request_id}) {detail}".rstrip()
            )
        return response
