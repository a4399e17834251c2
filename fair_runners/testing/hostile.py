"""A backend that speaks the Alquimia and OpenAI protocols and misbehaves on purpose, for hardening tests.

    backend = HostileBackend()
    with LoopbackServer(backend.app) as server:
        backend.set("gzip_bomb", step="stream")   # or: backend.mode = HostileMode("gzip_bomb", ...)
        ...                                       # the client under test talks to server.url
        backend.requests                          # every request received (method, path, headers, body)

Well-behaved, it answers POST `.../event/infer/{channel}/{agent}` with `{"stream_id": "h<N>", ...}`, GET
`.../event/stream/{id}` with SSE events carrying the answer so far, and POST `/v1/chat/completions` (or
`/openai/v1/...`) with a chat completion; no key is checked, other requests are 404. A `HostileMode` makes
one step misbehave, on every request of that step, until the mode is changed or `reset()`.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ._hostile_bodies import (
    KEY_ECHO_VARIANTS,
    CutResponse,
    KeyEchoVariant,
    Step,
    answer_body,
    answer_shape,
    credential,
    error_shape,
    json_text,
    key_echo,
    odd_events,
)
from ._hostile_mode import DOTDOT_IDS, HostileKind, HostileMode
from ._runs import Run

__all__ = [
    "DOTDOT_IDS",
    "KEY_ECHO_VARIANTS",
    "HostileBackend",
    "HostileKind",
    "HostileMode",
    "HostileRequest",
]

_COMPLETION_PATHS = ("/v1/chat/completions", "/openai/v1/chat/completions")
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]  # and HEAD, which Starlette adds with GET


@dataclass(frozen=True)
class HostileRequest:
    """One request as received: `path` decoded, `raw_path` as sent, `query` the raw query string,
    `headers` with lower-case names (the first of repeated ones), `step` what it was taken for."""

    method: str
    path: str
    raw_path: str
    query: str
    headers: dict[str, str]
    body: bytes
    step: Literal["infer", "stream", "completion", "other"]

    @property
    def authorization(self) -> str | None:
        """The Authorization header, if any."""
        return self.headers.get("authorization")


@dataclass
class HostileBackend:
    """The hostile backend: `app` (Starlette), `mode` (None: well-behaved), `requests` (a snapshot)."""

    answer: str = "the hostile backend's answer"
    mode: HostileMode | None = None
    _log: list[HostileRequest] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._active = 0
        self.app = Starlette(routes=[Route("/{path:path}", self._handle, methods=_METHODS)])

    def set(self, kind: HostileKind, **params: Any) -> HostileMode:
        """Misbehave as `HostileMode(kind, **params)` from now on (ValueError for a bad combination)."""
        self.mode = HostileMode(kind, **params)
        return self.mode

    def reset(self) -> None:
        """Behave well again and forget the requests received."""
        self.mode = None
        with self._lock:
            self._log.clear()

    @property
    def requests(self) -> list[HostileRequest]:
        """The requests received so far, in arrival order."""
        with self._lock:
            return list(self._log)

    @property
    def active(self) -> int:
        """Streamed bodies being generated right now (back to 0 soon after their clients went away)."""
        with self._lock:
            return self._active

    async def _handle(self, request: Request) -> Response:
        entry = await self._record(request)
        if entry.step == "other":
            return JSONResponse({"detail": "not found"}, 404)
        step: Step = entry.step
        stream_id = f"h{next(self._ids)}"
        mode = self.mode
        if mode is not None and mode.on == step:
            head, tail = answer_shape(step, stream_id)
            reply = _Reply(mode, step, head, tail, self.answer, entry.authorization)
            built = _BUILDERS[mode.kind](reply)
            return built if isinstance(built, Response) else self._stream(*built, media=reply.media)
        if step == "infer":
            return JSONResponse({"stream_id": stream_id, "status": "queued"})
        if step == "completion":
            return Response(answer_body(step, stream_id, self.answer), media_type="application/json")
        half = self.answer[: len(self.answer) // 2]
        events = [answer_body("stream", "", half), answer_body("stream", "", self.answer)]
        return self._stream(_parts(*events), {}, media="text/event-stream")

    async def _record(self, request: Request) -> HostileRequest:
        path = "/" + request.path_params["path"]
        step: Literal["infer", "stream", "completion", "other"] = "other"
        if request.method == "POST" and path in _COMPLETION_PATHS:
            step = "completion"
        elif request.method == "POST" and "/event/infer/" in path:
            step = "infer"
        elif request.method == "GET" and "/event/stream/" in path:
            step = "stream"
        raw: bytes = request.scope.get("raw_path") or path.encode()
        entry = HostileRequest(
            method=request.method,
            path=path,
            raw_path=raw.decode("latin-1"),
            query=request.scope.get("query_string", b"").decode("latin-1"),
            headers=dict(request.headers),
            body=await request.body(),
            step=step,
        )
        with self._lock:
            self._log.append(entry)
        return entry

    def _stream(self, parts: AsyncIterator[bytes], headers: dict[str, str], media: str) -> StreamingResponse:
        if media == "text/event-stream":
            headers = {"Cache-Control": "no-cache", **headers}
        return StreamingResponse(self._tracked(parts), headers=headers, media_type=media)

    async def _tracked(self, parts: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        with self._lock:
            self._active += 1
        try:
            async for part in parts:
                yield part
        finally:
            with self._lock:
                self._active -= 1


@dataclass(frozen=True)
class _Reply:
    """What a misbehaving reply is made of: a reply of `step` is `head + <JSON-escaped text> + tail`."""

    mode: HostileMode
    step: Step
    head: bytes
    tail: bytes
    answer: str
    authorization: str | None

    def body(self, text: str) -> bytes:
        """The step's reply answering `text`."""
        return self.head + json_text(text).encode() + self.tail

    @property
    def media(self) -> str:
        return "text/event-stream" if self.step == "stream" else "application/json"

    @property
    def chunked(self) -> bool:
        if self.mode.chunked is not None:
            return self.mode.chunked
        return self.step == "stream" or self.mode.kind == "endless_line"

    def framing(self, length: int | None) -> dict[str, str]:
        """Content-Length, unless chunked (or endless)."""
        return {} if self.chunked or length is None else {"Content-Length": str(length)}


