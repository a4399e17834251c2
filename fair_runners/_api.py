"""The library API: run a prepared request in the current event loop (`execute`), or validate and run one
(`run`, `run_sync`, `iter_sessions`). The flow: request -> `prepare` -> engine -> runner -> `RunResult`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ._budgets import RateBudget, resolve_budget
from ._progress import ProgressCallback, ProgressEvent, RunFinished, SessionFinished
from ._request import PreparedRun, prepare
from ._rundir import RunDirectory
from ._schemas import Dataset, RunRequest, RunResult, SessionSummary
from ._settings import Settings
from ._text import cap_warnings
from .cache import TurnCache, open_store
from .engine import Deadline, Engine
from .engine._pacing import close_pacer, open_pacer
from .pacing import Pacer, bucket_id
from .runners._base import Runner


async def execute(
    prepared: PreparedRun,
    *,
    deadline: Deadline | None = None,
    on_progress: ProgressCallback | None = None,
    run_dir: RunDirectory | None = None,
) -> RunResult:
    """Run a prepared request inside the current event loop (its artifacts in `run_dir`, when given)."""
    if run_dir is not None:
        on_progress = _both(run_dir.record, on_progress)
        try:
            result = await execute(prepared, deadline=deadline, on_progress=on_progress)
        finally:
            run_dir.close()  # what was recorded stays, whatever happened
        run_dir.finish(result)
        return result
    request = prepared.request
    await prepared.vet_targets()  # DNS checks of the target URLs, off the event loop, before any request
    runner = prepared.build_runner()
    bucket, pacer = _pacer(prepared)
    cache = _cache(prepared, runner)
    try:
        async with runner:
            engine = Engine(
                runner,
                prepared.options,
                deadline=deadline,
                redactor=prepared.redactor,
                on_progress=on_progress,
                use_history=request.mode == "llm",
                pacer=pacer,
                cache=cache,
            )
            outcome = await engine.run_sessions(request.datasets, prepared.run_id)
    finally:
        pace = pacer.snapshot()
        await close_pacer(bucket, pacer)
        if cache is not None:
            await cache.aclose()
    if on_progress is not None:
        try:
            on_progress(RunFinished(prepared.run_id, outcome.complete, outcome.totals))
        except Exception:  # as in the engine: a broken progress callback must not break the run
            logging.getLogger("fair_runners.engine").exception("progress callback failed")
    warnings = list(prepared.warnings) + outcome.notes
    if outcome.min_concurrency < prepared.options.max_concurrency:
        warnings.append(
            f"rate limited: concurrency was reduced to {outcome.min_concurrency} "
            f"(from {prepared.options.max_concurrency})"
        )
    if pace.warning:
        warnings.append(f"rate budget: {pace.warning}")
    if engine.circuit.reason:
        warnings.append(f"authentication failed; remaining turns were not sent: {engine.circuit.reason}")
    if not outcome.complete:
        warnings.append(
            "the run stopped at its deadline: re-post this response with options.skip_answered=true "
            "to finish the skipped turns"
        )
    return RunResult(
        success=True,
        complete=outcome.complete,
        run_id=prepared.run_id,
        mode=request.mode,
        datasets=outcome.datasets,
        summaries=outcome.summaries,
        total_datasets=len(outcome.datasets),
        totals=outcome.totals,
        warnings=cap_warnings(warnings),
    )


def _both(first: ProgressCallback, second: ProgressCallback | None) -> ProgressCallback:
    if second is None:
        return first

    def both(event: ProgressEvent) -> None:
        first(event)
        second(event)

    return both


def _run_dir(
    prepared: PreparedRun, path: str | os.PathLike[str] | None, overwrite: bool
) -> RunDirectory | None:
    if path is None:
        return None
    return RunDirectory.open(path, prepared.request, prepared.run_id, prepared.redactor, overwrite=overwrite)


def _cache(prepared: PreparedRun, runner: Runner) -> TurnCache | None:
    """The run's response cache (None with `options.cache=off`): DynamoDB in the Lambda, SQLite elsewhere."""
    options = prepared.request.options
    target = prepared.target
    if options.cache == "off" or target is None:
        return None
    store = open_store(lambda_env=prepared.lambda_env)
    if store is None:  # the Lambda without a table: prepare() refused the request already
        return None
    return TurnCache(
        store,
        mode=options.cache,
        ttl_s=options.cache_ttl_s,
        runner=target.runner,
        origin=target.origin,
        target=target.target,
        credential=target.credential,
        params=target.params,
        request_of=runner.request_of,
        redactor=prepared.redactor,
    )


