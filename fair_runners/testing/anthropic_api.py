"""A local Anthropic Messages API that the real `anthropic` SDK and `langchain_anthropic.ChatAnthropic`
talk to.

`POST /v1/messages` (key in `x-api-key` or, as anthropic SDK 2.x sends it, `Authorization: Bearer`; header
`anthropic-version`) answers
`"echo: <last user text> (history=N, system=yes|no)"`, N counting the earlier user messages, in the Messages
format with `usage` and the rate-limit headers Anthropic sends (`anthropic-ratelimit-requests-*`,
`anthropic-ratelimit-tokens-*`, resets as RFC 3339 times, `request-id`). Errors use Anthropic's body
`{"type": "error", "error": {"type": ..., "message": ...}, "request_id": ...}`, so the SDK raises its own
exception classes. Point `ChatAnthropic` at it with `base_url=<url>` (alias of `anthropic_api_url`) or the
env `ANTHROPIC_BASE_URL` / `ANTHROPIC_API_URL`.
Run it alone: `python -m fair_runners.testing.anthropic_api --port 8768 --latency-ms 50`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ._calls import ProviderEmulator
from ._faults import FaultPlan

# Anthropic's error types and their HTTP status.
ANTHROPIC_ERRORS: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}
_BY_STATUS = {status: name for name, status in ANTHROPIC_ERRORS.items()}
REQUESTS_LIMIT = 4000
TOKENS_LIMIT = 400_000


@dataclass
class AnthropicEmulator(ProviderEmulator):
    """State and behaviour of the fake Messages API; `app` is its ASGI application.

    Faults (`Fault`, matched on the last user text): `status` answers an Anthropic error: the type `text`
    when set (e.g. `overloaded_error`, sent with its own status from `ANTHROPIC_ERRORS`), else the usual one
    for `status` (429 `rate_limit_error`, 529 `overloaded_error`, 500 `api_error`, 401
    `authentication_error`, 403 `permission_error`); `retry_after` adds a `retry-after` header. `hang` never
    answers; `slow` waits `delay_s` first; `empty` answers no text. A wrong `x-api-key` is a 401. `requests`
    logs every call (thread-safe appends); `in_flight` / `peak_in_flight` count calls answered at once.
    """

    api_key: str | None = "demo-ant-key-Qw73Hs2Kd9Lp"
    latency_s: float = 0.0
    faults: FaultPlan = field(default_factory=FaultPlan)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def _routes(self) -> list[BaseRoute]:
        return [Route("/v1/messages", self._messages, methods=["POST"])]

    async def _messages(self, request: Request) -> Response:
        with self._calls.call() as n:
            return await self._answer(request, n)

    async def _answer(self, request: Request, n: int) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error("invalid_request_error", 400, "The request body is not valid JSON", n)
        if not isinstance(body, dict):
            return _error("invalid_request_error", 400, "The request body must be a JSON object", n)
        messages = body.get("messages") or []
        system = body.get("system")
        user_texts = [_text(m.get("content")) for m in messages if m.get("role") == "user"]
        query = user_texts[-1] if user_texts else ""
        key, auth_header = _presented_key(request)
        with self._lock:
            self.requests.append(
                {
                    "path": request.url.path,
                    "model": body.get("model"),
                    "messages": messages,
                    "system": system,
                    "max_tokens": body.get("max_tokens"),
                    "body": body,
                    "query": query,
                    "api_key": key,
                    "auth_header": auth_header,
                    "anthropic_version": request.headers.get("anthropic-version"),
                    "headers": dict(request.headers),
                    "time": time.monotonic(),
                }
            )
        if self.api_key is not None and key != self.api_key:
            return _error("authentication_error", 401, "invalid x-api-key", n)
        if not request.headers.get("anthropic-version"):
            return _error("invalid_request_error", 400, "anthropic-version: header is required", n)
        for name in ("model", "max_tokens", "messages"):
            if not body.get(name):
                return _error("invalid_request_error", 400, f"{name}: Field required", n)
        fault = self.faults.take(query, None, "infer")
        if fault is not None:
            if fault.kind == "status":
                kind = fault.text or _BY_STATUS.get(fault.status, "api_error")
                status = ANTHROPIC_ERRORS.get(kind, fault.status)
                return _error(kind, status, f"injected {kind}", n, fault.retry_after)
            if fault.kind == "hang":
                await self._calls.hang()
            if fault.kind == "slow":
                await asyncio.sleep(fault.delay_s)
            if fault.kind == "empty":
                return _reply(body, "", n)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        has_system = bool(_text(system))
        answer = f"echo: {query} (history={len(user_texts) - 1}, system={'yes' if has_system else 'no'})"
        return _reply(body, answer, n)


def _presented_key(request: Request) -> tuple[str | None, str | None]:
    """The API key and the header it came in: `x-api-key`, or `authorization` (`Bearer <key>`, which
    anthropic SDK 2.x sends for `api_key`)."""
    if "x-api-key" in request.headers:
        return request.headers["x-api-key"], "x-api-key"
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        return token, "authorization"
    return None, None


def _text(content: Any) -> str:
    """The text of a string or of a list of content blocks (`[{"type": "text", "text": ...}]`)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return "".join(
        str(b.get("text", "")) for b in content if isinstance(b, dict) and b.get("type", "text") == "text"
    )


