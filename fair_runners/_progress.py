"""Running counts of a run, fed by its progress events.

The engine emits events (`RunStarted`, `TurnFinished`, `TurnRetrying`, `SessionFinished`, `RunFinished`);
`RunProgress.update` folds them into counts, elapsed time and an ETA, so a progress bar, a log line and a
metric all read the same numbers:

    progress = RunProgress()
    result = run_sync(request, on_event=progress.update)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ._events import Event, RunFinished, RunStarted, SessionFinished, TurnFinished, TurnRetrying


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
    finished: bool = False
    complete: bool | None = None
    started_at: float | None = None
    finished_at: float | None = None

    def update(self, event: Event) -> None:
        """Fold one event into the counts (usable directly as an `on_event` callback)."""
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
        elif isinstance(event, TurnRetrying):
            self.retries += 1
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
        sent = self.turns_done - self.kept
        if sent <= 0 or self.started_at is None:
            return None
        left = self.turns - self.turns_done
        return left * self.elapsed_s / sent

    @property
    def all_answered(self) -> bool:
        """True when the run is over and every turn has an answer (`ok` or `kept`)."""
        return self.finished and self.ok + self.kept == self.turns