def _pacer(prepared: PreparedRun) -> tuple[str, Pacer]:
    """The run's pacer: its budget (the deployer's for a deployment key, the request's for its own key)
    and its bucket (origin, class, model and key, never the key itself)."""
    target = prepared.target
    assert target is not None
    options = prepared.request.options
    asked = RateBudget(options.requests_per_minute, options.tokens_per_minute)
    budget = resolve_budget(target.budget_names, deployment_key=target.deployment_key, asked=asked)
    bucket = bucket_id(target.origin, target.target, target.model, target.credential)
    pacer = open_pacer(
        bucket, budget, fan_out=prepared.request.fan_out, reports_headers=target.reports_headers
    )
    return bucket, pacer


async def run(
    request: RunRequest | Mapping[str, Any],
    *,
    deadline_s: float | None = None,
    on_progress: ProgressCallback | None = None,
    settings: Settings | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> RunResult:
    """Validate and run a request; `deadline_s` bounds the whole run (skipped turns past it).

    `run_dir` keeps the run's artifacts there as it goes (`records.jsonl`, `manifest.json`, the result), so a
    crashed run resumes from them (`resume_request`); a folder holding another run is refused unless
    `overwrite`.
    """
    prepared = prepare(request, settings=settings)
    folder = _run_dir(prepared, run_dir, overwrite)
    return await execute(
        prepared, deadline=Deadline.after(deadline_s), on_progress=on_progress, run_dir=folder
    )


def run_sync(
    request: RunRequest | Mapping[str, Any],
    *,
    deadline_s: float | None = None,
    on_progress: ProgressCallback | None = None,
    settings: Settings | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> RunResult:
    """Blocking `run()`, in a fresh event loop (`run_dir`, `overwrite`: as for `run`).

    Inside a running loop (a Jupyter notebook, an async service) the run gets its own loop on a worker
    thread, so the call still blocks and returns the result instead of failing.
    """

    def _run_in_new_loop() -> RunResult:
        return asyncio.run(
            run(
                request,
                deadline_s=deadline_s,
                on_progress=on_progress,
                settings=settings,
                run_dir=run_dir,
                overwrite=overwrite,
            )
        )

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run_in_new_loop()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fair-runners") as pool:
        return pool.submit(_run_in_new_loop).result()


async def iter_sessions(
    request: RunRequest | Mapping[str, Any],
    *,
    deadline_s: float | None = None,
    on_progress: ProgressCallback | None = None,
    settings: Settings | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> AsyncIterator[tuple[Dataset, SessionSummary]]:
    """Yield each session's (dataset, summary) as soon as it finishes, in completion order.

    `on_progress`, when given, also receives every progress event (as with `run`); `run_dir` as for `run`.
    """
    prepared = prepare(request, settings=settings)
    folder = _run_dir(prepared, run_dir, overwrite)
    queue: asyncio.Queue[ProgressEvent | None] = asyncio.Queue()

    def _forward(event: ProgressEvent) -> None:
        queue.put_nowait(event)
        if on_progress is not None:
            on_progress(event)

    task = asyncio.create_task(
        execute(prepared, deadline=Deadline.after(deadline_s), on_progress=_forward, run_dir=folder)
    )
    task.add_done_callback(lambda _: queue.put_nowait(None))
    try:
        while (event := await queue.get()) is not None:
            if isinstance(event, SessionFinished):
                yield event.dataset, event.summary
        await task
    finally:
        if not task.done():  # the caller stopped iterating early: stop the run too
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
