"""A local Azure OpenAI chat completions endpoint that the real `openai.AzureOpenAI` client and
`langchain_openai.AzureChatOpenAI` talk to.

`POST /openai/deployments/{deployment}/chat/completions?api-version=...` answers
`"echo: <last user message> (history=N, system=yes|no)"`, N counting the earlier user messages, in the
OpenAI format with `usage` and Azure's `x-ratelimit-*` headers. The key comes in `api-key` or, for Entra ID
(AAD) tokens, in `Authorization: Bearer`; the log says which. Errors use Azure's body
`{"error": {"code": ..., "message": ...}}`, 429s with `retry-after` / `retry-after-ms`.
Point `AzureChatOpenAI(azure_endpoint=<url>, azure_deployment=..., api_version=..., api_key=...)` at it.
Run it alone: `python -m fair_runners.testing.azure_openai --port 8769 --latency-ms 50`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ._calls import ProviderEmulator
from ._faults import FaultPlan

_PREFIX = "/openai/deployments/"
_SUFFIX = "/chat/completions"
REQUESTS_LIMIT = 600
TOKENS_LIMIT = 100_000
# Azure's error codes for the statuses it sends (429 and 401 use the status itself as the code).
_CODES = {
    400: "BadRequest",
    401: "401",
    403: "PermissionDenied",
    404: "DeploymentNotFound",
    408: "Timeout",
    429: "429",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
}


@dataclass
class AzureOpenAIEmulator(ProviderEmulator):
    """State and behaviour of the fake Azure OpenAI resource; `app` is its ASGI application.

    Faults (`Fault`, matched on the last user message): `status` answers Azure's error for `status` (the
    code is `text` when set; a 429 carries `retry-after`, whole seconds rounded up, and `retry-after-ms`
    from `retry_after`, default 1 s); `hang` never answers; `slow` waits `delay_s` first; `empty` answers
    no text. A wrong key (either header) is a 401; a missing `api-version` a 404, as Azure answers.
    `requests` logs every call (thread-safe appends); `in_flight` / `peak_in_flight` count the calls being
    answered at once.
    """

    api_key: str | None = "demo-azr-key-Mx41Tb8Fe3Vn"
    latency_s: float = 0.0
    faults: FaultPlan = field(default_factory=FaultPlan)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def _routes(self) -> list[BaseRoute]:
        return [
            Route(
                "/openai/deployments/{deployment:path}/chat/completions", self._completions, methods=["POST"]
            )
        ]

    async def _completions(self, request: Request) -> Response:
        with self._calls.call() as n:
            return await self._answer(request, n)

    async def _answer(self, request: Request, n: int) -> Response:
        deployment = unquote(_raw_path(request)[len(_PREFIX) : -len(_SUFFIX)])
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "BadRequest", "Could not parse the JSON body of your request.")
        if not isinstance(body, dict):
            return _error(400, "BadRequest", "The request body must be a JSON object.")
        messages = body.get("messages") or []
        user_messages = [m for m in messages if m.get("role") == "user"]
        query = str(user_messages[-1].get("content", "")) if user_messages else ""
        key, auth = _presented_key(request)
        with self._lock:
            self.requests.append(
                {
                    "path": request.url.path,
                    "deployment": deployment,
                    "api_version": request.query_params.get("api-version"),
                    "model": body.get("model"),
                    "messages": messages,
                    "body": body,
                    "query": query,
                    "auth": auth,
                    "key": key,
                    "headers": dict(request.headers),
                    "time": time.monotonic(),
                }
            )
        if not request.query_params.get("api-version"):
            return _error(404, "404", "Resource not found")
        if self.api_key is not None and key != self.api_key:
            message = (
                "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide "
                "a valid key for an active subscription and use a correct regional API endpoint."
            )
            return _error(401, "401", message)
        fault = self.faults.take(query, None, "infer")
        if fault is not None:
            if fault.kind == "status":
                code = fault.text or _CODES.get(fault.status, str(fault.status))
                headers: dict[str, str] = {}
                if fault.status == 429 or fault.retry_after is not None:
                    wait = fault.retry_after if fault.retry_after is not None else 1.0
                    # Azure rounds `retry-after` up to whole seconds; `retry-after-ms` is exact.
                    headers = {"retry-after": str(math.ceil(wait)), "retry-after-ms": f"{wait * 1000:g}"}
                    headers.update(_rate_limit_headers(0, 0))
                return _error(fault.status, code, f"injected {fault.status} ({code})", headers)
            if fault.kind == "hang":
                await self._calls.hang()
            if fault.kind == "slow":
                await asyncio.sleep(fault.delay_s)
            if fault.kind == "empty":
                return _reply(body, "", n)
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        has_system = any(m.get("role") in ("system", "developer") for m in messages)
        answer = f"echo: {query} (history={len(user_messages) - 1}, system={'yes' if has_system else 'no'})"
        return _reply(body, answer, n)


def _presented_key(request: Request) -> tuple[str | None, str | None]:
    """The key and how it came: `api-key` (a resource key) or `bearer` (an Entra ID token)."""
    if "api-key" in request.headers:
        return request.headers["api-key"], "api-key"
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        return token, "bearer"
    return None, None


def _rate_limit_headers(requests_left: int, tokens_left: int) -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": str(REQUESTS_LIMIT),
        "x-ratelimit-remaining-requests": str(requests_left),
        "x-ratelimit-limit-tokens": str(TOKENS_LIMIT),
        "x-ratelimit-remaining-tokens": str(tokens_left),
    }


def _reply(body: dict[str, Any], answer: str, n: int) -> Response:
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages") or [])
    completion_tokens = len(answer.split())
    content = {
        "id": f"chatcmpl-{n}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or "gpt-4o-2024-08-06",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "system_fingerprint": "fp_emulator",
    }
    headers = _rate_limit_headers(
        max(0, REQUESTS_LIMIT - n), max(0, TOKENS_LIMIT - prompt_tokens - completion_tokens)
    )
    headers.update({"apim-request-id": f"apim-{n}", "x-request-id": f"req-{n}"})
    return JSONResponse(content, headers=headers)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers)


def main() -> None:
    """Serve the emulator until interrupted."""
    parser = argparse.ArgumentParser(description="Local Azure OpenAI endpoint on 127.0.0.1")
    parser.add_argument("--port", type=int, default=8769)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--api-key", default="demo-azr-key-Mx41Tb8Fe3Vn")
    args = parser.parse_args()
    import uvicorn

    server = AzureOpenAIEmulator(api_key=args.api_key, latency_s=args.latency_ms / 1000)
    uvicorn.run(server.app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()


def _raw_path(request: Request) -> str:
    """The path as sent, still percent-encoded (an ARN's encoded "/" stays apart from the separators)."""
    raw = request.scope.get("raw_path")
    return raw.decode("latin-1") if raw else request.url.path
