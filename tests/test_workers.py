"""LLM mode over forked worker processes: same answers, order, faults, deadline and accounting as in-process.

Every test runs real forks against the loopback OpenAI-compatible server. To prove which process answered,
`LLMRunner.run_turn` is wrapped (before the fork, so the workers inherit it) to tag each answer with its pid.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import signal
import threading
import time
from typing import Any

import httpx
import pytest

from fair_runners import run_sync
from fair_runners._engine import Engine, EngineOptions
from fair_runners._errors import ConfigurationError, InvalidRequest, PermanentBackendError
from fair_runners._events import Event, TurnFinished
from fair_runners._schemas import Dataset
from fair_runners._settings import Settings, available_vcpus
from fair_runners.runners._base import TurnInput, TurnOutput
from fair_runners.runners._procs import ProcessRunner, kept_workers
from fair_runners.runners.llm import LLMRunner
from fair_runners.testing import Fault

from .conftest import LLM_KEY, llm_request, make_datasets
from .helpers import turns


@pytest.fixture
def pid_tagged(monkeypatch: pytest.MonkeyPatch) -> None:
    """Answers end with ` [pid N]`, N the process that ran the turn."""
    original = LLMRunner.run_turn

    async def tagged(self: LLMRunner, turn: TurnInput) -> TurnOutput:
        output = await original(self, turn)
        return TurnOutput(f"{output.content} [pid {os.getpid()}]", output.input_tokens, output.output_tokens)

    monkeypatch.setattr(LLMRunner, "run_turn", tagged)


@pytest.fixture
def two_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIR_RUNNERS_WORKERS", "2")


def _pids(result: dict[str, Any]) -> set[int]:
    return {
        int(batch["assistant"].rsplit("[pid ", 1)[1].rstrip("]"))
        for dataset in result["datasets"]
        for batch in dataset["conversation"]
        if "[pid " in batch["assistant"]
    }


# -- how many workers --------------------------------------------------------------------------------------


def test_auto_uses_one_worker_per_vcpu_and_per_eight_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", raising=False)
    auto = Settings()
    assert [auto.worker_count(n) for n in (1, 7, 8, 16, 31, 32, 500)] == [1, 1, 1, 2, 3, 4, 4]


@pytest.mark.parametrize(
    ("memory_mb", "vcpus"), [("128", 1), ("1024", 1), ("1769", 1), ("3008", 2), ("10240", 4)]
)
def test_on_lambda_the_memory_size_sets_the_vcpus(
    monkeypatch: pytest.MonkeyPatch, memory_mb: str, vcpus: int
) -> None:
    # Lambda shows every function at least two CPUs but throttles small ones to their memory's share.
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", memory_mb)
    assert available_vcpus() == vcpus
    assert Settings().worker_count(1000) == vcpus


def test_env_sets_the_worker_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIR_RUNNERS_WORKERS", "3")
    settings = Settings.from_env()
    assert settings.workers == 3
    assert [settings.worker_count(n) for n in (1, 2, 50)] == [1, 2, 3]
    monkeypatch.setenv("FAIR_RUNNERS_WORKERS", "auto")
    assert Settings.from_env().workers is None


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_bad_worker_count_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("FAIR_RUNNERS_WORKERS", value)
    with pytest.raises(ConfigurationError, match="FAIR_RUNNERS_WORKERS"):
        Settings.from_env()


# -- runs over workers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "groq"])
def test_every_turn_answered_in_order_with_history_across_workers(
    llm: Any, pid_tagged: None, two_workers: None, provider: str
) -> None:
    datasets = make_datasets(sessions=6, turns=4, extra_field={"kept": True})
    datasets[2]["context"] = "You are terse."
    result = run_sync(llm_request(llm, datasets, provider=provider, max_concurrency=6)).model_dump()
    assert result["complete"] and result["totals"]["successes"] == 24
    pids = _pids(result)
    assert len(pids) == 2 and os.getpid() not in pids  # both workers answered, this process none
    for i, dataset in enumerate(result["datasets"]):
        assert dataset["extra_field"] == {"kept": True}
        assert [b["qa_id"] for b in dataset["conversation"]] == [f"s{i}-q{j}" for j in range(4)]
        for j, batch in enumerate(dataset["conversation"]):
            system = "yes" if i == 2 else "no"
            assert batch["assistant"].startswith(f"echo: question {j} of s{i} (history={j}, system={system})")
    assert [t["status"] for t in turns(result, 0)] == ["ok"] * 4
    assert result["totals"]["input_tokens"] > 0 and result["totals"]["output_tokens"] > 0


def test_auto_workers_run_a_big_llm_request_in_processes(
    llm: Any, pid_tagged: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1})
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", raising=False)
    big = run_sync(llm_request(llm, make_datasets(sessions=16, turns=1), max_concurrency=16)).model_dump()
    assert big["totals"]["successes"] == 16 and len(_pids(big)) == 2
    small = run_sync(llm_request(llm, make_datasets(sessions=7, turns=1))).model_dump()
    assert _pids(small) == {os.getpid()}  # too small to be worth a fork


def test_a_hostname_resolves_inside_the_workers(
    llm: Any, pid_tagged: None, two_workers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Once this process has used its DNS thread pool, a forked worker must not inherit the pool without its
    # threads, or every lookup in the worker would wait for a thread that is not there.
    from fair_runners import _netguard

    assert _netguard.resolve_checked("public.test", 443)  # the pool now has an idle thread
    port = llm.url.rsplit(":", 1)[1]
    monkeypatch.setenv("FAIR_RUNNERS_ALLOWED_HOSTS", f"loopback.test:{port}")
    monkeypatch.setenv("FAIR_RUNNERS_DNS_TIMEOUT_S", "2")
    request = llm_request(llm, make_datasets(sessions=4, turns=2), provider="groq")
    request["connector"]["params"]["base_url"] = f"http://loopback.test:{port}"
    started = time.monotonic()
    result = run_sync(request).model_dump()
    assert result["totals"]["successes"] == 8, result["datasets"][0]["conversation"][0]["assistant"]
    assert len(_pids(result)) == 2 and time.monotonic() - started < 2


def test_faults_are_retried_and_rate_limits_apply_to_all_workers(
    llm: Any, pid_tagged: None, two_workers: None
) -> None:
    llm.latency_s = 0.01
    llm.add_fault(
        Fault("status", status=500, query="question 1 of s0", times=2),
        Fault("status", status=429, retry_after=0.5, query="question 2 of s3"),
    )
    result = run_sync(llm_request(llm, make_datasets(sessions=4, turns=4), max_concurrency=4)).model_dump()
    assert result["complete"] and result["totals"]["successes"] == 16
    assert turns(result, 0)[1]["attempts"] == 3
    assert turns(result, 3)[2]["attempts"] == 2 and turns(result, 3)[2]["retry_wait_ms"] >= 500
    assert result["totals"]["retries"] == 3
    # One limiter for the backend, in the parent: the 429 cut the concurrency of every worker.
    assert any("concurrency was reduced to 2 (from 4)" in w for w in result["warnings"])


def test_an_invalid_key_stops_every_worker(llm: Any, two_workers: None) -> None:
    llm.latency_s = 0.02
    request = llm_request(llm, make_datasets(sessions=4, turns=3), max_concurrency=4)
    request["connector"]["params"]["api_key"] = "wrong-key"
    result = run_sync(request).model_dump()
    assert result["totals"]["failures"] == 12
    assert {t["error_type"] for s in range(4) for t in turns(result, s)} == {"authentication"}
    assert len(llm.requests) <= 4  # at most the first wave: the rest were never sent
    assert "wrong-key" not in str(result)


def test_a_hang_times_out_in_the_worker_and_the_others_go_on(
    llm: Any, pid_tagged: None, two_workers: None
) -> None:
    llm.add_fault(Fault("hang", query="question 0 of s1"))
    started = time.monotonic()
    request = llm_request(llm, make_datasets(sessions=4, turns=2), turn_timeout_s=0.5, max_attempts=1)
    result = run_sync(request).model_dump()
    assert time.monotonic() - started < 3
    assert [t["status"] for t in turns(result, 1)] == ["error", "ok"]
    assert turns(result, 1)[0]["error_type"] == "timeout"
    assert result["totals"]["successes"] == 7


def test_the_deadline_cuts_worker_turns_and_a_repost_finishes_them(
    llm: Any, pid_tagged: None, two_workers: None
) -> None:
    llm.latency_s = 0.15
    request = llm_request(llm, make_datasets(sessions=4, turns=6), max_concurrency=4)
    started = time.monotonic()
    first = run_sync(request, deadline_s=0.5).model_dump()
    assert time.monotonic() - started < 1.5
    assert not first["complete"] and first["totals"]["skipped"] > 0
    kept = kept_workers().pids  # the cut turns were cancelled in the workers, which confirmed and stay
    assert len(kept) == 2
    for s in range(4):
        statuses = [t["status"] for t in turns(first, s)]
        assert statuses == sorted(statuses, key=lambda x: x != "ok")  # answered first, then skipped
        assert set(statuses) <= {"ok", "skipped"}
    llm.latency_s = 0.0
    again = {**request, "datasets": first["datasets"], "options": {"skip_answered": True}}
    second = run_sync(again).model_dump()
    assert second["complete"] and second["totals"]["failures"] == 0
    assert kept_workers().pids == kept and _pids(second) <= set(kept)
    reused = sum(t["status"] == "kept" for s in range(4) for t in turns(second, s))
    assert reused == first["totals"]["successes"]
    for i, dataset in enumerate(second["datasets"]):  # history rebuilt from the answers already there
        for j, batch in enumerate(dataset["conversation"]):
            assert batch["assistant"].startswith(f"echo: question {j} of s{i} (history={j}, ")


def test_a_worker_killed_mid_run_loses_nothing(llm: Any, pid_tagged: None) -> None:
    llm.latency_s = 0.05
    datasets = [Dataset.model_validate(d) for d in make_datasets(sessions=6, turns=4)]
    base_url = llm.url
    killed: list[int] = []

    async def scenario() -> tuple[Any, list[int]]:
        from langchain_groq import ChatGroq

        params = {"model": "m", "api_key": LLM_KEY, "base_url": base_url}
        runner = ProcessRunner(LLMRunner(ChatGroq, params, timeout=httpx.Timeout(5)), 2)

        def on_event(event: Event) -> None:
            if isinstance(event, TurnFinished) and not killed:
                victim = runner.worker_pids[0]
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)

        async with runner:
            pids = list(runner.worker_pids)
            options = EngineOptions(max_concurrency=6, backoff_base_s=0.01, backoff_max_s=0.05)
            engine = Engine(runner, options, on_event=on_event, use_history=True)
            return await engine.run(datasets), pids

    outcome, pids = asyncio.run(scenario())
    assert killed and killed[0] in pids
    assert outcome.complete and outcome.totals.successes == 24 and outcome.totals.failures == 0
    assert outcome.totals.retries >= 1  # the turns in flight in the dead worker were sent again
    for i, dataset in enumerate(outcome.datasets):
        for j, batch in enumerate(dataset.conversation):
            assert batch.assistant.startswith(f"echo: question {j} of s{i} (history={j}, ")
    last_turns = [d.conversation[-1].assistant for d in outcome.datasets]
    # once one worker had died, the other answered everything
    assert {int(a.rsplit("[pid ", 1)[1].rstrip("]")) for a in last_turns} == {pids[1]}


@pytest.fixture
def runner_tagged(monkeypatch: pytest.MonkeyPatch) -> None:
    """Answers end with ` [pid N model M]`: the process, and M counts the runners opened in that process."""
    original_turn, original_open = LLMRunner.run_turn, LLMRunner.__aenter__
    opened = itertools.count(1)

    async def opening(self: LLMRunner) -> LLMRunner:
        self.serial = next(opened)  # type: ignore[attr-defined]
        return await original_open(self)

    async def tagged(self: LLMRunner, turn: TurnInput) -> TurnOutput:
        output = await original_turn(self, turn)
        tag = f" [pid {os.getpid()} model {self.serial}]"  # type: ignore[attr-defined]
        return TurnOutput(output.content + tag, output.input_tokens, output.output_tokens)

    monkeypatch.setattr(LLMRunner, "__aenter__", opening)
    monkeypatch.setattr(LLMRunner, "run_turn", tagged)


def _tags(result: dict[str, Any]) -> set[tuple[int, int]]:
    found = set()
    for dataset in result["datasets"]:
        for batch in dataset["conversation"]:
            pid, _, model = batch["assistant"].rsplit("[pid ", 1)[1].rstrip("]").partition(" model ")
            found.add((int(pid), int(model)))
    return found


def _reaped(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True  # not even a zombie is left
    return False


def _dead(pid: int) -> bool:
    """Exited (a zombie not reaped yet, or gone), without reaping it: its parent's bookkeeping does that."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_workers_and_their_runner_are_kept_for_the_next_run(
    llm: Any, runner_tagged: None, two_workers: None, caplog: pytest.LogCaptureFixture
) -> None:
    request = llm_request(llm, make_datasets(sessions=4, turns=2), provider="groq")
    first = run_sync(request).model_dump()
    pids = kept_workers().pids
    assert len(pids) == 2 and all(not _reaped(pid) for pid in pids)
    second = run_sync(request).model_dump()
    assert first["totals"]["successes"] == second["totals"]["successes"] == 8
    # The same two processes, and in each the same model (and its HTTP client): no fork, no rebuild.
    assert _tags(second) == _tags(first) and {pid for pid, _ in _tags(first)} == set(pids)
    assert kept_workers().pids == pids
    other = llm_request(llm, make_datasets(sessions=4, turns=2), provider="groq")
    other["connector"]["params"]["model"] = "another-model"
    third = run_sync(other).model_dump()
    assert third["totals"]["successes"] == 8
    assert {pid for pid, _ in _tags(third)} == set(pids)  # same processes...
    assert not {model for _, model in _tags(third)} & {model for _, model in _tags(first)}  # new runner
    assert {r["model"] for r in llm.requests[-8:]} == {"another-model"}
    gc.collect()  # an exception no task retrieved is logged when the task goes
    assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text


