"""A local Amazon Bedrock runtime (`Converse` REST API) that the real boto3 client and
`langchain_aws.ChatBedrockConverse` talk to.

`POST /model/{modelId}/converse` (modelId percent-encoded; an ARN works) answers
`"echo: <last user text> (history=N, system=yes|no)"`, N counting the earlier user messages, with token usage
and metrics, as Bedrock does. Any `Authorization` header is accepted (SigV4 is not verified; the log says
which scheme came). Errors are sent the way Bedrock sends them, which botocore's rest-json parser reads: the
status, an `x-amzn-ErrorType: <Code>:http://internal.amazon.com/coral/com.amazon.bedrock/` header and a
`{"message": ...}` body, so `botocore.exceptions.ClientError` carries the real error code.

Point a client at it with `AWS_ENDPOINT_URL_BEDROCK_RUNTIME=<url>` (or `endpoint_url=<url>`) and dummy
`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_REGION`.
Run it alone: `python -m fair_runners.testing.bedrock --port 8767 --latency-ms 50`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from ._calls import ProviderEmulator
from ._faults import FaultPlan

# Bedrock's error codes and their HTTP status (the Converse operation's modeled errors, from botocore's
# service model, plus the auth errors its front end sends).
BEDROCK_ERRORS: dict[str, int] = {
    "ValidationException": 400,
    "AccessDeniedException": 403,
    "UnrecognizedClientException": 403,
    "ExpiredTokenException": 403,
    "InvalidSignatureException": 403,
    "ResourceNotFoundException": 404,
    "ModelTimeoutException": 408,
    "ModelErrorException": 424,
    "ThrottlingException": 429,
    "ModelNotReadyException": 429,
    "InternalServerException": 500,
    "ServiceUnavailableException": 503,
}
_BY_STATUS = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}
_ERROR_NAMESPACE = "http://internal.amazon.com/coral/com.amazon.bedrock/"


@dataclass
class BedrockEmulator(ProviderEmulator):
    """State and behaviour of the fake Bedrock runtime; `app` is its ASGI application.

    Faults (`Fault`, matched on the last user text): `status` answers Bedrock's error for `status` (the code
    is `text` when set, e.g. `UnrecognizedClientException`, else the usual one for that status: 429
    ThrottlingException, 503 ServiceUnavailableException, 408 ModelTimeoutException, 500
    InternalServerException, 403 AccessDeniedException, 400 ValidationException); `hang` never answers;
    `slow` waits `delay_s` first; `empty` answers no text. `requests` logs every call (thread-safe appends);
    `in_flight` / `peak_in_flight` count the calls being answered at once.
    """

    latency_s: float = 0.0
    faults: FaultPlan = field(default_factory=FaultPlan)
    requests: list[dict[str, Any]] = field(default_factory=list)

    def _routes(self) -> list[BaseRoute]:
        return [Route("/model/{model_id:path}/converse", self._converse, methods=["POST"])]

    async def _converse(self, request: Request) -> Response:
        with self._calls.call():
            return await self._answer(request)

    async def _answer(self, request: Request) -> Response:
        started = time.monotonic()
        # The raw path keeps an ARN's encoded "/" apart from the path's own separators.
        model_id = unquote(_raw_path(request)[len("/model/") : -len("/converse")])
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return _error("SerializationException", 400, "Could not parse the request body as JSON")
        if not isinstance(body, dict):
            return _error("ValidationException", 400, "The request body must be a JSON object")
        messages = body.get("messages") or []
        system = body.get("system") or []
        user_texts = [_text(m.get("content")) for m in messages if m.get("role") == "user"]
        query = user_texts[-1] if user_texts else ""
        authorization = request.headers.get("authorization")
        with self._lock:
            self.requests.append(
                {
                    "path": request.url.path,
                    "model_id": model_id,
                    "messages": messages,
                    "system": system,
                    "inference_config": body.get("inferenceConfig"),
                    "body": body,
                    "query": query,
                    "auth_scheme": authorization.split(" ", 1)[0] if authorization else None,
                    "headers": dict(request.headers),
                    "time": time.monotonic(),
                }
            )
        if not messages:
            return _error("ValidationException", 400, "The model returned the following errors: messages")
        fault = self.faults.take(query, None, "infer")
        if fault is not None:
            if fault.kind == "status":
                code = fault.text or _BY_STATUS.get(fault.status, "InternalServerException")
                status = BEDROCK_ERRORS.get(code, fault.status)
                return _error(code, status, f"injected {code}", fault.retry_after)
            if fault.kind == "hang":
                await self._calls.hang()
            if fault.kind == "slow":
                await asyncio.sleep(fault.delay_s)
            if fault.kind == "empty":
                return JSONResponse(_converse_reply(messages, system, "", started))
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        answer = f"echo: {query} (history={len(user_texts) - 1}, system={'yes' if system else 'no'})"
        return JSONResponse(
            _converse_reply(messages, system, answer, started),
            headers={"x-amzn-RequestId": str(uuid.uuid4())},
        )


def _text(content: Any) -> str:
    """The text of a content block list (`[{"text": ...}, ...]`)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return "".join(str(b.get("text", "")) for b in content if isinstance(b, dict) and "text" in b)


def _converse_reply(messages: list[Any], system: list[Any], answer: str, started: float) -> dict[str, Any]:
    input_tokens = sum(len(_text(m.get("content")).split()) for m in messages) + len(_text(system).split())
    output_tokens = len(answer.split())
    return {
        "output": {"message": {"role": "assistant", "content": [{"text": answer}] if answer else []}},
        "stopReason": "end_turn",
        "usage": {
            "inputTokens": input_tokens,
            "outputTokens": output_tokens,
            "totalTokens": input_tokens + output_tokens,
        },
        "metrics": {"latencyMs": int((time.monotonic() - started) * 1000)},
    }


def _error(code: str, status: int, message: str, retry_after: float | None = None) -> Response:
    headers = {"x-amzn-ErrorType": f"{code}:{_ERROR_NAMESPACE}", "x-amzn-RequestId": str(uuid.uuid4())}
    if retry_after is not None:
        headers["retry-after"] = f"{retry_after:g}"
    return JSONResponse({"message": message}, status, headers)


def main() -> None:
    """Serve the emulator until interrupted."""
    parser = argparse.ArgumentParser(description="Local Bedrock Converse endpoint on 127.0.0.1")
    parser.add_argument("--port", type=int, default=8767)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    import uvicorn

    server = BedrockEmulator(latency_s=args.latency_ms / 1000)
    uvicorn.run(server.app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()


def _raw_path(request: Request) -> str:
    """The path as sent, still percent-encoded (an ARN's encoded "/" stays apart from the separators)."""
    raw = request.scope.get("raw_path")
    return raw.decode("latin-1") if raw else request.url.path
