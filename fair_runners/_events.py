"""Progress events: one source for the CLI's progress display, logs and metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from ._schemas import Dataset, RunTotals, SessionSummary, TurnRecord


@dataclass(frozen=True)
class RunStarted:
    """The run is about to send its first turn."""

    run_id: str
    mode: str
    sessions: int
    turns: int


@dataclass(frozen=True)
class TurnFinished:
    """One turn is done (ok, error, kept or skipped)."""

    session_id: str
    record: TurnRecord


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


Event = Union[RunStarted, TurnFinished, TurnRetrying, SessionFinished, RunFinished]  # noqa: UP007
EventCallback = Callable[[Event], None]
