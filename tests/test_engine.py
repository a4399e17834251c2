"""The engine on its own, with scripted runners: limiter, backoff, deadline, accounting, options."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import pytest

from fair_runners import (
    ConfigurationError,
    Dataset,
    InvalidRequest,
    RateLimited,
    TransientBackendError,
    prepare,
)
from fair_runners.engine import AdaptiveLimiter, Deadline, Engine, EngineOptions, backoff_delay, percentile
from fair_runners.runners import TurnInput, TurnOutput

from .conftest import make_datasets

Script = Callable[[TurnInput, int], Any]  # (turn, attempt number) -> awaitable of TurnOutput


class ScriptedRunner:
    """A `Runner` whose behaviour per attempt is a coroutine function; records what it saw."""

    name = "scripted"

    def __init__(self, script: Script) -> None:
        self.script = script
        self.calls: list[tuple[str, str]] = []
        self.cancelled = 0
        self.attempts: dict[str, int] = {}

    async def __aenter__(self) -> ScriptedRunner:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"runner": self.name}

    async def run_turn(self, turn: TurnInput) -> TurnOutput:
        qa = turn.batch.qa_id
        self.attempts[qa] = self.attempts.get(qa, 0) + 1
        self.calls.append((turn.session_id, qa))
        try:
            return await self.script(turn, self.attempts[qa])  # type: ignore[no-any-return]
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


def _datasets(sessions: int = 2, turns: int = 3) -> list[Dataset]:
    return [Dataset.model_validate(d) for d in make_datasets(sessions=sessions, turns=turns)]


def _run(
    runner: ScriptedRunner, datasets: list[Dataset], deadline_s: float | None = None, **options: Any
) -> Any:
    opts = EngineOptions(**{"backoff_base_s": 0.01, "backoff_max_s": 0.05, **options})
    engine = Engine(runner, opts, deadline=Deadline.after(deadline_s))
    return asyncio.run(engine.run_sessions(datasets))


async def _echo(turn: TurnInput, attempt: int) -> TurnOutput:
    await asyncio.sleep(0)
    return TurnOutput(content=f"a:{turn.batch.query}", input_tokens=2, output_tokens=3)


# --- the adaptive limiter --------------------------------------------------------------------------------


def test_limiter_rejects_a_bad_bound() -> None:
    with pytest.raises(ValueError, match="limit must be >= 1, got 0"):
        AdaptiveLimiter(0)


def test_limiter_cancelled_waiter_does_not_break_the_queue() -> None:
    async def scenario() -> None:
        limiter = AdaptiveLimiter(1)
        await limiter.acquire()
        waiter = asyncio.create_task(limiter.acquire())
        await asyncio.sleep(0)
        waiter.cancel()
        limiter.release()  # runs before the cancelled waiter wakes up
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert limiter.in_flight == 0
        await asyncio.wait_for(limiter.acquire(), 1)  # the slot is still usable
        assert limiter.in_flight == 1

    asyncio.run(scenario())


def test_limiter_slot_handed_over_then_cancelled_is_passed_on() -> None:
    async def scenario() -> None:
        limiter = AdaptiveLimiter(1)
        await limiter.acquire()
        first = asyncio.create_task(limiter.acquire())
        second = asyncio.create_task(limiter.acquire())
        await asyncio.sleep(0)
        limiter.release()  # hands the slot to `first` ...
        first.cancel()  # ... which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.wait_for(second, 1)  # so the slot went on to `second`
        assert limiter.in_flight == 1

    asyncio.run(scenario())


def test_limiter_never_exceeds_its_limit_under_cancellation() -> None:
    rng = random.Random(7)

    async def scenario() -> None:
        limiter = AdaptiveLimiter(4)
        peak = 0

        async def user() -> None:
            nonlocal peak
            await limiter.acquire()
            try:
                peak = max(peak, limiter.in_flight)
                assert limiter.in_flight <= limiter.limit or limiter.limit < 4
                await asyncio.sleep(rng.random() / 500)
            finally:
                limiter.release()

        tasks = [asyncio.create_task(user()) for _ in range(300)]
        for task in rng.sample(tasks, 100):
            task.cancel()
            await asyncio.sleep(0)
        await asyncio.gather(*tasks, return_exceptions=True)
        assert limiter.in_flight == 0 and not limiter._waiters
        assert peak == 4

    asyncio.run(scenario())


def test_limiter_halves_on_429_and_grows_back() -> None:
    limiter = AdaptiveLimiter(8)
    limiter.on_rate_limited(None)
    assert limiter.limit == 4 and limiter.min_seen == 4
    limiter.on_rate_limited(None)  # a burst of 429s within a second counts once
    assert limiter.limit == 4
    for _ in range(4):
        limiter.on_success()
    assert limiter.limit == 5
    for _ in range(100):
        limiter.on_success()
    assert limiter.limit == 8 and limiter.min_seen == 4


def test_limiter_pause_blocks_new_attempts() -> None:
    async def scenario() -> float:
        limiter = AdaptiveLimiter(2)
        limiter.on_rate_limited(0.2)
        started = time.monotonic()
        await limiter.acquire()
        return time.monotonic() - started

    assert asyncio.run(scenario()) >= 0.19


# --- backoff and percentiles ----------------------------------------------------------------------------


def test_backoff_is_bounded_jittered_and_honours_retry_after() -> None:
    for attempt in range(1, 12):
        delay = backoff_delay(attempt, 0.5, 20.0)
        ceiling = min(20.0, 0.5 * 2 ** (attempt - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert backoff_delay(1, 0.5, 20.0, retry_after=7.0) >= 7.0


def test_percentile() -> None:
    assert percentile([], 50) == 0.0
    assert percentile([5.0], 95) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(list(map(float, range(101))), 95) == 95.0


# --- the engine ---------------------------------------------------------------------------------------------


def test_every_turn_accounted_and_totals_add_up() -> None:
    runner = ScriptedRunner(_echo)
    outcome = _run(runner, _datasets(3, 4), max_concurrency=2)
    assert outcome.complete
    assert outcome.totals.turns == 12 and outcome.totals.successes == 12
    assert outcome.totals.input_tokens == 24 and outcome.totals.output_tokens == 36
    for dataset, summary in zip(outcome.datasets, outcome.summaries, strict=True):
        assert summary.session_id == dataset.session_id
        assert [b.assistant for b in dataset.conversation] == [f"a:{b.query}" for b in dataset.conversation]
        assert [t.qa_id for t in summary.turns] == [b.qa_id for b in dataset.conversation]
        assert summary.total_execution_time_ms >= summary.max_batch_time_ms >= summary.p50_batch_time_ms


def test_latency_is_the_final_attempt_and_waits_are_separate() -> None:
    async def slow_fail_then_fast(turn: TurnInput, attempt: int) -> TurnOutput:
        if attempt == 1:
            await asyncio.sleep(0.3)
            raise TransientBackendError("HTTP 502")
        return await _echo(turn, attempt)

    outcome = _run(
        ScriptedRunner(slow_fail_then_fast), _datasets(1, 1), backoff_base_s=0.2, backoff_max_s=0.2
    )
    record = outcome.summaries[0].turns[0]
    assert record.status == "ok" and record.attempts == 2
    assert record.latency_ms < 250  # the fast final attempt, not the slow failed one
    assert 100 <= record.retry_wait_ms <= 250  # equal jitter: between half and all of 0.2 s
    assert outcome.summaries[0].retries == 1 and outcome.totals.retries == 1


def test_a_failed_turn_records_its_error_type_and_attempts() -> None:
    async def always_busy(turn: TurnInput, attempt: int) -> TurnOutput:
        raise RateLimited("HTTP 429", retry_after=0.01)

    outcome = _run(ScriptedRunner(always_busy), _datasets(1, 2), max_attempts=3)
    for record in outcome.summaries[0].turns:
        assert record.status == "error" and record.error_type == "rate_limited" and record.attempts == 3
        assert record.retry_wait_ms > 0 and record.latency_ms is not None
    assert outcome.totals.failures == 2 and outcome.totals.retries == 4
    assert outcome.min_concurrency < 16


def test_a_runner_bug_stays_in_its_turn() -> None:
    async def buggy(turn: TurnInput, attempt: int) -> TurnOutput:
        if turn.batch.qa_id == "s0-q1":
            raise KeyError("oops")
        return await _echo(turn, attempt)

    runner = ScriptedRunner(buggy)
    outcome = _run(runner, _datasets(2, 3))
    assert [t.status for t in outcome.summaries[0].turns] == ["ok", "error", "ok"]
    assert outcome.summaries[0].turns[1].attempts == 1  # a bug is not retried
    assert outcome.datasets[0].conversation[1].assistant == "[ERROR] KeyError: 'oops'"
    assert outcome.totals.successes == 5


def test_deadline_cancels_in_flight_attempts() -> None:
    async def forever(turn: TurnInput, attempt: int) -> TurnOutput:
        if turn.batch.qa_id.endswith("q1"):
            await asyncio.sleep(3600)
        return await _echo(turn, attempt)

    runner = ScriptedRunner(forever)
    started = time.monotonic()
    outcome = _run(runner, _datasets(3, 3), deadline_s=0.5, turn_timeout_s=600)
    assert time.monotonic() - started < 1.5
    assert runner.cancelled == 3  # each session's hanging attempt was cancelled, not abandoned
    assert not outcome.complete and outcome.totals.skipped == 6
    for summary in outcome.summaries:
        assert [t.status for t in summary.turns] == ["ok", "skipped", "skipped"]


def test_retry_waits_never_cross_the_deadline() -> None:
    async def busy(turn: TurnInput, attempt: int) -> TurnOutput:
        raise RateLimited("HTTP 429", retry_after=30)

    started = time.monotonic()
    outcome = _run(ScriptedRunner(busy), _datasets(2, 2), deadline_s=1.0)
    assert time.monotonic() - started < 1.5
    assert not outcome.complete
    statuses = [t.status for s in outcome.summaries for t in s.turns]
    assert set(statuses) <= {"error", "skipped"}
    assert all(t.retry_wait_ms == 0 for s in outcome.summaries for t in s.turns)


def test_waiting_for_a_slot_stops_at_the_deadline() -> None:
    async def slow(turn: TurnInput, attempt: int) -> TurnOutput:
        await asyncio.sleep(0.1)
        return await _echo(turn, attempt)

    runner = ScriptedRunner(slow)
    engine = Engine(runner, EngineOptions(max_concurrency=2), deadline=Deadline.after(0.6))
    engine.limiter.on_rate_limited(30)  # a backend-wide pause far past the deadline

    started = time.monotonic()
    outcome = asyncio.run(engine.run_sessions(_datasets(2, 2)))
    assert time.monotonic() - started < 1.2  # not deadline + the 1 s guard: the wait itself ended
    assert runner.calls == [] and outcome.totals.skipped == 4 and not outcome.complete


def test_skip_answered_keeps_answers_and_feeds_history() -> None:
    seen: dict[str, tuple[tuple[str, str], ...]] = {}

    async def remember(turn: TurnInput, attempt: int) -> TurnOutput:
        seen[turn.batch.qa_id] = turn.history
        return await _echo(turn, attempt)

    datasets = _datasets(1, 3)
    datasets[0].conversation[0].assistant = "old answer"
    datasets[0].conversation[1].assistant = "[ERROR] timed out"
    runner = ScriptedRunner(remember)
    engine = Engine(runner, EngineOptions(skip_answered=True), use_history=True)
    outcome = asyncio.run(engine.run_sessions(datasets))
    assert [t.status for t in outcome.summaries[0].turns] == ["kept", "ok", "ok"]
    assert [qa for _, qa in runner.calls] == ["s0-q1", "s0-q2"]
    assert seen["s0-q1"] == (("question 0 of s0", "old answer"),)
    assert seen["s0-q2"][1] == ("question 1 of s0", "a:question 1 of s0")
    assert outcome.summaries[0].successes == 3


def test_answered_turns_after_a_deadline_cut_are_kept_not_skipped() -> None:
    async def hang_on_q1(turn: TurnInput, attempt: int) -> TurnOutput:
        if turn.batch.qa_id.endswith("q1"):
            await asyncio.sleep(3600)
        return await _echo(turn, attempt)

    datasets = _datasets(1, 3)
    datasets[0].conversation[0].assistant = "old0"
    datasets[0].conversation[2].assistant = "old2"
    engine = Engine(
        ScriptedRunner(hang_on_q1), EngineOptions(skip_answered=True), deadline=Deadline.after(0.3)
    )
    outcome = asyncio.run(engine.run_sessions(datasets))
    assert [t.status for t in outcome.summaries[0].turns] == ["kept", "skipped", "kept"]
    assert outcome.summaries[0].successes == 2 and outcome.totals.skipped == 1 and not outcome.complete
    assert outcome.datasets[0].conversation[2].assistant == "old2"


def test_a_reposted_error_turn_loses_its_old_error_note() -> None:
    async def fail_then_answer(turn: TurnInput, attempt: int) -> TurnOutput:
        if turn.batch.qa_id == "s0-q0" and not turn.batch.assistant:
            raise TransientBackendError("boom 503")
        return await _echo(turn, attempt)

    datasets = _datasets(2, 1)
    datasets[0].conversation[0].observation = "caller's note "
    first = _run(ScriptedRunner(fail_then_answer), datasets, max_attempts=1)
    failed = first.datasets[0].conversation[0]
    assert failed.assistant == "[ERROR] boom 503"
    assert failed.observation == "caller's note \nError: boom 503"  # the caller's text kept as sent

    async def fail_again(turn: TurnInput, attempt: int) -> TurnOutput:
        raise TransientBackendError("still down")

    again = _run(ScriptedRunner(fail_again), first.datasets, max_attempts=1, skip_answered=True)
    turn = again.datasets[0].conversation[0]
    assert (turn.assistant, turn.observation) == ("[ERROR] still down", "caller's note \nError: still down")

    fixed = _run(ScriptedRunner(_echo), again.datasets, skip_answered=True)
    turn = fixed.datasets[0].conversation[0]
    assert (turn.assistant, turn.observation) == ("a:question 0 of s0", "caller's note ")
    assert [t.status for s in fixed.summaries for t in s.turns] == ["ok", "kept"]


def test_a_cancelled_run_leaves_no_session_running() -> None:
    events: list[object] = []

    async def slow(turn: TurnInput, attempt: int) -> TurnOutput:
        await asyncio.sleep(0.2)
        return await _echo(turn, attempt)

    async def main() -> tuple[int, int]:
        runner = ScriptedRunner(slow)
        engine = Engine(runner, EngineOptions(max_concurrency=4), on_progress=events.append)
        task = asyncio.create_task(engine.run_sessions(_datasets(4, 5)))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        seen = len(events)
        alive = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        await asyncio.sleep(0.5)  # a leftover session would answer (and call back) by now
        return len(alive), len(events) - seen

    alive, late_events = asyncio.run(main())
    assert alive == 0 and late_events == 0


def test_retry_after_that_cannot_be_a_date_is_ignored() -> None:
    from fair_runners._errors import parse_retry_after

    assert parse_retry_after("Mon, 01 Jan 99999999999 00:00:00 GMT") is None  # OverflowError inside
    assert parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT") == 3600.0
    assert parse_retry_after("nan") is None and parse_retry_after("2") == 2.0


# --- options ------------------------------------------------------------------------------------------------


def _alquimia(options: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "datasets": make_datasets(1, 1),
        "config": {"base_url": "https://public.test", "api_key": "k", "agent_id": "a"},
        "options": options or {},
    }


def test_max_concurrency_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    assert prepare(_alquimia()).options.max_concurrency == 16
    monkeypatch.setenv("FAIR_RUNNERS_MAX_CONCURRENCY", "3")
    assert prepare(_alquimia()).options.max_concurrency == 3
    assert prepare(_alquimia({"max_concurrency": 40})).options.max_concurrency == 40  # the request wins
    monkeypatch.setenv("FAIR_RUNNERS_MAX_CONCURRENCY", "500")  # above the cap: clamped, not a caller error
    assert prepare(_alquimia()).options.max_concurrency == 256
    monkeypatch.setenv("FAIR_RUNNERS_MAX_CONCURRENCY_CAP", "8")
    with pytest.raises(InvalidRequest) as info:
        prepare(_alquimia({"max_concurrency": 9}))
    assert info.value.details == [
        {
            "loc": "options.max_concurrency",
            "msg": "must be <= 8 (env FAIR_RUNNERS_MAX_CONCURRENCY_CAP), got 9",
        }
    ]
    monkeypatch.setenv("FAIR_RUNNERS_MAX_CONCURRENCY", "lots")
    with pytest.raises(ConfigurationError, match="FAIR_RUNNERS_MAX_CONCURRENCY"):
        prepare(_alquimia())


def test_engine_respects_max_concurrency() -> None:
    in_flight = peak = 0

    async def track(turn: TurnInput, attempt: int) -> TurnOutput:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.005)
        in_flight -= 1
        return await _echo(turn, attempt)

    _run(ScriptedRunner(track), _datasets(20, 3), max_concurrency=5)
    assert peak == 5
