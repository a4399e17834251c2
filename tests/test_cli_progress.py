"""Progress: rich's live display on a pseudo-terminal, and the library events it is drawn from."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from fair_runners import RunProgress, RunResult, SessionFinished, iter_sessions, run_sync
from fair_runners._progress import ProgressEvent
from fair_runners.testing import AlquimiaAgent, Fault

from ._cli import ROOT, cli_env
from .conftest import ALQUIMIA_KEY, alquimia_request, make_datasets


def _run_on_pty(args: list[str], **env: str) -> tuple[int, str]:
    master, slave = os.openpty()
    with subprocess.Popen(
        [sys.executable, "-m", "fair_runners.cli", *args],
        cwd=ROOT,
        env=cli_env(TERM="xterm-256color", COLUMNS="160", LINES="40", **env),
        stdin=slave,
        stdout=slave,
        stderr=slave,
    ) as proc:
        os.close(slave)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(master)
        code = proc.wait(timeout=60)
    return code, b"".join(chunks).decode("utf-8", "replace")


def test_live_progress_renders_on_a_terminal(agent: AlquimiaAgent, tmp_path: Path) -> None:
    agent.latency_s = 0.1  # about a second in all: the live display redraws several times meanwhile
    agent.add_fault(Fault("status", query="question 1 of s1", status=503, times=1))
    data = tmp_path / "d.json"
    data.write_text(json.dumps(make_datasets(sessions=3, turns=3)))
    out = tmp_path / "out.json"
    args = ["run", str(data), "--base-url", agent.url, "--agent-id", "bot", "--max-concurrency", "1"]  # type: ignore[attr-defined]
    code, screen = _run_on_pty([*args, "-o", str(out)], ALQUIMIA_API_KEY=ALQUIMIA_KEY)
    assert code == 0, screen
    assert "\x1b[?25l" in screen  # rich's live display hides the cursor while it redraws
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)
    assert "━" in plain and "ETA" in plain  # the bar and the time-remaining column
    assert re.search(r"\b[0-8]/9 turns", plain)  # drawn while running...
    assert "9/9 turns · 3/3 sessions" in plain and "9 ok · 0 failed · 1 retries" in plain  # ...and at the end
    assert "retry  s1 / s1-q1: attempt 1 failed (transient)" in plain
    assert "total (3)" in plain and json.loads(out.read_text())["totals"]["retries"] == 1


def test_run_progress_counts_match_the_result(agent: AlquimiaAgent) -> None:
    agent.add_fault(
        Fault("status", query="question 0 of s0", status=503, times=1),
        Fault("status", query="question 1 of s1", status=400, times=None),
    )
    progress = RunProgress()
    seen: list[tuple[int, int]] = []

    def on_progress(event: ProgressEvent) -> None:
        progress.update(event)
        if isinstance(event, SessionFinished):
            seen.append((progress.sessions_done, progress.turns_done))

    result = run_sync(alquimia_request(agent, make_datasets(sessions=3, turns=2)), on_progress=on_progress)
    assert progress.finished and progress.complete and not progress.all_answered
    assert (progress.sessions, progress.turns) == (3, 6)
    assert (progress.ok, progress.failed, progress.retries) == (5, 1, 1)
    assert progress.ok == result.totals.successes and progress.retries == result.totals.retries
    assert [s for s, _ in seen] == [1, 2, 3] and seen[-1][1] == 6
    assert progress.eta_s == 0.0 and progress.elapsed_s > 0


def test_iter_sessions_yields_each_session_as_it_finishes(agent: AlquimiaAgent) -> None:
    agent.latency_s = 0.05
    datasets = make_datasets(sessions=3, turns=1)
    datasets[0]["conversation"] = [
        {"qa_id": f"long-{j}", "query": f"long question {j}"} for j in range(6)
    ]  # s0 is the slowest: it must come last although it is first in the input
    request = alquimia_request(agent, datasets, max_concurrency=3)
    events: list[str] = []

    async def collect() -> list[str]:
        order = []
        async for dataset, summary in iter_sessions(
            request, on_progress=lambda e: events.append(type(e).__name__)
        ):
            assert summary.session_id == dataset.session_id and summary.successes == summary.total_batches
            order.append(dataset.session_id)
        return order

    order = asyncio.run(collect())
    assert sorted(order[:2]) == ["s1", "s2"] and order[2] == "s0"  # completion order, not input order
    assert events[0] == "RunStarted" and events[-1] == "RunFinished"


def test_iter_sessions_stopped_early_cancels_the_run(agent: AlquimiaAgent) -> None:
    agent.latency_s = 0.05
    request = alquimia_request(agent, make_datasets(sessions=4, turns=5), max_concurrency=1)

    async def first_only() -> str:
        async for dataset, _ in iter_sessions(request):
            return dataset.session_id
        raise AssertionError("no session")

    assert asyncio.run(first_only()) == "s0"
    assert len(agent.infer_requests()) < 20


def test_run_sync_inside_a_running_loop(agent: AlquimiaAgent) -> None:
    """As in a notebook: `run_sync` called while an event loop runs still returns the result."""

    async def notebook_cell() -> RunResult:
        return run_sync(alquimia_request(agent, make_datasets(sessions=1, turns=2)))

    result = asyncio.run(notebook_cell())
    assert result.totals.successes == 2
