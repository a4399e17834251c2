"""`RateLimitGate`: an ASGI wrapper that rate-limits an app as a provider does, for tests and benchmarks.

It keeps token buckets (requests, and tokens when `tokens_per_minute` is set) and answers a gated request
over budget with an OpenAI-style 429 (`{"error": {"type": "rate_limit_error", ...}}`, `retry-after` in whole
seconds rounded up, `retry-after-ms`, `x-ratelimit-*`); any other gated request is passed to the wrapped app,
whose response gets `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (unless `send_headers=False`: a
provider that sends no such headers; its 429s still carry `retry-after`).

Like OpenAI, the headers describe the per-minute quota (a bucket of `requests_per_minute` refilled at
`requests_per_minute / 60` per second; reset is the time until it is full, as `"0.05s"` or `"6m0s"`), while
the quota is enforced over shorter periods: a bucket of `burst_requests` at the same rate. A client that
trusts `remaining` and sends in bursts gets 429s; one that paces at `limit / 60` does not.

Only requests for which `gated(path, method)` is true count (default: POST, which for an Alquimia agent is
the infer call and not the stream GET). Every gated arrival is logged with its monotonic time and whether it
was accepted, thread-safely, for assertions such as `log.max_in_window(1.0)`.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp as App
from starlette.types import Message, Receive, Scope, Send


def default_token_cost(body: bytes) -> int:
    """A chat request's charge at admission, as OpenAI counts it: message characters / 4 + max_tokens."""
    try:
        data = json.loads(body)
    except ValueError:
        return math.ceil(len(body) / 4)
    if not isinstance(data, dict):
        return math.ceil(len(body) / 4)
    chars = sum(len(str(m.get("content", ""))) for m in data.get("messages") or [] if isinstance(m, dict))
    chars += len(str(data.get("query", "")))  # an Alquimia infer body
    limit = data.get("max_tokens") or data.get("max_completion_tokens") or 0
    return math.ceil(chars / 4) + (int(limit) if isinstance(limit, int | float) else 0)


def default_gated(path: str, method: str) -> bool:
    """POST requests count (chat completions, Alquimia's infer); GETs (Alquimia's stream) do not."""
    return method.upper() == "POST"


class _Bucket:
    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate, self.capacity = rate, capacity
        self.level, self.at = capacity, now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + self.rate * max(0.0, now - self.at))
        self.at = now

    def wait_for(self, cost: float) -> float:
        """Seconds until `cost` fits (after `refill`); inf when it never can."""
        if cost > self.capacity:
            return math.inf
        return max(0.0, (cost - self.level) / self.rate)

    def reset_s(self) -> float:
        return (self.capacity - self.level) / self.rate


@dataclass(frozen=True)
class Arrival:
    """One gated request as the gate saw it."""

    at: float  # monotonic seconds
    accepted: bool
    tokens: int


