"""Test helpers: an ASGI wrapper that counts TCP connections and requests in flight on a loopback server;
API Gateway event builders."""

from __future__ import annotations

import json
import threading
from typing import Any


class Counting:
    """Wraps an ASGI app; records client sockets (one per TCP connection) and peak requests in flight."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.clients: set[tuple[str, int]] = set()
        self.in_flight = 0
        self.peak = 0
        self._lock = threading.Lock()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with self._lock:
            self.clients.add(tuple(scope["client"]))  # type: ignore[arg-type]
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            await self.app(scope, receive, send)
        finally:
            with self._lock:
                self.in_flight -= 1


def api_event(
    method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) event."""
    return {
        "version": "2.0",
        "routeKey": f"{method} {path}",
        "rawPath": path,
        "headers": {"content-type": "application/json", **(headers or {})},
        "requestContext": {"http": {"method": method, "path": path}, "domainName": "x.execute-api.aws"},
        "body": None if body is None else (body if isinstance(body, str) else json.dumps(body)),
        "isBase64Encoded": False,
    }


def http_event(body: Any, *, rest: bool = False) -> dict[str, Any]:
    """An API Gateway HTTP API (v2) event, or a REST (v1) proxy event, POSTing `body` to /run."""
    if rest:
        raw = body if isinstance(body, str) else json.dumps(body)
        return {"httpMethod": "POST", "resource": "/run", "path": "/run", "headers": {}, "body": raw}
    return api_event("POST", "/run", body)


def turns(result: dict[str, Any], session: int = 0) -> list[dict[str, Any]]:
    """The per-turn records of one session of a response."""
    return result["summaries"][session]["turns"]  # type: ignore[no-any-return]
