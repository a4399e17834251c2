"""`Schedule` (smooth pacing at a changing rate) and `Mirror` (the provider's bucket per its headers)."""

from __future__ import annotations

import itertools
import math

import pytest

from fair_runners.pacing._bucket import TOLERANCE_S, Mirror, Schedule


def _sends(schedule: Schedule, count: int, cost: float = 1.0, start: float = 0.0) -> list[float]:
    """The times `count` back-to-back sends go out (each as soon as it may)."""
    now, times = start, []
    for _ in range(count):
        now += schedule.delay(now)
        times.append(now)
        schedule.take(cost, now)
    return times


def test_no_rate_no_wait() -> None:
    schedule = Schedule()
    assert _sends(schedule, 5) == [0.0] * 5


def test_sends_are_evenly_spaced_at_the_rate() -> None:
    times = _sends(Schedule(20.0), 21)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert times[0] == 0.0
    assert all(gap == pytest.approx(0.05) for gap in gaps[1:])
    assert times[-1] == pytest.approx(1.0 - TOLERANCE_S)  # 20 intervals, each send early by the tolerance


def test_a_late_wake_up_is_caught_up_not_lost() -> None:
    schedule = Schedule(10.0)  # one per 0.1 s
    schedule.take(1, 0.0)
    late = 0.1 - TOLERANCE_S + 0.02  # woke 20 ms after the allowed time
    assert schedule.delay(late) == 0.0
    schedule.take(1, late)
    assert schedule.delay(late) == pytest.approx(0.2 - TOLERANCE_S - late)  # on the 0.1 s grid again


def test_costs_weigh_and_adjust_corrects_them() -> None:
    schedule = Schedule(1000.0)  # tokens per second
    schedule.take(500, 0.0)
    assert schedule.delay(0.0) == pytest.approx(0.5 - TOLERANCE_S)
    schedule.adjust(-300, 0.0)  # the answer used 300 fewer
    assert schedule.delay(0.0) == pytest.approx(0.2 - TOLERANCE_S)
    schedule.adjust(+100, 0.0)
    assert schedule.delay(0.0) == pytest.approx(0.3 - TOLERANCE_S)
    schedule.adjust(-10_000, 0.0)  # a refund never becomes credit for later
    assert schedule.delay(0.0) == 0.0
    schedule.take(100, 0.0)
    assert schedule.delay(0.0) == pytest.approx(0.1 - TOLERANCE_S)


def test_a_rate_change_rescales_the_wait_already_scheduled() -> None:
    schedule = Schedule(10.0)
    schedule.take(1, 0.0)  # next at 0.1
    schedule.set_rate(5.0, 0.0)
    assert schedule.delay(0.0) == pytest.approx(0.2 - TOLERANCE_S)
    schedule.set_rate(0.0, 0.0)
    assert schedule.delay(0.0) == math.inf
    schedule.set_rate(None, 0.0)
    assert schedule.delay(0.0) == 0.0


def test_mirror_unknown_until_told() -> None:
    mirror = Mirror()
    assert not mirror.known and mirror.delay(1, 0.0) == 0.0 and mirror.level(0.0) == math.inf
    mirror.take(5, 0.0)  # ignored while unknown
    mirror.sync(None, 3, 1.0, window_s=None, unseen=0, now=0.0)  # no limit: still unknown
    assert not mirror.known


def test_mirror_refill_from_the_window_and_level_from_remaining_less_unseen() -> None:
    mirror = Mirror()
    mirror.sync(1200, 1199, 0.05, window_s=60.0, unseen=4, now=0.0)
    assert mirror.known and mirror.refill == pytest.approx(20.0)  # too little used to trust reset: 1200/60
    assert mirror.level(0.0) == pytest.approx(1195)
    assert mirror.level(10.0) == 1200  # capped at the capacity


def test_mirror_refill_inferred_from_remaining_and_reset() -> None:
    mirror = Mirror()
    # A day's quota of 14,400 with 30 used, full again in 180 s: it refills at 1/6 per second.
    mirror.sync(14_400, 14_370, 180.0, window_s=60.0, unseen=0, now=0.0)
    assert mirror.refill == pytest.approx(30 / 180)
    mirror = Mirror()
    mirror.sync(60, 0, 6.0, window_s=None, unseen=0, now=0.0)  # empty, full in 6 s: 10 per second
    assert mirror.refill == pytest.approx(10.0)
    assert mirror.delay(1, 0.0) == pytest.approx(0.1)
    assert mirror.delay(100, 0.0) == pytest.approx(6.0)  # more than the capacity waits for a full bucket
    mirror.take(1, 0.1)
    assert mirror.delay(1, 0.1) == pytest.approx(0.1)


def test_mirror_empty_after_a_refusal() -> None:
    mirror = Mirror()
    mirror.sync(600, 500, None, window_s=60.0, unseen=0, now=0.0)
    mirror.empty(0.0)
    assert mirror.level(0.0) == 0 and mirror.delay(1, 0.0) == pytest.approx(0.1)
    mirror.adjust(-5, 0.0)  # a refund
    assert mirror.level(0.0) == 5
