"""What the pacer sent recently and what is still in flight (for `observe` and `snapshot`)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

WINDOW_S = 60.0  # "recently": the last minute


@dataclass(frozen=True)
class PaceSnapshot:
    """The pacer's state for progress and metrics."""

    requests_per_minute: float  # sent over the last minute (scaled when the run is younger)
    tokens_per_minute: float  # estimated tokens sent, corrected by `settle`, same window
    backing_off: bool  # a Retry-After pause runs, or the pace is still slowed after a 429
    pace_requests_per_minute: float | None  # the pace applied now (None: requests not paced)
    pace_tokens_per_minute: float | None
    limit_requests_per_minute: float | None  # learned from headers
    limit_tokens_per_minute: float | None
    remaining_requests: float | None  # the provider's bucket as modelled now
    remaining_tokens: float | None
    mode: str  # "probe", "free" or "paced"
    in_flight: int
    sent: int
    rate_limited: int  # 429s reported through `on_rate_limited`
    waited_s: float  # total time spent waiting in `acquire`
    shared: str | None  # "table", "fallback" or None (no shared budget, or no lease yet)
    warning: str | None  # why the shared budget fell back


class SendLog:
    """Sends of the last `WINDOW_S` seconds, and the attempts in flight (sent, not yet released)."""

    def __init__(self) -> None:
        self._sends: deque[tuple[float, int, float]] = deque()  # (time, requests, tokens)
        self._recent = 0  # requests in `_sends`
        self._first: float | None = None
        self.sent = 0
        self.in_flight = 0
        self._in_flight_tokens = 0.0

    def add(self, cost: float, now: float) -> None:
        """One request of `cost` tokens went out."""
        self.in_flight += 1
        self._in_flight_tokens += cost
        self.sent += 1
        if self._first is None:
            self._first = now
        self._sends.append((now, 1, cost))
        self._recent += 1
        if self._sends[0][0] < now - WINDOW_S:
            self._prune(now)

    def correct(self, delta: float, now: float) -> None:
        """A request's tokens were `delta` more (or fewer) than estimated."""
        self._sends.append((now, 0, delta))

    def release(self) -> None:
        """An attempt ended."""
        if self.in_flight > 0:
            self._in_flight_tokens -= self._in_flight_tokens / self.in_flight
            self.in_flight -= 1

    def unseen(self, now: float) -> tuple[float, float]:
        """Requests and tokens a response's `remaining` cannot count yet: the others in flight, at most what
        was sent over the window (so that a caller that never calls `release` does not stall the pacer)."""
        self._prune(now)
        requests = max(0, min(self.in_flight, self._recent) - 1)
        tokens = self._in_flight_tokens * requests / self.in_flight if self.in_flight else 0.0
        return float(requests), tokens

    def per_minute(self, now: float) -> tuple[float, float]:
        """Requests and tokens sent per minute over the window (over at least a second)."""
        self._prune(now)
        if self._first is None:
            return 0.0, 0.0
        span = max(1.0, min(WINDOW_S, now - self._first))
        tokens = sum(tokens for _, _, tokens in self._sends)
        return self._recent * 60.0 / span, max(0.0, tokens) * 60.0 / span

    def _prune(self, now: float) -> None:
        while self._sends and self._sends[0][0] < now - WINDOW_S:
            self._recent -= self._sends.popleft()[1]
