"""Backend-wide flow control: an adaptive concurrency limit (AIMD) with a shared `Retry-After` pause.

Every attempt at a turn holds one slot while it talks to the backend. On a 429 the limit is halved (at most
once per second) and, when the backend said `Retry-After`, every new attempt waits until then; each run of
`limit` successes grows the limit back by one, up to the configured `max_concurrency`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

_DECREASE_INTERVAL_S = 1.0


class AdaptiveLimiter:
    """Bounds attempts in flight; shrinks on rate limits, grows back on success."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.max_limit = limit
        self.limit = limit
        self.in_flight = 0
        self.paused_until = 0.0
        self.min_seen = limit
        self._successes = 0
        self._last_decrease = -_DECREASE_INTERVAL_S
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        """Wait for a slot (and for any backend-wide pause to end)."""
        await self._wait_pause()
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
        else:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(future)
            try:
                await future  # a releaser hands its slot over by resolving the future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self.release()  # the slot was handed over just before the cancel: pass it on
                elif future in self._waiters:  # `_wake` may already have dropped a cancelled future
                    self._waiters.remove(future)
                raise
        try:
            await self._wait_pause()
        except asyncio.CancelledError:
            self.release()
            raise

    def release(self) -> None:
        """Give a slot back and hand free slots to waiters in arrival order."""
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            future = self._waiters.popleft()
            if not future.done():
                self.in_flight += 1
                future.set_result(None)

    async def _wait_pause(self) -> None:
        # The pause is a point on the clock that may move later while we sleep, so re-check it.
        while (wait := self.paused_until - time.monotonic()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(wait)

    def on_success(self) -> None:
        """Additive increase: one more slot after `limit` successes in a row."""
        self._successes += 1
        if self.limit < self.max_limit and self._successes >= self.limit:
            self.limit += 1
            self._successes = 0
            self._wake()

    def on_rate_limited(self, retry_after: float | None) -> None:
        """Multiplicative decrease, and a backend-wide pause when the server named one."""
        now = time.monotonic()
        self._successes = 0
        if now - self._last_decrease >= _DECREASE_INTERVAL_S:
            self.limit = max(1, self.limit // 2)
            self.min_seen = min(self.min_seen, self.limit)
            self._last_decrease = now
        if retry_after:
            self.paused_until = max(self.paused_until, now + retry_after)


class AuthCircuit:
    """Opens on the first authentication failure so the remaining turns are not sent with a bad key."""

    def __init__(self) -> None:
        self.reason: str | None = None

    @property
    def open(self) -> bool:
        """True once a turn failed authentication."""
        return self.reason is not None

    def trip(self, reason: str) -> None:
        """Remember the first authentication failure."""
        if self.reason is None:
            self.reason = reason
