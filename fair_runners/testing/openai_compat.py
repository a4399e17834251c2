"""A local OpenAI-compatible chat completions endpoint that the real ChatOpenAI and ChatGroq talk to.

Answers `"echo: <last user message> (history=N, system=yes|no)"` where N counts earlier user messages, and
reports token usage, so history, context and usage can be checked end to end. Latency (fixed, or per query)
and faults are injectable. Serves `/v1/chat/completions` (OpenAI) and `/openai/v1/chat/completions` (Groq).
Run it alone: `python -m fair_runners.testing.openai_compat --port 8766 --latency-ms 50`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ._faults import Fault, FaultPlan

_PATHS = ("/v1/chat/completions", "/openai/v1/chat/completions")


@dataclass
class OpenAICompatServer:
    """State and behaviour of the fake endpoint; `app` is its Starlette application.

    POST on either path of `_PATHS` (exactly: a trailing slash is 404, not a redirect); other methods 405.
    Each answer waits `latency_s` seconds, or `latency(query)` seconds when `latency` is set (a per-query
    delay; the query is the last user message).
    """

    api_key: str | None = "demo-llm-key-Vb83Nq1ZcT6y"
    latency_s: float = 0.0
    latency: Callable[[str], float] | None = None
    faults: FaultPlan = field(default_factory=FaultPlan)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route(path, self._completions, methods=["POST"]) for path in _PATHS])
        self.app.router.redirect_slashes = False

    def add_fault(self, *faults: Fault) -> None:
        """Inject faults (see `Fault`; the `phase` is always `infer`)."""
        self.faults.add(*faults)

    async def _completions(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "invalid JSON body", "invalid_request_error")
        messages = body.get("messages") or []
        user_messages = [m for m in messages if m.get("role") == "user"]
        query = str(user_messages[-1].get("content", "")) if user_messages else ""
        with self._lock:
            self.requests.append(
                {
                    "path": request.url.path,
                    "model": body.get("model"),
                    "messages": messages,
                    "query": query,
                    "authorization": request.headers.get("authorization"),
                    "time": time.monotonic(),
                }
            )
        if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return _error(401, "Incorrect API key provided", "invalid_api_key")
        if body.get("stream"):
            return _error(400, "streaming is not supported by this test server", "invalid_request_error")
        fault = self.faults.take(query, None, "infer")
        if fault is not None:
            if fault.kind == "echo":
                auth = request.headers.get("authorization")
                message = f"bad request with key {auth}: {dict(request.headers)} {json.dumps(body)}"
                return _error(fault.status, message, "invalid_request_error")
            if fault.kind == "redirect":
                return Response(status_code=fault.status, headers={"Location": fault.location})
            if fault.kind == "echo_answer":
                answer = f"echo: {query} [auth: {request.headers.get('authorization')}]"
                return JSONResponse(_completion(body, answer, next(self._ids)))
            if fault.kind == "status":
                headers = {"retry-after": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
                return _error(fault.status, f"injected {fault.status}", "server_error", headers)
            if fault.kind == "hang":
                await asyncio.sleep(3600)
            if fault.kind == "slow":
                await asyncio.sleep(fault.delay_s)
            if fault.kind == "empty":
                return JSONResponse(_completion(body, "", next(self._ids)))
            if fault.kind == "answer":  # ASCII JSON: the text may hold what UTF-8 cannot
                data = json.dumps(_completion(body, fault.text, next(self._ids)))
                return Response(data.encode("ascii"), media_type="application/json")
        delay = self.latency(query) if self.latency is not None else self.latency_s
        if delay > 0:
            await asyncio.sleep(delay)
        has_system = any(m.get("role") == "system" for m in messages)
        answer = f"echo: {query} (history={len(user_messages) - 1}, system={'yes' if has_system else 'no'})"
        return JSONResponse(_completion(body, answer, next(self._ids)))


def _completion(body: dict[str, Any], answer: str, n: int) -> dict[str, Any]:
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages") or [])
    completion_tokens = len(answer.split())
    return {
        "id": f"chatcmpl-{n}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or "test-model",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _error(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": {"message": message, "type": code, "code": code}}, status, headers)


def main() -> None:
    """Serve the endpoint until interrupted."""
    parser = argparse.ArgumentParser(description="Local OpenAI-compatible endpoint on 127.0.0.1")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--api-key", default="demo-llm-key-Vb83Nq1ZcT6y")
    args = parser.parse_args()
    import uvicorn

    server = OpenAICompatServer(api_key=args.api_key, latency_s=args.latency_ms / 1000)
    uvicorn.run(server.app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
