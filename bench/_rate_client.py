"""Benchmark helper for `rate_bench.py`: the measured invocation, in a fresh process (pinned by the parent).

Its job is a JSON file (`--job PATH`): `{"api": "run_sync" | "lambda", "request": {...}, "runs": N,
"preimport": [module, ...], "profile": PATH}`. It imports `handler.app` (what a Lambda's init imports;
LangChain is not among it) and the `preimport` modules, prints `@@{"ready": ...}`, then for each of the
`runs` waits for a line `go` on stdin and runs the request once through the real engine:
`fair_runners.run_sync` (with its `on_progress` events recorded: `PaceReport`, `TurnRetrying`, and when the
engine started (`RunStarted`: the runner is built, LangChain imported) and the first turn finished) or
`handler.app.lambda_handler` (the event is the request: a Map batch event, for instance). After each run it
prints one `@@{...}` line: the run's start and end (host CLOCK_MONOTONIC, shared with the provider's
process), wall, CPU, the totals, the warnings, the error types of failed turns and the pace reports (`t`:
seconds since the start). The first run is the process's first (cold: with no budget, the pacer probes); the
next ones are what a warm Lambda gets. With `profile`, the first run runs under cProfile (slower: for a
diagnosis, not a measurement) and its stats go to that file.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import dataclasses
import importlib
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class _Context:
    aws_request_id = "rate-bench"
    function_name = "fair-runners-rate-bench"

    def get_remaining_time_in_millis(self) -> int:
        return 900_000


def emit(payload: dict[str, Any]) -> None:
    """One line for the parent (other stdout lines, such as EMF metrics, are not prefixed)."""
    print("@@" + json.dumps(payload), flush=True)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _errors(summaries: list[dict[str, Any]]) -> dict[str, int]:
    counts = collections.Counter(
        str(turn.get("error_type")) for s in summaries for turn in s["turns"] if turn["status"] == "error"
    )
    return dict(counts)


def run_once(api: str, request: dict[str, Any]) -> dict[str, Any]:
    """One run of `request` through the real engine; the measurements (see the module docstring)."""
    from fair_runners import run_sync
    from fair_runners._progress import PaceReport, RunStarted, TurnFinished, TurnRetrying

    pace: list[dict[str, Any]] = []
    marks: dict[str, float] = {}
    retries: collections.Counter[str] = collections.Counter()
    start = time.monotonic()
    cpu0 = _cpu_s()

    def on_progress(event: object) -> None:
        if isinstance(event, PaceReport):
            pace.append({"t": round(time.monotonic() - start, 3), **dataclasses.asdict(event)})
        elif isinstance(event, TurnRetrying):
            retries[event.error_type] += 1
        elif isinstance(event, RunStarted | TurnFinished):
            mark = "engine_started_s" if isinstance(event, RunStarted) else "first_turn_done_s"
            marks.setdefault(mark, round(time.monotonic() - start, 3))

    if api == "lambda":
        from handler.app import lambda_handler

        result: dict[str, Any] = lambda_handler(request, _Context())
    else:
        result = run_sync(request, on_progress=on_progress).model_dump(mode="json")
    end = time.monotonic()
    totals = result["totals"]
    return {
        "start": start,
        "end": end,
        "wall_s": round(end - start, 4),
        "cpu_s": round(_cpu_s() - cpu0, 4),
        "turns": totals["turns"],
        "successes": totals["successes"],
        "failures": totals["failures"],
        "rate_limited_responses": totals.get("rate_limited_responses", 0),
        "complete": result.get("complete"),
        "warnings": result.get("warnings", [])[:5],
        "errors": _errors(result.get("summaries", [])),
        "retries": dict(retries),
        "marks": marks,
        "pace": pace,
    }


def main() -> None:
    """Run the job (see the module docstring)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--job", type=Path, required=True)
    args = parser.parse_args()
    job = json.loads(args.job.read_text())
    started = time.monotonic()
    import handler.app  # noqa: F401  # the Lambda's init

    for module in job.get("preimport", []):
        importlib.import_module(module)
    emit({"ready": True, "import_s": round(time.monotonic() - started, 3)})
    for index in range(job["runs"]):
        if sys.stdin.readline().strip() != "go":
            return
        if index == 0 and job.get("profile"):  # the cold run under cProfile (for a diagnosis only)
            profiler = cProfile.Profile()
            report = profiler.runcall(run_once, job["api"], job["request"])
            profiler.dump_stats(job["profile"])
            emit(report)
        else:
            emit(run_once(job["api"], job["request"]))


if __name__ == "__main__":
    main()
