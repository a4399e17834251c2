"""The two small models the pacer keeps per resource (requests, tokens).

`Schedule` spaces sends SMOOTHLY at a rate (GCRA: each send of `cost` pushes the next allowed send
`cost / rate` seconds later; a send may go `TOLERANCE_S` early, so that an event loop that wakes a little late
keeps the pace instead of losing that time on every send, at the price of at most `1 + rate * TOLERANCE_S`
sends at once after an idle spell). The rate changes while a run goes (limits learned from headers, a 429
slowdown, a new shared lease) and token charges are corrected after the fact (`adjust`), which is why this is
not aiolimiter's `AsyncLimiter`: its rate is fixed when it is built and capacity, once taken, cannot be given
back.

`Mirror` follows the provider's own bucket as its headers describe it (capacity = limit, level = remaining,
refill inferred from remaining/reset), minus what this process sent that the provider had not yet counted
when it answered. It stops sends when the provider's bucket would run dry (another client on the same key,
a quota smaller than its per-minute rate suggests).
"""

from __future__ import annotations

import math

TOLERANCE_S = 0.025


class Schedule:
    """Smooth pacing: at most `1 + rate * (t + TOLERANCE_S)` in any `t` seconds (`rate` None: no pacing)."""

    def __init__(self, rate: float | None = None) -> None:
        self.rate = rate
        self._next = -math.inf  # when the next send may go (monotonic seconds)

    def delay(self, now: float) -> float:
        """Seconds until the next send may go (0 when it may go now, inf when the rate is 0)."""
        if self.rate is None:
            return 0.0
        if self.rate <= 0:
            return math.inf
        return max(0.0, self._next - TOLERANCE_S - now)

    def take(self, cost: float, now: float) -> None:
        """Record a send of `cost` units at `now`."""
        if self.rate:
            self._next = max(self._next, now) + cost / self.rate

    def hold_until(self, when: float) -> None:
        """No send before `when` (less the tolerance)."""
        self._next = max(self._next, when)

    def adjust(self, delta: float, now: float) -> None:
        """Correct the last charges by `delta` units (negative: a refund; credit never reaches the past)."""
        if self.rate:
            self._next = max(self._next, now) + delta / self.rate

    def set_rate(self, rate: float | None, now: float) -> None:
        """Change the rate; the wait already scheduled is rescaled to it."""
        if rate == self.rate:
            return
        if rate and self.rate and self._next > now:
            self._next = now + (self._next - now) * self.rate / rate
        self.rate = rate


class Mirror:
    """The provider's bucket as seen through its headers: `capacity`, `refill` per second, `level`."""

    def __init__(self) -> None:
        self.capacity: float | None = None
        self.refill: float | None = None
        self._level = 0.0
        self._at = 0.0

    @property
    def known(self) -> bool:
        """True once a response told the level and the refill is known."""
        return self.capacity is not None and self.refill is not None

    def level(self, now: float) -> float:
        """The modelled level at `now`."""
        if self.capacity is None or self.refill is None:
            return math.inf
        return min(self.capacity, self._level + self.refill * max(0.0, now - self._at))

    def delay(self, cost: float, now: float) -> float:
        """Seconds until `cost` fits in the level (a cost above the capacity waits for a full bucket)."""
        if self.capacity is None or self.refill is None:
            return 0.0
        need = min(cost, self.capacity)
        short = need - self.level(now)
        if short <= 0:
            return 0.0
        return short / self.refill if self.refill > 0 else math.inf

    def take(self, cost: float, now: float) -> None:
        """Record a send of `cost`."""
        if self.known:
            self._level, self._at = self.level(now) - cost, now

    def adjust(self, delta: float, now: float) -> None:
        """Charge `delta` more (negative: give back)."""
        self.take(delta, now)

    def empty(self, now: float) -> None:
        """The provider refused a request: its bucket is empty now."""
        if self.known:
            self._level, self._at = min(self.level(now), 0.0), now

    def sync(
        self,
        limit: float | None,
        remaining: float | None,
        reset_s: float | None,
        *,
        window_s: float | None,
        unseen: float,
        now: float,
    ) -> None:
        """Take a response's view: `remaining` then, less `unseen` (sent since, not yet counted by it).

        The refill is `(limit - remaining) / reset` when that ratio is precise enough (headers round counts
        to units and times to milliseconds or seconds: at least 10 used and 1 s to go), else `limit / window`.
        """
        if limit is not None and limit > 0:
            self.capacity = limit
        capacity = self.capacity
        if capacity is None:
            return
        used = capacity - remaining if remaining is not None else 0.0
        if remaining is not None and reset_s and reset_s >= 1.0 and used >= 10:
            self.refill = used / reset_s
        elif window_s and self.refill is None:
            self.refill = capacity / window_s
        if remaining is not None and self.refill is not None:
            self._level, self._at = min(capacity, remaining) - max(0.0, unseen), now
