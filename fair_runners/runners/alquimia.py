"""Alquimia agents over HTTP: an infer call, then the answer read from a server-sent-events stream.

One guarded `aiohttp.ClientSession` serves the whole run (one keep-alive pool, connections reused across
every turn); it is created inside the running event loop by `__aenter__`. Every reply is read within the
answer-size cap (counted after decompression) and yields to the event loop as it goes; a stream that ends in
the middle of an event is a dropped stream (retried), never an answer. Imports nothing from LangChain.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp

from .._errors import (
    AnswerTooLarge,
    BackendError,
    EmptyAnswer,
    PermanentBackendError,
    ProtocolError,
    TransientBackendError,
    TurnTimeout,
    backend_error_from_status,
    parse_retry_after,
)
from .._proxies import proxy_settings
from .._text import control_problem
from ..pacing import estimate_tokens
from ._base import HeadersHook, TurnInput, TurnOutput
from ._reading import MIB, read_capped, too_large
from ._session import guarded_session
from ._sse import SSEDecoder, SSELimitExceeded

_MAX_ERROR_BODY = 300
# A stream repeats the answer so far in every event, so its bytes grow faster than the answer: a whole stream
# may carry this many times the answer-size cap.
STREAM_FACTOR = 64
# What a stream id from the agent may look like before it goes into the stream URL.
_STREAM_ID = re.compile(r"^[A-Za-z0-9._~-]{1,256}$")
_INFER_PARAMS = {"chat_history": "50", "agentspace": "_default"}
_STREAM_PARAMS = {"response_only": "true"}
# RFC 3986 path-segment characters other than the unreserved ones, which `quote` leaves as they are; "%" is
# not among them, so a caller's "%2e%2e" stays literal text and cannot become ".." on the server.
_SEGMENT_SAFE = "!$&'()*+,;=:@"


def segment_problem(value: str, *, several: bool = False) -> str | None:
    """Why `value` cannot be a path segment of the agent's URLs (`several`: "/"-separated segments)."""
    control = control_problem(value)
    if control is not None:
        return control
    if "?" in value or "#" in value or "\\" in value:
        return "must not contain ?, # or \\"
    parts = value.strip("/").split("/") if several else [value]
    if not several and "/" in value:
        return "must be one path segment (no /)"
    if any(part in (".", "..") for part in parts):
        return "must not contain . or .. segments"
    return None


def _segment(value: str) -> str:
    return quote(value, safe=_SEGMENT_SAFE)


@dataclass(frozen=True)
class AlquimiaTarget:
    """Resolved Alquimia target (credentials already resolved from payload or env)."""

    base_url: str
    api_key: str
    agent_id: str
    channel_id: str = "chat"
    api_version: str = ""

    @property
    def root(self) -> str:
        """`base_url`, joined with `api_version` when that is non-empty."""
        root = self.base_url.rstrip("/")
        version = "/".join(_segment(part) for part in self.api_version.strip("/").split("/") if part)
        return f"{root}/{version}" if version else root


