"""The per-invocation pacer: every attempt at a turn waits here until the provider can take it.

Call order for one attempt (the engine's side of the contract):

    waited = await pacer.acquire(estimated_tokens)   # last wait before sending
    ... send ...
    pacer.observe(signals)                           # when parse_rate_headers(...) found any
    pacer.on_rate_limited(retry_after_s)             # on a 429
    pacer.settle(estimated_tokens, usage_total)      # when the answer reported usage
    pacer.release()                                  # always, success or failure (a `finally`)

What it paces to, per resource (requests, tokens), the lowest of: an explicit budget; the limit learned from
headers (`limit / window`, paced 2% under); this invocation's share of a `SharedBudget`; all multiplied by a
slowdown factor that a 429 lowers (x0.8, at most once a second) and time restores (+0.1 per second). Sends are
spaced evenly at that rate (`Schedule`), and held while the provider's bucket as its headers describe it
(`Mirror`: remaining, less what is still in flight) has no room, and while a 429's `Retry-After` runs. A
holder of a shared budget starts its schedule at a random phase within one of its periods, so that a fan-out
of invocations starting together spreads its first sends instead of sending them at once.

With neither a budget nor a shared budget, the first attempt goes alone (a probe, unless `probe=False`) and
the others wait for its outcome, at most `probe_timeout_s`: then either headers were seen (pacing on) or not,
in which case `acquire` is a no-op (one clock read) and the engine's AIMD limiter alone handles the provider,
unless headers show up later. An explicit requests budget is enforced by aiolimiter's `AsyncLimiter`: a
fixed rate is where a library limiter fits (a bucket of 2, so that a late wake-up is caught up, not lost).
Rates that change and token charges corrected afterwards use the pacer's own `Schedule` (see `_bucket`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import os
import random
import time
from typing import TYPE_CHECKING

from ._bucket import Mirror, Schedule
from ._headers import RateSignals
from ._shared import SharedBudget
from ._stats import PaceSnapshot, SendLog

if TYPE_CHECKING:
    from aiolimiter import AsyncLimiter

HEADROOM = 0.98  # learned limits are paced this much under (the provider's clock and ours differ a little)
SLOWDOWN = 0.8  # a 429 multiplies the pace by this ...
MIN_FACTOR = 0.25  # ... down to this
RECOVERY_PER_S = 0.1  # and every second without one gives this much back
_DECREASE_INTERVAL_S = 1.0
_RECHECK_S = 0.25  # a waiting send re-reads the state this often (limits and leases change)
_PHASE = random.Random()  # spreads shared holders' first sends (not a secret: no need for `secrets`)
os.register_at_fork(after_in_child=_PHASE.seed)  # forked invocations must not draw the same phases


class _Mode(enum.Enum):
    PROBE = "probe"  # nothing known yet: the first attempt goes alone
    FREE = "free"  # no budget and no headers: only 429 pauses apply
    PACED = "paced"


class Pacer:
    """Paces one invocation's attempts to a provider's limits (see the module docstring)."""

    def __init__(
        self,
        *,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        shared: SharedBudget | None = None,
        probe_timeout_s: float = 2.0,
        probe: bool = True,
    ) -> None:
        for name, value in (
            ("requests_per_minute", requests_per_minute),
            ("tokens_per_minute", tokens_per_minute),
        ):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        self._budget_rpm = requests_per_minute
        self._budget_tpm = tokens_per_minute
        self._shared = shared
        self._probe_timeout_s = probe_timeout_s
        # A bucket of 2: a send that wakes up late is caught up by the next one instead of lost for good.
        self._limiter: AsyncLimiter | None = None
        if requests_per_minute:
            from aiolimiter import AsyncLimiter  # only with a budget (the merge step never needs it)

            self._limiter = AsyncLimiter(2, 120.0 / requests_per_minute)
        self._requests, self._tokens = Schedule(), Schedule()
        self._req_mirror, self._tok_mirror = Mirror(), Mirror()
        self._learned_rpm: float | None = None
        self._learned_tpm: float | None = None
        self._tokens_from_headers = False
        self._factor_low = 1.0
        self._last_decrease = -math.inf
        self._paused_until = 0.0
        budgeted = requests_per_minute is not None or tokens_per_minute is not None
        # `probe=False`: what this provider does is known already (an earlier run in this process saw it):
        # start free, and pace as soon as headers show limits.
        self._mode = _Mode.PACED if budgeted else (_Mode.PROBE if probe else _Mode.FREE)
        self._probe_at: float | None = None
        self._contact = asyncio.Event()
        self._lock = asyncio.Lock()
        self._lease_ready = asyncio.Event()
        self._renewer: asyncio.Task[None] | None = None
        self._log = SendLog()
        self._rate_limited = 0
        self._waited = 0.0
        self._phased = False  # the shared schedule's random start is set (once, at the first paced send)

    # -- the engine's calls ------------------------------------------------------------------------------

    async def acquire(self, tokens: int) -> float:
        """Wait until one request of `tokens` may be sent; the seconds waited (queue wait)."""
        start = time.monotonic()
        cost = float(max(0, tokens))
        if self._mode is _Mode.FREE and start >= self._paused_until:
            self._log.add(cost, start)  # the common case without headers: no await, no lock
            return 0.0
        if self._mode is _Mode.PROBE:
            if self._probe_at is None:
                self._probe_at = start
                self._log.add(cost, start)
                return 0.0
            await self._await_contact()
        if self._mode is not _Mode.PACED:
            await self._wait_pause()
            self._log.add(cost, time.monotonic())
            return self._waited_since(start)
        async with self._lock:
            await self._ensure_lease()
            if self._shared is not None and not self._phased:
                self._start_at_a_random_phase(time.monotonic())
            # No event to wait on: the wait ends by the clock, and limits or leases may change meanwhile.
            while (wait := self._delay(cost, time.monotonic())) > 0:  # noqa: ASYNC110
                await asyncio.sleep(min(wait, _RECHECK_S))
            if self._limiter is not None:
                await self._limiter.acquire()
                await self._wait_pause()
            now = time.monotonic()
            self._requests.take(1, now)
            self._req_mirror.take(1, now)
            if cost:
                self._tokens.take(cost, now)
                self._tok_mirror.take(cost, now)
            self._log.add(cost, now)
        return self._waited_since(start)

    def observe(self, signals: RateSignals) -> None:
        """Learn limits, remaining and reset from one response's headers (call before `release`)."""
        now = time.monotonic()
        unseen, unseen_tokens = self._log.unseen(now)
        window = signals.window_s
        if signals.limit_requests and window:
            self._learned_rpm = signals.limit_requests * 60.0 / window
        if signals.limit_tokens and window:
            self._learned_tpm = signals.limit_tokens * 60.0 / window
        self._req_mirror.sync(
            signals.limit_requests,
            signals.remaining_requests,
            signals.reset_requests_s,
            window_s=window,
            unseen=unseen,
            now=now,
        )
        self._tok_mirror.sync(
            signals.limit_tokens,
            signals.remaining_tokens,
            signals.reset_tokens_s,
            window_s=window,
            unseen=unseen_tokens,
            now=now,
        )
        if signals.limit_tokens is not None or signals.remaining_tokens is not None:
            self._tokens_from_headers = True
        if self._learned_rpm or self._learned_tpm or self._req_mirror.known or self._tok_mirror.known:
            self._mode = _Mode.PACED
        self._contact.set()

    def on_rate_limited(self, retry_after_s: float | None) -> None:
        """A 429: hold new sends for `retry_after_s` (when given) and slow the pace down."""
        now = time.monotonic()
        self._rate_limited += 1
        if retry_after_s and retry_after_s > 0:
            self._paused_until = max(self._paused_until, now + min(retry_after_s, 3_600.0))
        self._req_mirror.empty(now)
        if now - self._last_decrease >= _DECREASE_INTERVAL_S:
            self._factor_low = max(MIN_FACTOR, self._factor(now) * SLOWDOWN)
            self._last_decrease = now
        if self._mode is _Mode.PROBE:
            self._mode = _Mode.FREE
        self._contact.set()

    def settle(self, estimated: int, actual: int | None) -> None:
        """Correct the tokens charged for one request with the usage its answer reported.

        A larger actual count is always charged. A smaller one is given back only when the provider sends no
        token headers: when it does, its `remaining` is the truth (some providers keep `max_tokens` charged).
        """
        if actual is None:
            return
        delta = float(actual - estimated)
        if delta == 0 or (delta < 0 and self._tokens_from_headers):
            return
        now = time.monotonic()
        self._tokens.adjust(delta, now)
        self._tok_mirror.adjust(delta, now)
        self._log.correct(delta, now)

    def release(self) -> None:
        """An attempt ended (success or failure): it is no longer in flight."""
        self._log.release()
        if self._mode is _Mode.PROBE:  # the probe came back without headers
            self._mode = _Mode.FREE
        self._contact.set()

    def snapshot(self) -> PaceSnapshot:
        """Recent send rates, the pace applied, learned limits and back-off state."""
        now = time.monotonic()
        requests, tokens = self._log.per_minute(now)
        req_rate, tok_rate = self._rates(now)
        share = self._shared.share() if self._shared is not None else None
        return PaceSnapshot(
            requests_per_minute=requests,
            tokens_per_minute=tokens,
            backing_off=now < self._paused_until or self._factor(now) < 1.0,
            pace_requests_per_minute=_per_minute(req_rate) or self._budget_rpm,
            pace_tokens_per_minute=_per_minute(tok_rate),
            limit_requests_per_minute=self._learned_rpm,
            limit_tokens_per_minute=self._learned_tpm,
            remaining_requests=self._req_mirror.level(now) if self._req_mirror.known else None,
            remaining_tokens=self._tok_mirror.level(now) if self._tok_mirror.known else None,
            mode=self._mode.value,
            in_flight=self._log.in_flight,
            sent=self._log.sent,
            rate_limited=self._rate_limited,
            waited_s=self._waited,
            shared=share.source if share is not None else None,
            warning=self._shared.warning if self._shared is not None else None,
        )

    async def aclose(self) -> None:
        """Stop renewing the shared lease and give it back."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
        if self._shared is not None:
            await self._shared.aclose()

    # -- internals ----------------------------------------------------------------------------------------

    def _waited_since(self, start: float) -> float:
        waited = time.monotonic() - start
        self._waited += waited
        return waited

    async def _await_contact(self) -> None:
        assert self._probe_at is not None
        left = self._probe_at + self._probe_timeout_s - time.monotonic()
        if left > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._contact.wait(), left)
        if self._mode is _Mode.PROBE:  # the probe is slow: stop holding the others back
            self._mode = _Mode.FREE

    async def _wait_pause(self) -> None:
        while (wait := self._paused_until - time.monotonic()) > 0:  # noqa: ASYNC110 (the pause may move)
            await asyncio.sleep(wait)

    def _factor(self, now: float) -> float:
        if self._factor_low >= 1.0:
            return 1.0
        return min(1.0, self._factor_low + RECOVERY_PER_S * (now - self._last_decrease))

    def _totals(self) -> tuple[float | None, float | None]:
        """The whole budget per minute (what a shared budget divides): explicit, else learned."""
        rpm = _min(self._budget_rpm, self._learned_rpm * HEADROOM if self._learned_rpm else None)
        tpm = _min(self._budget_tpm, self._learned_tpm * HEADROOM if self._learned_tpm else None)
        return rpm, tpm

    def _rates(self, now: float) -> tuple[float | None, float | None]:
        """Requests and tokens per second to pace to now (None: not paced by a schedule)."""
        factor = self._factor(now)
        rpm, tpm = self._totals()
        share = self._shared.share() if self._shared is not None and self._lease_ready.is_set() else None
        if share is not None:
            rpm, tpm = _min(rpm, share.requests_per_minute), _min(tpm, share.tokens_per_minute)
        if rpm == self._budget_rpm and factor >= 1.0 and share is None:
            rpm = None  # the budget alone: aiolimiter enforces it
        return (
            None if rpm is None else rpm / 60.0 * factor,
            None if tpm is None else tpm / 60.0 * factor,
        )

    def _delay(self, cost: float, now: float) -> float:
        req_rate, tok_rate = self._rates(now)
        self._requests.set_rate(req_rate, now)
        self._tokens.set_rate(tok_rate, now)
        wait = max(self._paused_until - now, self._requests.delay(now), self._req_mirror.delay(1, now))
        if cost:
            wait = max(wait, self._tokens.delay(now), self._tok_mirror.delay(cost, now))
        return wait

    def _start_at_a_random_phase(self, now: float) -> None:
        """Hold the first shared send for a random part of one period (1 / this holder's rate), once."""
        rate, _ = self._rates(now)
        if rate is None or rate <= 0:
            return  # nothing paces requests yet (no budget known): the phase waits for one
        self._phased = True
        self._requests.hold_until(now + _PHASE.uniform(0.0, 1.0 / rate))

    async def _ensure_lease(self) -> None:
        if self._shared is None or self._totals() == (None, None):
            return
        if self._renewer is None:
            self._renewer = asyncio.create_task(self._renew(self._shared), name="pacer-lease")
        await self._lease_ready.wait()

    async def _renew(self, shared: SharedBudget) -> None:
        while True:
            await shared.lease(*self._totals())  # never raises
            self._lease_ready.set()
            await asyncio.sleep(shared.renew_in_s())


def _min(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def _per_minute(rate: float | None) -> float | None:
    return None if rate is None else rate * 60.0
