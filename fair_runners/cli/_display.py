"""Progress and summaries on the terminal, drawn by rich from the library's progress events.

On a terminal: a live progress bar (turns done, sessions, failures, retries, elapsed, ETA) with failures
and retries printed above it. Elsewhere (a pipe, a CI log): one plain line per event worth reading.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Literal

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from .._progress import (
    PaceReport,
    ProgressEvent,
    RunFinished,
    RunProgress,
    RunStarted,
    SessionFinished,
    TurnFinished,
    TurnRetrying,
)
from .._schemas import RunResult, SessionSummary

DisplayMode = Literal["live", "plain", "off"]
MAX_ROWS = 40


def stderr_console() -> Console:
    """The console progress and summaries go to (stdout stays free for results)."""
    return Console(stderr=True, highlight=False, soft_wrap=True)


def pick_mode(console: Console, quiet: bool) -> DisplayMode:
    """`live` on a terminal, `plain` otherwise, `off` when quiet."""
    if quiet:
        return "off"
    return "live" if console.is_terminal and not console.is_dumb_terminal else "plain"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _secs(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f} s"


class ProgressDisplay:
    """Feeds `RunProgress` and draws it; use as a context manager, pass `on_progress` to the run."""

    def __init__(self, console: Console, mode: DisplayMode) -> None:
        self.console = console
        self.mode = mode
        self.state = RunProgress()
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._backing_off = False

    def __enter__(self) -> ProgressDisplay:
        if self.mode == "live":
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("turns · {task.fields[sessions]} sessions"),
                TextColumn("· [green]{task.fields[ok]} ok[/] · [red]{task.fields[failed]} failed[/]"),
                TextColumn("· [yellow]{task.fields[retries]} retries[/]{task.fields[pace]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def on_progress(self, event: ProgressEvent) -> None:
        """The `on_progress` callback of the run."""
        self.state.update(event)
        if self.mode == "off":
            return
        line = self._line(event)
        if self._progress is not None:
            if line and not isinstance(event, SessionFinished | RunStarted | RunFinished):
                self._progress.console.print(line)
            self._refresh()
        elif line:
            self.console.print(line)

    def _refresh(self) -> None:
        assert self._progress is not None
        s = self.state
        fields: dict[str, Any] = {
            "sessions": f"{s.sessions_done}/{s.sessions}",
            "ok": s.ok + s.kept,
            "failed": s.failed,
            "retries": s.retries,
            "pace": _pace(s),
        }
        if self._task is None:
            self._task = self._progress.add_task(
                f"run {escape(s.run_id[:8])}", total=s.turns or None, **fields
            )
        self._progress.update(self._task, completed=s.turns_done, **fields)

    def _line(self, event: ProgressEvent) -> str | None:
        s = self.state
        if isinstance(event, PaceReport):
            changed = event.backing_off != self._backing_off
            self._backing_off = event.backing_off
            if not changed:
                return None
            state = "[yellow]backing off[/] (the provider said 429)" if event.backing_off else "back to pace"
            return f"pace: {state}; {event.requests_per_minute:,.0f} requests/min sent"
        if isinstance(event, RunStarted):
            return (
                f"run {escape(event.run_id)} ({event.mode}): {event.sessions} sessions, {event.turns} turns"
            )
        if isinstance(event, TurnRetrying):
            return (
                f"[yellow]retry[/]  {escape(event.session_id)} / {escape(event.qa_id)}: "
                f"attempt {event.attempt} failed "
                f"({event.error_type}), retrying in {event.delay_s:.2f} s"
            )
        if isinstance(event, TurnFinished) and event.record.status == "error":
            record = event.record
            return (
                f"[red]failed[/] {escape(event.session_id)} / {escape(record.qa_id)}: {record.error_type} "
                f"after {record.attempts} attempt{'s' if record.attempts != 1 else ''}"
            )
        if isinstance(event, SessionFinished):
            summary = event.summary
            return (
                f"session {escape(summary.session_id)} done: {summary.successes} ok, "
                f"{summary.failures} failed, {summary.skipped} skipped "
                f"in {summary.total_execution_time_ms:,.0f} ms "
                f"({s.sessions_done}/{s.sessions} sessions, {s.turns_done}/{s.turns} turns, "
                f"elapsed {_secs(s.elapsed_s)}, ETA {_secs(s.eta_s)})"
            )
        if isinstance(event, RunFinished):
            totals = event.totals
            answered = totals.successes
            state = "complete" if event.complete else "stopped at the deadline"
            return (
                f"run finished ({state}): {answered}/{totals.turns} turns answered, "
                f"{totals.failures} failed, {totals.skipped} skipped, {totals.retries} retries "
                f"in {totals.wall_time_ms / 1000:.2f} s"
            )
        return None


def summary_table(summaries: list[SessionSummary], title: str | None = None) -> Table:
    """One row per session (the first `MAX_ROWS`), plus a totals row."""
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", show_footer=len(summaries) > 1)
    shown = summaries[:MAX_ROWS]
    totals = {
        "turns": sum(s.total_batches for s in summaries),
        "ok": sum(s.successes for s in summaries),
        "err": sum(s.failures for s in summaries),
        "skip": sum(s.skipped for s in summaries),
        "retries": sum(s.retries for s in summaries),
    }
    more = (
        f"total ({len(summaries)})" if len(summaries) == len(shown) else f"+{len(summaries) - MAX_ROWS} more"
    )
    table.add_column("session", footer=more, no_wrap=True, overflow="ellipsis")
    table.add_column("turns", justify="right", footer=str(totals["turns"]))
    table.add_column("ok", justify="right", style="green", footer=str(totals["ok"]))
    table.add_column("err", justify="right", style="red", footer=str(totals["err"]))
    table.add_column("skip", justify="right", style="yellow", footer=str(totals["skip"]))
    table.add_column("retry", justify="right", footer=str(totals["retries"]))
    table.add_column("p50 ms", justify="right")
    table.add_column("p95 ms", justify="right")
    table.add_column("wall ms", justify="right")
    for s in shown:
        table.add_row(
            Text(s.session_id),
            str(s.total_batches),
            str(s.successes),
            str(s.failures),
            str(s.skipped),
            str(s.retries),
            _ms(s.p50_batch_time_ms),
            _ms(s.p95_batch_time_ms),
            _ms(s.total_execution_time_ms),
        )
    return table


def print_result(console: Console, result: RunResult, title: str | None = None) -> None:
    """The summary table, the first failed turns with their messages, and the warnings."""
    console.print(summary_table(result.summaries, title))
    failures = [
        (d.session_id, b.qa_id, b.assistant)
        for d, s in zip(result.datasets, result.summaries, strict=True)
        for b, r in zip(d.conversation, s.turns, strict=True)
        if r.status == "error"
    ]
    for session_id, qa_id, answer in failures[:5]:
        console.print(
            f"[red]failed[/] {escape(session_id)} / {escape(qa_id)}: {escape(answer)}", overflow="fold"
        )
    if len(failures) > 5:
        console.print(f"... and {len(failures) - 5} more failed turns (see the output)")
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}")


def _pace(state: RunProgress) -> str:
    """` · 1,180 req/min · 52,000 tok/min · backing off` while the run paces, else nothing."""
    pace = state.pace
    if pace is None:
        return ""
    text = f" · {pace.requests_per_minute:,.0f} req/min"
    if pace.tokens_per_minute:
        text += f" · {pace.tokens_per_minute:,.0f} tok/min"
    if state.cache_hits:
        text += f" · {state.cache_hits} cached"
    return text + (" · [yellow]backing off[/]" if pace.backing_off else "")