_Streamed = tuple[AsyncIterator[bytes], dict[str, str]]  # a body the backend streams, and its headers


def _run(reply: _Reply) -> _Streamed:  # gzip_bomb, huge_body, endless_line
    mode = reply.mode
    endless = mode.kind == "endless_line" or not mode.complete
    run = Run(reply.head, mode.size, b"" if endless else reply.tail, mode.gzip or mode.kind == "gzip_bomb")
    headers = {"Content-Encoding": "gzip"} if run.gzip else {}
    return run.parts(), {**headers, **reply.framing(run.length())}


def _truncated_body(reply: _Reply) -> Response:
    run = Run(reply.head + json_text(reply.answer).encode(), reply.mode.size, reply.tail)
    sent = run.start(reply.mode.cut_at)
    half = len(sent) // 2
    return CutResponse(_parts(sent[:half], sent[half:]), reply.framing(run.length()), reply.media)


def _truncated_event(reply: _Reply) -> _Streamed:
    last = reply.body(reply.answer + " (more)")[:-1]  # a whole data line, without the blank line
    if reply.mode.variant == "mid":
        last = last[: len(last) // 2]
    first = reply.body(reply.answer[: len(reply.answer) // 2])
    return _parts(first, reply.body(reply.answer), last), {}


def _key_echo(reply: _Reply) -> Response:
    status = reply.mode.status
    head, tail = (reply.head, reply.tail) if status < 400 else error_shape(reply.step)
    variant: KeyEchoVariant = reply.mode.variant  # type: ignore[assignment]  # checked by HostileMode
    message = key_echo(credential(reply.authorization), variant, head, reply.mode.cut_at)
    media = reply.media if status < 400 else "application/json"
    return Response(head + message.encode() + tail, status, media_type=media)


def _odd_sse_fields(reply: _Reply) -> _Streamed:
    return _parts(*odd_events(reply.body(reply.answer))), {}


def _dotdot_stream_id(reply: _Reply) -> Response:
    return JSONResponse({"stream_id": reply.mode.stream_id, "status": "queued"})


def _slow_drip(reply: _Reply) -> _Streamed:
    run = Run(reply.head + json_text(reply.answer).encode(), reply.mode.size, reply.tail)
    return _drip(run.parts(), reply.mode.interval_s), reply.framing(run.length())


_BUILDERS: dict[HostileKind, Callable[[_Reply], Response | _Streamed]] = {
    "gzip_bomb": _run,
    "huge_body": _run,
    "endless_line": _run,
    "truncated_body": _truncated_body,
    "truncated_event": _truncated_event,
    "key_echo": _key_echo,
    "odd_sse_fields": _odd_sse_fields,
    "dotdot_stream_id": _dotdot_stream_id,
    "slow_drip": _slow_drip,
}


async def _parts(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _drip(parts: AsyncIterator[bytes], interval_s: float) -> AsyncIterator[bytes]:
    first = True
    async for part in parts:
        for i in range(len(part)):
            if not first:
                await asyncio.sleep(interval_s)
            first = False
            yield part[i : i + 1]
