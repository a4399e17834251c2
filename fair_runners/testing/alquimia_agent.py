"""A local agent that speaks the Alquimia protocol (infer + server-sent-events stream).

It remembers each session's turns, as the real service does, and answers `"<agent>: turn N of <session>:
<query>"` so order and session routing can be checked. Latency (fixed or per query) and faults are
injectable.
Run it alone: `python -m fair_runners.testing.alquimia_agent --port 8765 --latency-ms 50`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from ._faults import Fault, FaultPlan


@dataclass
class _Pending:
    session_id: str
    query: str
    agent_id: str
    turn: int


@dataclass
class AlquimiaAgent:
    """State and behaviour of the fake agent; `app` is its Starlette application.

    Any path holding `/event/infer/` (POST) or `/event/stream/` (GET) is served, so a base URL may carry a
    prefix; other GET/POST paths are 404 (JSON), other methods 405. Each stream waits `latency_s` seconds
    before its first event, or `latency(query)` seconds when `latency` is set (a per-query delay).
    """

    api_key: str | None = "demo-alq-key-7Hq2v9XrL4mN"
    latency_s: float = 0.0
    latency: Callable[[str], float] | None = None
    chunks: int = 3
    faults: FaultPlan = field(default_factory=FaultPlan)
    requests: list[dict[str, Any]] = field(default_factory=list)
    sessions: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._pending: dict[str, _Pending] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        routes = [Route("/{path:path}", self._dispatch, methods=["GET", "POST"])]
        self.app = Starlette(routes=routes, exception_handlers={405: _not_allowed})

    def add_fault(self, *faults: Fault) -> None:
        """Inject faults (see `Fault`)."""
        self.faults.add(*faults)

    def infer_requests(self) -> list[dict[str, Any]]:
        """The infer calls received, in arrival order."""
        return [r for r in self.requests if r["step"] == "infer"]

    async def _dispatch(self, request: Request) -> Response:
        if request.method == "HEAD":  # Starlette lets HEAD in with GET; this agent has no HEAD
            return await _not_allowed(request, None)
        path = "/" + request.path_params["path"]
        if "/event/infer/" in path and request.method == "POST":
            return await self._infer(request, path)
        if "/event/stream/" in path and request.method == "GET":
            return await self._stream(request, path)
        return JSONResponse({"detail": "not found"}, 404)

    def _authorised(self, request: Request) -> bool:
        return self.api_key is None or request.headers.get("authorization") == f"Bearer {self.api_key}"

    async def _infer(self, request: Request, path: str) -> Response:
        parts = path.split("/event/infer/", 1)[1].strip("/").split("/")
        channel, agent_id = ([*parts, "", ""])[:2]
        try:
            body = json.loads(await request.body())
        except ValueError:
            return JSONResponse({"detail": "invalid json"}, 422)
        query = str(body.get("query", ""))
        session_id = str(body.get("session_id", ""))
        with self._lock:
            self.requests.append(
                {
                    "step": "infer",
                    "path": path,
                    "raw_path": _raw_path(request),
                    "query_params": dict(request.query_params),
                    "channel": channel,
                    "agent_id": agent_id,
                    "session_id": session_id,
                    "query": query,
                    "extra_data": body.get("extra_data"),
                    "attachments": body.get("attachments"),
                    "authorization": request.headers.get("authorization"),
                }
            )
        if not self._authorised(request):
            return JSONResponse({"detail": "invalid api key"}, 401)
        fault = self.faults.take(query, session_id, "infer")
        if fault is not None and fault.kind == "echo_answer":
            query = f"{query} [auth: {request.headers.get('authorization')}]"
            fault = None
        if fault is not None:
            answer = await _apply_fault(fault, request, body)
            if answer is not None:
                return answer
        with self._lock:
            history = self.sessions.setdefault(session_id, [])
            history.append(query)
            stream_id = f"s{next(self._ids)}"
            self._pending[stream_id] = _Pending(session_id, query, agent_id, len(history))
        return JSONResponse({"stream_id": stream_id, "status": "queued"})

    async def _stream(self, request: Request, path: str) -> Response:
        stream_id = path.split("/event/stream/", 1)[1].strip("/")
        with self._lock:
            self.requests.append(
                {
                    "step": "stream",
                    "stream_id": stream_id,
                    "path": path,
                    "accept": request.headers.get("accept"),
                    "query_params": dict(request.query_params),
                }
            )
        if not self._authorised(request):
            return JSONResponse({"detail": "invalid api key"}, 401)
        with self._lock:
            pending = self._pending.pop(stream_id, None)
        if pending is None:
            return JSONResponse({"detail": "unknown stream"}, 404)
        fault = self.faults.take(pending.query, pending.session_id, "stream")
        if fault is not None and fault.kind in ("status", "hang", "slow", "echo", "redirect"):
            refusal = await _apply_fault(fault, request, None)
            if refusal is not None:
                return refusal
            fault = None
        answer = f"{pending.agent_id}: turn {pending.turn} of {pending.session_id}: {pending.query}"
        if fault is not None and fault.kind == "answer":
            answer = fault.text
        delay = self.latency(pending.query) if self.latency is not None else self.latency_s
        return StreamingResponse(
            self._events(answer, fault, delay),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache"},
        )

    async def _events(self, answer: str, fault: Fault | None, delay: float) -> AsyncIterator[bytes]:
        if delay > 0:
            await asyncio.sleep(delay)
        kind = fault.kind if fault else None
        if kind == "malformed":
            yield b"data: {not json\n\n"
            yield b"data: [garbage]\n\n"
            return
        if kind == "garbage_then_ok":
            yield b"data: {broken\n\n"
            yield b": a comment line\n\n"
        if kind == "empty":
            yield _event("")
            return
        step = max(1, len(answer) // max(1, self.chunks))
        cut = [*list(range(step, len(answer), step))[: self.chunks - 1], len(answer)]
        for n, end in enumerate(cut):
            if kind == "drop" and n == 1:
                raise ConnectionAbortedError("fault injection: stream dropped")
            yield _event(answer[:end])


async def _not_allowed(request: Request, exc: Exception | None) -> Response:
    """405 for any method but GET and POST (HEAD included, which Starlette's own 405 would list)."""
    return PlainTextResponse("Method Not Allowed", 405, headers={"Allow": "GET, POST"})


def _raw_path(request: Request) -> str:
    """The path as sent, still percent-encoded (the ASGI `raw_path`; Starlette only decodes it)."""
    raw: bytes | None = request.scope.get("raw_path")
    return raw.decode("latin-1") if raw else request.scope["path"]


def _event(content: str) -> bytes:
    payload = {"response": {"data": {"content": content}}, "is_complete": False}
    return f"data: {json.dumps(payload)}\n\n".encode()


async def _apply_fault(fault: Fault, request: Request, body: Any) -> Response | None:
    if fault.kind == "echo":
        echoed = {"error": "echo", "headers": dict(request.headers), "body": body}
        return JSONResponse(echoed, fault.status)
    if fault.kind == "redirect":
        return Response(status_code=fault.status, headers={"Location": fault.location})
    if fault.kind == "status":
        headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
        return JSONResponse({"detail": f"injected {fault.status}"}, fault.status, headers)
    if fault.kind == "hang":
        await asyncio.sleep(3600)
    if fault.kind == "slow":
        await asyncio.sleep(fault.delay_s)
        return None
    if fault.kind == "no_stream_id":
        return JSONResponse({"status": "queued"})
    return None


def main() -> None:
    """Serve the agent until interrupted."""
    parser = argparse.ArgumentParser(description="Local Alquimia-protocol agent on 127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--api-key", default="demo-alq-key-7Hq2v9XrL4mN")
    args = parser.parse_args()
    import uvicorn

    agent = AlquimiaAgent(api_key=args.api_key, latency_s=args.latency_ms / 1000)
    uvicorn.run(agent.app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
