"""The response cache as a run uses it: a turn's key from what the runner would send, hits and writes.

LLM mode caches per turn: the key holds the turn's messages (system, the history with its recorded answers,
the query) and every model parameter. An Alquimia agent keeps the conversation on its side, so turn k's key
holds the infer bodies of turns 1..k, and the engine replays a session only when every turn hits
(`whole_sessions`). Both hold the endpoint's origin and an HMAC of the credential, so an answer recorded
against one server or key is never replayed for another. Only answers are written (no errors, empty,
truncated or oversized replies, no skipped turns), redacted like responses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from .._redact import Redactor
from ..runners._base import TurnInput, TurnOutput
from ._key import turn_key
from ._store import CachedAnswer, CacheStore

logger = logging.getLogger("fair_runners.cache")


class TurnCache:
    """`Engine`'s `Replay`: lookups and writes of one run's turns in a `CacheStore`."""

    def __init__(
        self,
        store: CacheStore,
        *,
        mode: str,
        ttl_s: float | None,
        runner: str,
        origin: str,
        target: str,
        credential: str | None,
        params: dict[str, Any],
        request_of: Callable[[TurnInput], Any],
        redactor: Redactor,
    ) -> None:
        if mode not in ("use", "refresh", "only"):
            raise ValueError(f"cache mode must be use, refresh or only, got {mode!r}")
        self._store = store
        self.mode = mode
        self.whole_sessions = runner == "alquimia"
        self._ttl_s = ttl_s
        self._identity = {"runner": runner, "origin": origin, "target": target, "credential": credential}
        self._params = params
        self._request_of = request_of
        self._redactor = redactor
        self.hits = 0
        self.writes = 0

    def key(self, turn: TurnInput, earlier: Sequence[TurnInput]) -> str:
        """The turn's key: what it sends (Alquimia: with every earlier infer body of its session)."""
        if self.whole_sessions:
            sent: list[Any] = [self._request_of(t) for t in (*earlier, turn)]
        else:
            sent = self._request_of(turn)
        return turn_key(params=self._params, sent=sent, **self._identity)  # type: ignore[arg-type]

    async def lookup(self, turn: TurnInput, earlier: Sequence[TurnInput]) -> TurnOutput | None:
        """The recorded answer, or None (a miss, an expired or unreadable entry, a store that failed)."""
        cached = await self._store.get(self.key(turn, earlier))
        if cached is None:
            return None
        self.hits += 1
        return TurnOutput(cached.content, cached.input_tokens, cached.output_tokens)

    async def store(self, turn: TurnInput, earlier: Sequence[TurnInput], output: TurnOutput) -> None:
        """Record an answer (in `use` and `refresh`); a store that fails only misses the write."""
        if self.mode == "only" or not output.content.strip():
            return
        content = self._redactor.redact(output.content, patterns=False)
        answer = CachedAnswer(content, output.input_tokens, output.output_tokens)
        try:
            if await self._store.put(self.key(turn, earlier), answer, self._ttl_s):
                self.writes += 1
        except ValueError:  # an answer the store cannot hold (say, broken Unicode): not recorded
            logger.info("an answer was not cached: the store refused it")

    async def aclose(self) -> None:
        """Close the store."""
        await self._store.aclose()
