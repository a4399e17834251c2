"""`Pacer`: free without budget or headers, a probe first, smooth pacing to budgets and learned limits, the
provider's remaining (less what is in flight), 429 pauses and slowdown, token settlement."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from fair_runners.pacing import Pacer, RateSignals, _stats


def sync(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test in its own event loop (the suite's way: `asyncio.run`); fixtures pass through."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return run


def _minute(limit: float, remaining: float, reset_s: float | None = None) -> RateSignals:
    return RateSignals(
        limit_requests=limit, remaining_requests=remaining, reset_requests_s=reset_s, window_s=60.0
    )


async def _timed(pacer: Pacer, count: int, tokens: int = 0) -> list[float]:
    """Start `count` acquires at once; when each returned, relative to the start, in order."""
    start = time.monotonic()
    done: list[float] = []

    async def one() -> None:
        await pacer.acquire(tokens)
        done.append(time.monotonic() - start)

    await asyncio.gather(*(one() for _ in range(count)))
    return sorted(done)


def _most_in(times: list[float], window: float) -> int:
    return max(sum(1 for t in times if s <= t < s + window) for s in times)


def test_a_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="requests_per_minute must be a positive number, got 0"):
        Pacer(requests_per_minute=0)
    with pytest.raises(ValueError, match="tokens_per_minute"):
        Pacer(tokens_per_minute=float("nan"))


@sync
async def test_without_budget_or_headers_acquire_is_free_after_the_probe() -> None:
    pacer = Pacer()
    assert await pacer.acquire(10) == 0.0  # the probe
    assert pacer.snapshot().mode == "probe"
    pacer.release()  # its answer had no rate headers
    start = time.perf_counter()
    for _ in range(10_000):
        assert await pacer.acquire(10) == 0.0
        pacer.release()
    elapsed = time.perf_counter() - start
    snapshot = pacer.snapshot()
    assert snapshot.mode == "free" and snapshot.sent == 10_001 and snapshot.in_flight == 0
    assert elapsed < 0.5, f"10,000 free acquires took {elapsed:.3f} s"


@sync
async def test_the_probe_goes_alone_until_its_headers_arrive() -> None:
    pacer = Pacer()
    await pacer.acquire(0)
    second = asyncio.create_task(pacer.acquire(0))
    await asyncio.sleep(0.1)
    assert not second.done()  # held back while the probe is out
    pacer.observe(_minute(6000, 5999, 0.01))
    waited = await asyncio.wait_for(second, 1.0)
    assert 0.08 < waited < 0.5
    snapshot = pacer.snapshot()
    assert snapshot.mode == "paced" and snapshot.limit_requests_per_minute == 6000
    assert snapshot.pace_requests_per_minute == pytest.approx(6000 * 0.98)


@sync
async def test_a_slow_probe_stops_holding_the_others_back() -> None:
    pacer = Pacer(probe_timeout_s=0.2)
    await pacer.acquire(0)
    waited = await asyncio.wait_for(pacer.acquire(0), 2.0)
    assert 0.15 < waited < 0.6
    assert pacer.snapshot().mode == "free"
    assert await pacer.acquire(0) == 0.0


@sync
async def test_a_budget_paces_smoothly_from_the_first_send() -> None:
    pacer = Pacer(requests_per_minute=6000)  # 100 per second, no probe
    times = await _timed(pacer, 51)
    assert 0.45 < times[-1] < 0.9, times[-1]
    assert _most_in(times, 0.1) <= 12  # 10 per 0.1 s, plus the limiter's bucket of 2
    await pacer.aclose()


@sync
async def test_learned_limits_pace_just_under_them() -> None:
    pacer = Pacer()
    await pacer.acquire(0)
    pacer.observe(_minute(6000, 5999, 0.01))
    pacer.release()
    times = await _timed(pacer, 50)
    assert 0.45 < times[-1] < 0.9, times[-1]  # 49 intervals at 98 per second: 0.5 s
    assert _most_in(times, 0.1) <= 13  # 1 + 98 x (0.1 s + the schedule's 25 ms tolerance)


@sync
async def test_an_explicit_budget_below_the_learned_limit_wins() -> None:
    pacer = Pacer(requests_per_minute=3000)
    pacer.observe(_minute(60_000, 59_999))
    times = await _timed(pacer, 26)
    assert 0.45 < times[-1] < 0.9, times[-1]  # 25 intervals at 50 per second


@sync
async def test_the_providers_remaining_less_what_is_in_flight_holds_sends() -> None:
    pacer = Pacer(requests_per_minute=60_000)
    for _ in range(4):
        await pacer.acquire(0)  # 4 in flight
    # The answer to one of them: 5 left of 6,000, full again in 600 s (refills 10 per second). The 3 others
    # still in flight are not in that count yet: 2 may go, the third waits for the refill (~0.1 s).
    pacer.observe(_minute(6000, 5, 599.5))
    pacer.release()
    times = await _timed(pacer, 3)
    assert times[1] < 0.06, times
    assert 0.07 < times[2] < 0.4, times
    snapshot = pacer.snapshot()
    assert snapshot.remaining_requests is not None and snapshot.remaining_requests < 1


@sync
async def test_a_caller_that_never_releases_does_not_stop_the_pacer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_stats, "WINDOW_S", 0.2)  # "the last minute", shortened
    pacer = Pacer(requests_per_minute=60_000)
    for _ in range(50):
        await pacer.acquire(0)  # never released: 50 "in flight" forever
    await asyncio.sleep(0.3)
    pacer.observe(_minute(6000, 20, 598.0))  # 20 left, refilling 10 per second
    assert await pacer.acquire(0) < 0.05  # not held back by 49 phantom requests in flight


@sync
async def test_a_429_pauses_new_sends_and_slows_the_pace() -> None:
    pacer = Pacer(requests_per_minute=6000)
    await pacer.acquire(0)
    pacer.on_rate_limited(0.2)
    pacer.on_rate_limited(0.1)  # within a second: no second slowdown, and the pause does not shrink
    snapshot = pacer.snapshot()
    assert snapshot.backing_off and snapshot.rate_limited == 2
    assert snapshot.pace_requests_per_minute == pytest.approx(6000 * 0.8, rel=0.05)
    waited = await pacer.acquire(0)
    assert 0.18 < waited < 0.6
    times = await _timed(pacer, 21)
    assert times[-1] > 0.2 / 0.9  # 20 intervals at 80-85 per second, not 100


@sync
async def test_tokens_budget_spaces_by_cost() -> None:
    pacer = Pacer(tokens_per_minute=600_000)  # 10,000 tokens per second
    times = await _timed(pacer, 6, tokens=1000)
    assert 0.4 < times[-1] < 0.8, times  # 5 gaps of 0.1 s
    assert pacer.snapshot().pace_tokens_per_minute == pytest.approx(600_000)


@sync
async def test_settle_refunds_against_a_budget_but_not_against_token_headers() -> None:
    pacer = Pacer(tokens_per_minute=600_000)  # 10,000 per second
    await pacer.acquire(5000)  # the next send may go 0.5 s later
    pacer.settle(5000, 1000)  # it used 1,000: 0.1 s
    waited = await pacer.acquire(1)
    assert waited < 0.2

    headers = Pacer()
    await headers.acquire(0)
    headers.observe(RateSignals(limit_tokens=600_000, remaining_tokens=599_000, window_s=60.0))
    headers.release()
    await headers.acquire(5000)
    headers.settle(5000, 1000)  # the provider's own count rules: no refund
    headers.settle(5000, 6000)  # but more than estimated is charged
    waited = await headers.acquire(1)
    assert 0.5 < waited < 1.0  # 6,000 tokens at 9,800 per second


@sync
async def test_a_cancelled_waiter_leaves_the_pacer_usable() -> None:
    pacer = Pacer(requests_per_minute=600)  # 10 per second, a bucket of 2
    await pacer.acquire(0)
    await pacer.acquire(0)
    waiter = asyncio.create_task(pacer.acquire(0))
    await asyncio.sleep(0.02)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert pacer.snapshot().in_flight == 2
    waited = await asyncio.wait_for(pacer.acquire(0), 1.0)
    assert waited < 0.3
    for _ in range(3):
        pacer.release()
    pacer.release()  # one too many is harmless
    assert pacer.snapshot().in_flight == 0


@sync
async def test_snapshot_reports_recent_rates() -> None:
    pacer = Pacer(requests_per_minute=60_000, tokens_per_minute=6_000_000)
    for _ in range(20):
        await pacer.acquire(100)
        pacer.release()
    snapshot = pacer.snapshot()
    assert snapshot.sent == 20 and snapshot.mode == "paced"
    assert snapshot.requests_per_minute == pytest.approx(20 * 60)  # over at least a second
    assert snapshot.tokens_per_minute == pytest.approx(2000 * 60)
    assert snapshot.shared is None and snapshot.warning is None and not snapshot.backing_off
    await pacer.aclose()
    await pacer.aclose()
