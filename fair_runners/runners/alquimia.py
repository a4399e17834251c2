"""Alquimia agents over HTTP: an infer call, then the answer read from a server-sent-events stream.

One `httpx.AsyncClient` serves the whole run (connection reuse across every turn); it is created inside the
running event loop by `__aenter__`. Imports nothing from LangChain.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx
from httpx_sse import SSEError, aconnect_sse

from .._errors import (
    BackendError,
    EmptyAnswer,
    ProtocolError,
    TransientBackendError,
    TurnTimeout,
    backend_error_from_status,
    parse_retry_after,
)
from ._base import TurnInput, TurnOutput

_MAX_ERROR_BODY = 300


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
        version = self.api_version.strip("/")
        return f"{root}/{version}" if version else root


class AlquimiaRunner:
    """Runs turns against an Alquimia agent (infer + SSE stream)."""

    name = "alquimia"

    def __init__(
        self,
        target: AlquimiaTarget,
        *,
        timeout: httpx.Timeout,
        max_connections: int = 16,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.target = target
        self._timeout = timeout
        self._limits = httpx.Limits(
            max_connections=max_connections + 4, max_keepalive_connections=max_connections + 4
        )
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._headers = {"Authorization": f"Bearer {target.api_key}"}

    async def __aenter__(self) -> AlquimiaRunner:
        self._client = httpx.AsyncClient(
            timeout=self._timeout,
            limits=self._limits,
            transport=self._transport,
            follow_redirects=False,
            headers={"User-Agent": "fair-runners"},
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def describe(self) -> dict[str, Any]:
        """Non-secret facts about the target."""
        return {"runner": self.name, "root": self.target.root, "agent_id": self.target.agent_id}

    async def run_turn(self, turn: TurnInput) -> TurnOutput:
        """Send the query, read the streamed answer; raise a `BackendError` on failure."""
        client = self._client
        if client is None:
            raise RuntimeError("AlquimiaRunner used outside `async with`")
        try:
            stream_id = await self._infer(client, turn)
            content = await self._read_stream(client, stream_id)
        except BackendError:
            raise
        except httpx.TimeoutException as exc:
            raise TurnTimeout(f"timed out talking to the agent ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise TransientBackendError(f"connection to the agent failed ({type(exc).__name__})") from None
        if not content.strip():
            raise EmptyAnswer("the agent returned an empty answer")
        return TurnOutput(content=content)

    async def _infer(self, client: httpx.AsyncClient, turn: TurnInput) -> str:
        target = self.target
        url = f"{target.root}/event/infer/{target.channel_id}/{target.agent_id}"
        body = {
            "query": turn.batch.query,
            "session_id": turn.session_id,
            "extra_data": turn.batch.agentic or {},
            "attachments": [],
        }
        response = await client.post(
            url,
            params={"chat_history": 50, "agentspace": "_default"},
            headers=self._headers,
            json=body,
        )
        if response.status_code >= 300:
            raise _status_error("infer", response)
        try:
            payload = response.json()
        except ValueError:
            raise ProtocolError("infer reply is not JSON") from None
        stream_id = payload.get("stream_id") if isinstance(payload, dict) else None
        if not stream_id or not isinstance(stream_id, str | int):
            raise ProtocolError("infer reply has no stream_id")
        return str(stream_id)

    async def _read_stream(self, client: httpx.AsyncClient, stream_id: str) -> str:
        url = f"{self.target.root}/event/stream/{stream_id}"
        headers = {**self._headers, "Accept": "text/event-stream"}
        content = ""
        malformed = 0
        async with aconnect_sse(
            client, "GET", url, params={"response_only": "true"}, headers=headers
        ) as source:
            if source.response.status_code >= 300:
                await source.response.aread()
                raise _status_error("stream", source.response)
            try:
                async for event in source.aiter_sse():
                    if not event.data.strip():
                        continue
                    try:
                        payload = json.loads(event.data)
                    except ValueError:
                        malformed += 1
                        continue
                    piece = _content_of(payload)
                    if piece is not None:
                        content = piece
            except SSEError as exc:
                raise ProtocolError(f"stream is not server-sent events: {exc}") from None
        if not content and malformed:
            raise ProtocolError(f"stream carried {malformed} malformed event(s) and no answer")
        return content


def _content_of(payload: Any) -> str | None:
    """`response.data.content` of an event, when it carries one."""
    try:
        content = payload["response"]["data"]["content"]
    except (KeyError, TypeError, IndexError):
        return None
    return content if isinstance(content, str) else None


def _status_error(step: str, response: httpx.Response) -> BackendError:
    try:
        text = response.text[:_MAX_ERROR_BODY]
    except (httpx.ResponseNotRead, UnicodeDecodeError):
        text = ""
    retry_after = parse_retry_after(response.headers.get("retry-after"))
    message = f"{step} answered HTTP {response.status_code}" + (f": {text.strip()}" if text.strip() else "")
    return backend_error_from_status(response.status_code, message, retry_after)