def _rate_limit_headers(n: int, tokens: int) -> dict[str, str]:
    reset = (datetime.now(UTC) + timedelta(seconds=60)).replace(microsecond=0).isoformat()
    reset = reset.replace("+00:00", "Z")
    return {
        "anthropic-ratelimit-requests-limit": str(REQUESTS_LIMIT),
        "anthropic-ratelimit-requests-remaining": str(max(0, REQUESTS_LIMIT - n)),
        "anthropic-ratelimit-requests-reset": reset,
        "anthropic-ratelimit-tokens-limit": str(TOKENS_LIMIT),
        "anthropic-ratelimit-tokens-remaining": str(max(0, TOKENS_LIMIT - tokens)),
        "anthropic-ratelimit-tokens-reset": reset,
        "request-id": f"req_{n:024d}",
    }


def _reply(body: dict[str, Any], answer: str, n: int) -> Response:
    messages = body.get("messages") or []
    input_tokens = sum(len(_text(m.get("content")).split()) for m in messages)
    input_tokens += len(_text(body.get("system")).split())
    output_tokens = len(answer.split())
    content = {
        "id": f"msg_{n:024d}",
        "type": "message",
        "role": "assistant",
        "model": body.get("model"),
        "content": [{"type": "text", "text": answer}] if answer else [],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }
    return JSONResponse(content, headers=_rate_limit_headers(n, input_tokens + output_tokens))


def _error(kind: str, status: int, message: str, n: int, retry_after: float | None = None) -> Response:
    headers = {"request-id": f"req_{n:024d}"}
    if retry_after is not None:
        headers["retry-after"] = f"{retry_after:g}"
    if status == 429:
        headers.update(_rate_limit_headers(n, 0))
        headers["anthropic-ratelimit-requests-remaining"] = "0"
    content = {
        "type": "error",
        "error": {"type": kind, "message": message},
        "request_id": headers["request-id"],
    }
    return JSONResponse(content, status, headers)


def main() -> None:
    """Serve the emulator until interrupted."""
    parser = argparse.ArgumentParser(description="Local Anthropic Messages API on 127.0.0.1")
    parser.add_argument("--port", type=int, default=8768)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--api-key", default="demo-ant-key-Qw73Hs2Kd9Lp")
    args = parser.parse_args()
    import uvicorn

    server = AnthropicEmulator(api_key=args.api_key, latency_s=args.latency_ms / 1000)
    uvicorn.run(server.app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