class AlquimiaRunner:
    """Runs turns against an Alquimia agent (infer + SSE stream)."""

    name = "alquimia"

    def __init__(
        self,
        target: AlquimiaTarget,
        *,
        timeout_s: float,
        connect_timeout_s: float,
        max_connections: int = 16,
        max_answer_bytes: int = 2 * MIB,
    ) -> None:
        self.target = target
        self.on_headers: HeadersHook | None = None
        self._max_answer = max_answer_bytes
        # `sock_read` bounds each wait for bytes: the read timeout of the infer call and the idle timeout of
        # the stream. The whole attempt is bounded by the engine (`turn_timeout_s`, the deadline).
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout_s, sock_connect=connect_timeout_s, sock_read=timeout_s
        )
        self._max_connections = max_connections + 4
        self._session: aiohttp.ClientSession | None = None
        self._proxy: str | None = None
        self._infer_url = (
            f"{target.root}/event/infer/{_segment(target.channel_id)}/{_segment(target.agent_id)}"
        )
        self._stream_url = f"{target.root}/event/stream/"
        self._headers = {"Authorization": f"Bearer {target.api_key}", "User-Agent": "fair-runners"}
        # The infer reply is a few bytes: nothing to gain from compression. A stream repeats its answer, so it
        # may come compressed; it is decompressed in bounded steps and capped all the same.
        self._infer_headers = {**self._headers, "Accept-Encoding": "identity"}
        self._stream_headers = {**self._headers, "Accept": "text/event-stream", "Cache-Control": "no-store"}

    async def __aenter__(self) -> AlquimiaRunner:
        self._session = guarded_session(self._max_connections, self._timeout)
        self._proxy = proxy_settings().proxy_for(self._infer_url)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def describe(self) -> dict[str, Any]:
        """Non-secret facts about the target."""
        return {"runner": self.name, "root": self.target.root, "agent_id": self.target.agent_id}

    async def run_turn(self, turn: TurnInput) -> TurnOutput:
        """Send the query, read the streamed answer; raise a `BackendError` on failure."""
        session = self._session
        if session is None:
            raise RuntimeError("AlquimiaRunner used outside `async with`")
        notes: list[str] = []
        try:
            stream_id = await self._infer(session, turn)
            content = await self._read_stream(session, stream_id, notes)
        except BackendError:
            raise
        except TimeoutError as exc:  # aiohttp's read/connect timeouts
            raise TurnTimeout(f"timed out talking to the agent ({type(exc).__name__})") from None
        except aiohttp.ClientPayloadError:
            raise TransientBackendError("the agent's reply ended before it was complete") from None
        except SSELimitExceeded as exc:
            raise AnswerTooLarge(f"{exc} (env FAIR_RUNNERS_MAX_ANSWER_BYTES)") from None
        except aiohttp.ClientConnectionError as exc:
            raise TransientBackendError(f"connection to the agent failed ({type(exc).__name__})") from None
        except aiohttp.ClientError as exc:
            raise PermanentBackendError(f"HTTP client error ({type(exc).__name__}: {exc})") from None
        if not content.strip():
            raise EmptyAnswer("the agent returned an empty answer")
        return TurnOutput(content=content, notes=tuple(notes))

    def request_of(self, turn: TurnInput) -> dict[str, Any]:
        """The infer call's body for this turn (the agent keeps the conversation: no history is sent)."""
        return {
            "query": turn.batch.query,
            "session_id": turn.session_id,
            "extra_data": turn.batch.agentic or {},
            "attachments": [],
        }

    def token_estimate(self, turn: TurnInput) -> int:
        """The infer call's charge: its query (the agent adds what it adds on its side)."""
        return estimate_tokens([turn.batch.query], max_tokens=None)

    async def _infer(self, session: aiohttp.ClientSession, turn: TurnInput) -> str:
        body = self.request_of(turn)
        async with session.post(
            self._infer_url,
            params=_INFER_PARAMS,
            headers=self._infer_headers,
            json=body,
            allow_redirects=False,
            proxy=self._proxy,
        ) as response:
            if self.on_headers is not None:  # the infer call is what a rate limit counts
                self.on_headers(response.headers)
            if response.status >= 300:
                raise _status_error("infer", response, await response.content.read(_MAX_ERROR_BODY))
            raw = await read_capped(response, self._max_answer, "the agent's infer reply")
        try:
            payload = json.loads(raw)
        except (ValueError, RecursionError):
            raise ProtocolError("infer reply is not JSON") from None
        stream_id = payload.get("stream_id") if isinstance(payload, dict) else None
        if isinstance(stream_id, int) and not isinstance(stream_id, bool):
            stream_id = str(stream_id)
        if not stream_id or not isinstance(stream_id, str):
            raise ProtocolError("infer reply has no stream_id")
        if not _STREAM_ID.match(stream_id) or stream_id in (".", ".."):
            raise ProtocolError(
                "infer reply's stream_id is not an id (1-256 of letters, digits, . _ ~ -; not . or ..)"
            )
        return stream_id

    async def _read_stream(self, session: aiohttp.ClientSession, stream_id: str, notes: list[str]) -> str:
        content = ""
        malformed = 0
        limit = self._max_answer
        stream_limit = limit * STREAM_FACTOR
        size = 0
        async with session.get(
            self._stream_url + _segment(stream_id),
            params=_STREAM_PARAMS,
            headers=self._stream_headers,
            allow_redirects=False,
            proxy=self._proxy,
        ) as response:
            if response.status >= 300:
                raise _status_error("stream", response, await response.content.read(_MAX_ERROR_BODY))
            decoder = SSEDecoder(max_line=limit, max_event=limit)
            async for chunk in response.content.iter_any():
                size += len(chunk)
                if size > stream_limit:
                    raise too_large("the agent's stream", stream_limit)
                for event in decoder.feed(chunk):
                    if not event.data.strip():
                        continue
                    try:
                        payload = json.loads(event.data)
                    except (ValueError, RecursionError):  # not JSON, or nested too deep to parse
                        malformed += 1
                        continue
                    piece = _content_of(payload)
                    if piece is not None:
                        content = piece
                await asyncio.sleep(0)  # buffered data comes back without waiting: let timeouts fire
            decoder.close()
            if decoder.ended_mid_event:
                raise TransientBackendError("the agent's stream ended in the middle of an event")
        if not content and malformed:
            raise ProtocolError(f"stream carried {malformed} malformed event(s) and no answer")
        if malformed:
            notes.append(f"{malformed} malformed stream event(s) skipped")
        return content


def _content_of(payload: Any) -> str | None:
    """`response.data.content` of an event, when it carries one."""
    try:
        content = payload["response"]["data"]["content"]
    except (KeyError, TypeError, IndexError):
        return None
    return content if isinstance(content, str) else None


def _status_error(step: str, response: aiohttp.ClientResponse, raw: bytes) -> BackendError:
    text = raw[:_MAX_ERROR_BODY].decode("utf-8", "replace").strip()
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    message = f"{step} answered HTTP {response.status}" + (f": {text}" if text else "")
    return backend_error_from_status(response.status, message, retry_after)