def test_a_worker_that_died_between_runs_is_replaced(llm: Any, pid_tagged: None, two_workers: None) -> None:
    request = llm_request(llm, make_datasets(sessions=4, turns=2))
    run_sync(request)
    victim, survivor = kept_workers().pids
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while not _dead(victim) and time.monotonic() < deadline:
        time.sleep(0.01)
    # Seen dead when the run takes its workers (then replaced at once), or only when it opens the runner
    # (its threads still exiting: then this run goes on without it, and the next forks the replacement).
    # Either way no turn is sent to it and none is lost.
    result = run_sync(request).model_dump()
    assert result["complete"] and result["totals"]["successes"] == 8 and result["totals"]["retries"] == 0
    assert victim not in _pids(result) and survivor in _pids(result)
    again = run_sync(request).model_dump()
    pids = kept_workers().pids
    assert survivor in pids and victim not in pids and len(pids) == 2
    assert again["totals"]["successes"] == 8 and _pids(again) == set(pids)


def test_a_worker_found_dead_only_when_the_run_opens_is_left_out(
    llm: Any, pid_tagged: None, two_workers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = llm_request(llm, make_datasets(sessions=4, turns=2))
    run_sync(request)
    victim = kept_workers()._workers[0]
    monkeypatch.setattr(victim.process, "is_alive", lambda: True)  # still looks alive when taken
    os.kill(victim.process.pid, signal.SIGKILL)
    result = run_sync(request).model_dump()
    assert result["complete"] and result["totals"]["successes"] == 8 and result["totals"]["retries"] == 0
    assert victim.process.pid not in _pids(result) | set(kept_workers().pids)
    assert _reaped(victim.process.pid)


def test_the_lambda_runtimes_per_invocation_trace_header_keeps_the_workers(
    llm: Any, pid_tagged: None, two_workers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The runtime sets _X_AMZN_TRACE_ID in os.environ before every invocation: the workers must stay.
    request = llm_request(llm, make_datasets(sessions=4, turns=1))
    pids = []
    for trace in ("Root=1-aaaa;Sampled=0", "Root=1-bbbb;Sampled=1", None):
        if trace is None:
            monkeypatch.delenv("_X_AMZN_TRACE_ID")
        else:
            monkeypatch.setenv("_X_AMZN_TRACE_ID", trace)
        assert run_sync(request).totals.successes == 4
        pids.append(kept_workers().pids)
    assert pids[0] == pids[1] == pids[2] and len(pids[0]) == 2


def test_workers_forked_under_another_environment_are_replaced(
    llm: Any, pid_tagged: None, two_workers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = llm_request(llm, make_datasets(sessions=4, turns=1))
    run_sync(request)
    before = kept_workers().pids
    monkeypatch.setenv("FAIR_RUNNERS_SOME_SETTING", "changed")
    result = run_sync(request).model_dump()
    after = kept_workers().pids
    assert result["totals"]["successes"] == 4 and _pids(result) == set(after)
    assert not set(before) & set(after)
    assert all(_reaped(pid) for pid in before)


def test_a_global_langchain_setting_replaces_the_workers(
    llm: Any, pid_tagged: None, two_workers: None
) -> None:
    from langchain_core.globals import set_debug

    request = llm_request(llm, make_datasets(sessions=4, turns=1))
    run_sync(request)
    before = kept_workers().pids
    set_debug(True)
    try:
        assert run_sync(request).totals.successes == 4
    finally:
        set_debug(False)
    assert not set(before) & set(kept_workers().pids)


def test_overlapping_runs_each_have_their_own_workers(llm: Any, pid_tagged: None, two_workers: None) -> None:
    llm.latency_s = 0.1
    results: list[dict[str, Any]] = []

    def one_run(prefix: str) -> None:
        request = llm_request(llm, make_datasets(sessions=4, turns=2, prefix=prefix), max_concurrency=4)
        results.append(run_sync(request).model_dump())

    threads = [threading.Thread(target=one_run, args=(prefix,)) for prefix in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == 2
    for result in results:
        assert result["complete"] and result["totals"]["successes"] == 8
        prefix = result["datasets"][0]["session_id"][0]
        for i, dataset in enumerate(result["datasets"]):
            for j, batch in enumerate(dataset["conversation"]):
                assert batch["assistant"].startswith(f"echo: question {j} of {prefix}{i} (history={j}, ")
    kept, own = sorted((_pids(r) for r in results), key=lambda p: p != set(kept_workers().pids))
    assert kept == set(kept_workers().pids) and len(own) == 2 and not kept & own
    assert all(_reaped(pid) for pid in own)  # the overlapping run ended the workers it forked


def test_closing_the_kept_workers_reaps_them(llm: Any, two_workers: None) -> None:
    run_sync(llm_request(llm, make_datasets(sessions=2, turns=1)))
    pids = kept_workers().pids
    assert len(pids) == 2
    kept_workers().close()
    assert kept_workers().pids == [] and all(_reaped(pid) for pid in pids)


class _IgnoresCancellation:
    """A runner whose `stuck` turn shrugs off cancellation for 1.5 s, then answers all the same."""

    name = "ignores-cancellation"

    async def __aenter__(self) -> _IgnoresCancellation:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"runner": self.name}

    async def run_turn(self, turn: TurnInput) -> TurnOutput:
        if turn.batch.query == "stuck":
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                await asyncio.sleep(1.5)
            return TurnOutput("late answer to stuck")
        return TurnOutput(f"answer to {turn.batch.query} [pid {os.getpid()}]")


def _turn(query: str) -> TurnInput:
    return TurnInput(
        "s",
        "",
        Dataset.model_validate(make_datasets(1, 1)[0]).conversation[0].model_copy(update={"query": query}),
    )


def test_a_worker_that_cannot_wind_down_its_turns_is_replaced_not_reused() -> None:
    # Its late answer must never reach the next run: the worker does not confirm the end, so it is ended.
    async def scenario() -> tuple[int, TurnOutput, list[int]]:
        async with ProcessRunner(_IgnoresCancellation(), 1) as runner:
            stuck_pid = runner.worker_pids[0]
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await runner.run_turn(_turn("stuck"))
        async with ProcessRunner(_IgnoresCancellation(), 1) as runner:
            return stuck_pid, await runner.run_turn(_turn("next")), runner.worker_pids

    started = time.monotonic()
    stuck_pid, answer, pids = asyncio.run(scenario())
    assert time.monotonic() - started < 3
    assert _reaped(stuck_pid) and stuck_pid not in pids
    assert answer.content == f"answer to next [pid {pids[0]}]"


class _FailsToOpen:
    """A runner that cannot open in a worker: raises `error`, or (None) kills its process."""

    name = "fails-to-open"

    def __init__(self, error: Exception | None) -> None:
        self.error = error

    async def __aenter__(self) -> _FailsToOpen:
        if self.error is None:
            os._exit(3)
        raise self.error

    async def __aexit__(self, *exc: object) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"runner": self.name}

    async def run_turn(self, turn: TurnInput) -> TurnOutput:
        raise AssertionError("never reached")


@pytest.mark.parametrize(
    ("error", "expected", "text"),
    [
        (InvalidRequest("bad params", [{"loc": "connector.params.x", "msg": "no"}]), InvalidRequest, "bad"),
        (RuntimeError("model broke"), PermanentBackendError, "RuntimeError: model broke"),
        (None, PermanentBackendError, "did not start (exit code 3)"),
    ],
)
def test_a_worker_that_cannot_open_its_runner_fails_the_start_not_every_turn(
    error: Exception | None, expected: type[Exception], text: str
) -> None:
    # The same error as in one process (an InvalidRequest stays one, with its details), raised when the
    # workers start, and no process left behind.
    async def scenario() -> None:
        async with ProcessRunner(_FailsToOpen(error), 2):
            raise AssertionError("the runner should not have opened")

    with pytest.raises(expected) as info:
        asyncio.run(scenario())
    assert text in str(info.value)
    if isinstance(info.value, InvalidRequest):
        assert info.value.details == [{"loc": "connector.params.x", "msg": "no"}]
    pids = kept_workers().pids
    if error is None:  # the workers died: none is kept, none is left a zombie
        assert pids == []
    else:  # the workers said why and stay, clean, for the next run
        assert len(pids) == 2 and not any(_reaped(pid) for pid in pids)
        kept_workers().close()
        assert all(_reaped(pid) for pid in pids)