class GateLog:
    """Thread-safe record of gated arrivals."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._arrivals: list[Arrival] = []

    def add(self, arrival: Arrival) -> None:
        """Record an arrival."""
        with self._lock:
            self._arrivals.append(arrival)

    def arrivals(self) -> list[Arrival]:
        """A copy, in arrival order."""
        with self._lock:
            return list(self._arrivals)

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._arrivals.clear()

    @property
    def accepted(self) -> int:
        """Requests passed to the app."""
        return sum(1 for a in self.arrivals() if a.accepted)

    @property
    def rejected(self) -> int:
        """Requests answered 429."""
        return sum(1 for a in self.arrivals() if not a.accepted)

    def max_in_window(self, window_s: float, *, accepted_only: bool = True, tokens: bool = False) -> float:
        """The most requests (or tokens) that arrived within any `window_s` seconds."""
        points = [
            (a.at, a.tokens if tokens else 1) for a in self.arrivals() if a.accepted or not accepted_only
        ]
        best = total = 0.0
        low = 0
        for at, weight in points:
            total += weight
            while points[low][0] <= at - window_s:
                total -= points[low][1]
                low += 1
            best = max(best, total)
        return best


class RateLimitGate:
    """Wrap `app` with provider-like rate limits (see the module docstring)."""

    def __init__(
        self,
        app: App,
        *,
        requests_per_minute: float,
        tokens_per_minute: float | None = None,
        burst_requests: float | None = 10,
        burst_tokens: float | None = None,
        send_headers: bool = True,
        token_cost: Callable[[bytes], int] = default_token_cost,
        gated: Callable[[str, str], bool] = default_gated,
    ) -> None:
        self.app = app
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self.send_headers = send_headers
        self.token_cost = token_cost
        self.gated = gated
        self.log = GateLog()
        self._lock = threading.Lock()
        now = time.monotonic()
        rps = requests_per_minute / 60.0
        self._req_quota = _Bucket(rps, requests_per_minute, now)  # what the headers describe
        self._req_burst = _Bucket(rps, burst_requests or requests_per_minute, now)  # what is enforced
        self._tok_quota: _Bucket | None = None
        self._tok_burst: _Bucket | None = None
        if tokens_per_minute:
            tps = tokens_per_minute / 60.0
            self._tok_quota = _Bucket(tps, tokens_per_minute, now)
            self._tok_burst = _Bucket(tps, burst_tokens or tokens_per_minute / 10, now)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or not self.gated(scope.get("path", ""), scope.get("method", "")):
            await self.app(scope, receive, send)
            return
        cost = 0
        if self._tok_burst is not None:
            body = await _read_body(receive)
            cost = max(0, int(self.token_cost(body)))
            receive = _replay(body, receive)
        accepted, headers, wait = self._admit(cost)
        if not accepted:
            await _reject(send, headers, wait, cost)
            return
        if not self.send_headers:
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message.get("type") == "http.response.start":
                message = dict(message)
                message["headers"] = [*message.get("headers", []), *_raw(headers)]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _admit(self, cost: int) -> tuple[bool, dict[str, str], float]:
        with self._lock:
            now = time.monotonic()
            buckets = [b for b in (self._req_quota, self._req_burst, self._tok_quota, self._tok_burst) if b]
            for bucket in buckets:
                bucket.refill(now)
            wait = self._req_burst.wait_for(1)
            if self._tok_burst is not None:
                wait = max(wait, self._tok_burst.wait_for(cost))
            accepted = wait <= 0
            if accepted:
                for bucket in (self._req_quota, self._req_burst):
                    bucket.level -= 1
                for tok_bucket in (self._tok_quota, self._tok_burst):
                    if tok_bucket is not None:
                        tok_bucket.level -= cost
            headers = self._headers() if self.send_headers else {}
            self.log.add(Arrival(now, accepted, cost))
        return accepted, headers, wait

    def _headers(self) -> dict[str, str]:
        quota = self._req_quota
        headers = {
            "x-ratelimit-limit-requests": f"{self.requests_per_minute:g}",
            "x-ratelimit-remaining-requests": str(max(0, math.floor(quota.level))),
            "x-ratelimit-reset-requests": go_duration(quota.reset_s()),
        }
        if self._tok_quota is not None and self.tokens_per_minute:
            headers["x-ratelimit-limit-tokens"] = f"{self.tokens_per_minute:g}"
            headers["x-ratelimit-remaining-tokens"] = str(max(0, math.floor(self._tok_quota.level)))
            headers["x-ratelimit-reset-tokens"] = go_duration(self._tok_quota.reset_s())
        return headers


def go_duration(seconds: float) -> str:
    """OpenAI's reset format: `20ms`, `0.05s`, `1.5s`, `6m0s`, `1h2m3.5s`."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return _trim(seconds) + "s"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{int(hours)}h" if hours else ""
    if hours or minutes:
        text += f"{int(minutes)}m"
    return text + _trim(secs) + "s"


def _trim(value: float) -> str:
    return f"{value:.3f}".rstrip("0").rstrip(".") or "0"


async def _reject(send: Send, headers: dict[str, str], wait: float, cost: int) -> None:
    if math.isinf(wait):
        message = f"Request too large: it costs {cost} tokens, more than the bucket holds."
        wait = 60.0
    else:
        message = f"Rate limit reached. Please try again in {math.ceil(wait * 1000)}ms."
    error = {"message": message, "type": "rate_limit_error", "param": None, "code": "rate_limit_exceeded"}
    body = json.dumps({"error": error}).encode()
    headers = {
        **headers,
        "retry-after": str(max(1, math.ceil(wait))),
        "retry-after-ms": str(max(1, math.ceil(wait * 1000))),
        "content-type": "application/json",
        "content-length": str(len(body)),
    }
    await send({"type": "http.response.start", "status": 429, "headers": _raw(headers)})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message.get("type") != "http.request":
            return b"".join(chunks)
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes, original: Receive) -> Receive:
    """The body already read, then the client's own messages (a disconnect, when it comes)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await original()

    return receive


def _raw(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
