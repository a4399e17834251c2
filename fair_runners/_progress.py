"""Progress events of a run, and `RunProgress`, the running counts folded from them.

The engine emits progress events (`RunStarted`, `TurnFinished`, `TurnRetrying`, `SessionFinished`,
`RunFinished`) to the `on_progress` callback; they are the one source the CLI's progress display, the
Lambda's metrics and your own logs draw from. (Lambda *events* are something else: what triggers the
function, see `fair_runners.edge`.) `RunProgress.update` folds them into counts, elapsed time and an ETA:

    progress = RunProgress()
    result = run_sync(request, on_progress=progress.update)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from ._schemas import Batch, Dataset, RunTotals, SessionSummary, TurnRecord


@dataclass(frozen=True)
class RunStarted:
    """The run is about to send its first turn."""

    run_id: str
    mode: str
    sessions: int
    turns: int


@dataclass(frozen=True)
class TurnFinished:
    """One turn is done (ok, error or kept): its record, the turn as it now reads (`assistant` filled in) and
    its position in the session."""

    session_id: str
    record: TurnRecord
    turn: Batch | None = None
    index: int = -1


@dataclass(frozen=True)
class PaceReport:
    """How fast the run sends, against what it paces to (at most one a second, while pacing is on)."""

    requests_per_minute: float
    tokens_per_minute: float
    backing_off: bool
    pace_requests_per_minute: float | None
    pace_tokens_per_minute: float | None
    rate_limited: int


@dataclass(frozen=True)
class TurnRetrying:
    """An attempt failed with a transient error and will be retried after `delay_s`."""

    session_id: str
    qa_id: str
    attempt: int
    error_type: str
    delay_s: float


@dataclass(frozen=True)
class SessionFinished:
    """A session is done: its dataset (answers filled in) and its summary."""

    index: int
    dataset: Dataset
    summary: SessionSummary


@dataclass(frozen=True)
class RunFinished:
    """The run is over."""

    run_id: str
    complete: bool
    totals: RunTotals


ProgressEvent = Union[  # noqa: UP007
    RunStarted, TurnFinished, TurnRetrying, PaceReport, SessionFinished, RunFinished
]
ProgressCallback = Callable[[ProgressEvent], None]


@dataclass
class RunProgress:
    """Counts so far. `turns_done` includes turns skipped at the deadline (they are over, too)."""

    run_id: str = ""
    mode: str = ""
    sessions: int = 0
    turns: int = 0
    sessions_done: int = 0
    turns_done: int = 0
    ok: int = 0
    failed: int = 0
    kept: int = 0
    skipped: int = 0
    retries: int = 0
    cache_hits: int = 0
    finished: bool = False
    complete: bool | None = None
    started_at: float | None = None
    finished_at: float | None = None
    # The latest pace report (None until the run paces): requests and tokens per minute, backing off.
    pace: PaceReport | None = None

    def update(self, event: ProgressEvent) -> None:
        """Fold one progress event into the counts (usable directly as the `on_progress` callback)."""
        if isinstance(event, RunStarted):
            self.run_id, self.mode = event.run_id, event.mode
            self.sessions, self.turns = event.sessions, event.turns
            self.started_at = time.monotonic()
        elif isinstance(event, TurnFinished):
            self.turns_done += 1
            status = event.record.status
            if status == "ok":
                self.ok += 1
            elif status == "error":
                self.failed += 1
            elif status == "kept":
                self.kept += 1
            if event.record.cached:
                self.cache_hits += 1
        elif isinstance(event, TurnRetrying):
            self.retries += 1
        elif isinstance(event, PaceReport):
            self.pace = event
        elif isinstance(event, SessionFinished):
            self.sessions_done += 1
            # Turns the deadline cut off get no `TurnFinished`: the session summary counts them.
            self.skipped += event.summary.skipped
            self.turns_done += event.summary.skipped
        elif isinstance(event, RunFinished):
            self.finished, self.complete = True, event.complete
            self.finished_at = time.monotonic()

    @property
    def elapsed_s(self) -> float:
        """Seconds since the run started (frozen once it finished)."""
        if self.started_at is None:
            return 0.0
        return (self.finished_at or time.monotonic()) - self.started_at

    @property
    def eta_s(self) -> float | None:
        """Estimated seconds left at the average pace so far (None until a turn is done)."""
        if self.finished:
            return 0.0
        sent = self.turns_done - self.kept - self.cache_hits
        if sent <= 0 or self.started_at is None:
            return None
        left = self.turns - self.turns_done
        return left * self.elapsed_s / sent

    @property
    def all_answered(self) -> bool:
        """True when the run is over and every turn has an answer (`ok` or `kept`)."""
        return self.finished and self.ok + self.kept == self.turns
