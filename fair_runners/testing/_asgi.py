"""The little of ASGI the loopback servers need: a request, JSON / empty / streamed responses.

Plain ASGI on uvicorn instead of a framework: the stand-in backends share the machine with the runner in the
tests and the benchmark, so each request should cost them as little CPU as it can.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Request:
    """Method, path, query, headers (lower-case names) and body of one HTTP request."""

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope = scope
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self._receive = receive
        self._query: dict[str, str] | None = None
        self.headers: dict[str, str] = {}
        for name, value in scope["headers"]:  # the first of repeated names, as Starlette's `get`
            self.headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))

    @property
    def query_params(self) -> dict[str, str]:
        """The query string's fields (the last of repeated names)."""
        if self._query is None:
            raw = self.scope.get("query_string", b"").decode("latin-1")
            self._query = dict(parse_qsl(raw, keep_blank_values=True))
        return self._query

    @property
    def raw_path(self) -> str:
        """The path as sent, still percent-encoded."""
        raw = self.scope.get("raw_path")
        return raw.decode("latin-1") if raw else self.path

    async def body(self) -> bytes:
        """The whole request body."""
        chunks = []
        while True:
            message = await self._receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                return b"".join(chunks)


class Response:
    """A complete response: status, headers, body."""

    def __init__(
        self,
        body: bytes = b"",
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
    ) -> None:
        self.body = body
        self.status = status
        self.headers = _raw(headers or {})
        if media_type is not None:
            self.headers.append((b"content-type", media_type.encode("latin-1")))
        self.headers.append((b"content-length", str(len(body)).encode("latin-1")))

    async def __call__(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


def json_response(content: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """`content` as compact UTF-8 JSON."""
    body = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    return Response(body, status, headers, "application/json")


class StreamingResponse:
    """A 200 whose body is sent part by part as `parts` yields it (chunked transfer encoding)."""

    def __init__(self, parts: AsyncIterator[bytes], media_type: str, headers: Mapping[str, str]) -> None:
        self.parts = parts
        self.headers = _raw(headers)
        self.headers.append((b"content-type", media_type.encode("latin-1")))

    async def __call__(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        async for part in self.parts:  # an exception here drops the connection mid-body, as a crash would
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


def _raw(headers: Mapping[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]


Handler = Callable[[Request], Awaitable[Response | StreamingResponse]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def app(routes: Callable[[str, str], Handler | int | None]) -> App:
    """An ASGI app: `routes(method, path)` gives the handler, or a status (404, 405) to answer with."""

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        found = routes(scope["method"], scope["path"])
        if found is None or isinstance(found, int):
            status = found or 404
            detail = "Not Found" if status == 404 else "Method Not Allowed"
            await Response(detail.encode(), status, media_type="text/plain; charset=utf-8")(send)
            return
        response = await found(Request(scope, receive))
        await response(send)

    return asgi
