"""The engine's book: each session's turns and their outcomes, the progress events they make, the summaries.

Every input turn gets exactly one outcome, written into a slot allocated up front, so a session that crashes
or is cut at the deadline loses nothing that was already done: `ok` (answered, maybe replayed from the
cache), `error` (failed after its attempts), `kept` (`skip_answered` and it already had an answer) or
`skipped` (the deadline came first: the slot stayed empty).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._errors import BackendError
from .._progress import SessionFinished, TurnFinished
from .._redact import Redactor
from .._schemas import ERROR_PREFIX, Batch, Dataset, RunTotals, SessionSummary, TurnRecord
from .._text import to_text
from ..runners._base import TurnOutput
from ._timing import percentile

_ERROR_NOTE = "Error: "


@dataclass
class Session:
    """One dataset being run: its turns as they are now, their outcomes, its history for the model."""

    index: int
    dataset: Dataset
    batches: list[Batch]
    records: list[TurnRecord | None]
    started: float | None = None
    finished: float | None = None
    history: list[tuple[str, str]] = field(default_factory=list)
    result: tuple[Dataset, SessionSummary] | None = None
    rate_limited: int = 0  # attempts answered 429 / throttled

    @classmethod
    def of(cls, index: int, dataset: Dataset) -> Session:
        """A session with every outcome still open."""
        return cls(index, dataset, list(dataset.conversation), [None] * len(dataset.conversation))


@dataclass(frozen=True)
class Timing:
    """How one turn's attempts went."""

    attempts: int = 0
    latency_ms: float | None = None
    retry_wait_ms: float = 0.0
    queue_wait_ms: float = 0.0

    def record_fields(self) -> dict[str, Any]:
        """The `TurnRecord` fields these give, rounded to the microsecond."""
        return {
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 3),
            "attempts": self.attempts,
            "retry_wait_ms": round(self.retry_wait_ms, 3),
            "queue_wait_ms": round(self.queue_wait_ms, 3),
        }


class Book:
    """Writes outcomes into sessions and reports each as a progress event."""

    def __init__(self, emit: Callable[[object], None], redactor: Redactor, skip_answered: bool) -> None:
        self._emit = emit
        self._redactor = redactor
        self._skip_answered = skip_answered
        self._finished: set[int] = set()
        self.notes: list[str] = []

    def ok(
        self, session: Session, index: int, output: TurnOutput, timing: Timing, *, cached: bool = False
    ) -> None:
        """The turn was answered (by the backend, or replayed from the cache)."""
        batch = session.batches[index]
        for note in output.notes:
            self.notes.append(
                self._redactor.redact(f"session {session.dataset.session_id}, turn {batch.qa_id}: {note}")
            )
        content = to_text(output.content)  # a backend's broken UTF-16 must not make the result unwritable
        session.batches[index] = batch.model_copy(
            update={"assistant": content, "observation": without_our_error(batch)}
        )
        session.history.append((batch.query, content))
        self._record(
            session,
            index,
            TurnRecord(
                qa_id=batch.qa_id,
                status="ok",
                **timing.record_fields(),
                input_tokens=output.input_tokens,
                output_tokens=output.output_tokens,
                cached=cached,
            ),
        )

    def error(self, session: Session, index: int, error: BackendError, timing: Timing) -> None:
        """The turn failed: its answer becomes `[ERROR] <message>` and its observation carries one note."""
        batch = session.batches[index]
        message = self._redactor.redact(to_text(error.message))  # after every suffix was added
        earlier = without_our_error(batch)
        observation = f"{earlier}\n{_ERROR_NOTE}{message}" if earlier else f"{_ERROR_NOTE}{message}"
        session.batches[index] = batch.model_copy(
            update={"assistant": f"{ERROR_PREFIX}{message}", "observation": observation}
        )
        self._record(
            session,
            index,
            TurnRecord(
                qa_id=batch.qa_id,
                status="error",
                **timing.record_fields(),
                error_type=error.error_type,
            ),
        )

    def kept(self, session: Session, index: int) -> None:
        """`skip_answered`: the turn already had a real answer."""
        self._record(session, index, TurnRecord(qa_id=session.batches[index].qa_id, status="kept"))

    def fail_rest(self, session: Session, error: BackendError) -> None:
        """Every turn still open fails with `error` (a crashed session)."""
        for i, record in enumerate(session.records):
            if record is None:
                self.error(session, i, error, Timing())

    def _record(self, session: Session, index: int, record: TurnRecord) -> None:
        session.records[index] = record
        self._emit(TurnFinished(session.dataset.session_id, record, session.batches[index], index))

    def finish(self, session: Session) -> None:
        """Close a session (once): summarise it and report it."""
        if session.index in self._finished:
            return
        self._finished.add(session.index)
        if self._skip_answered:  # answered turns after a deadline cut are kept, not skipped
            for i, batch in enumerate(session.batches):
                if session.records[i] is None and batch.has_answer():
                    self.kept(session, i)
        session.result = summarise(session)
        self._emit(SessionFinished(session.index, *session.result))


def without_our_error(batch: Batch) -> str | None:
    """The turn's `observation` without the error note an earlier run of this turn appended to it.

    A re-posted `[ERROR] msg` turn carries `observation` ending in `Error: msg` (our note): a new answer or
    a new error replaces that note rather than piling up beside it. The caller's own text is kept as sent.
    """
    observation = batch.observation
    if not observation or not batch.assistant.startswith(ERROR_PREFIX):
        return observation
    note = _ERROR_NOTE + batch.assistant[len(ERROR_PREFIX) :]
    if observation == note:
        return None
    if observation.endswith("\n" + note):
        return observation[: -len(note) - 1]
    return observation


def summarise(session: Session) -> tuple[Dataset, SessionSummary]:
    """The session's dataset (answers filled in) and its summary; open turns count as skipped."""
    records = [
        record or TurnRecord(qa_id=batch.qa_id, status="skipped")
        for record, batch in zip(session.records, session.batches, strict=True)
    ]
    # Replayed answers are left out of the latency figures: they were not a request's.
    latencies = [
        r.latency_ms
        for r in records
        if r.latency_ms is not None and r.status in ("ok", "error") and not r.cached
    ]
    wall = 0.0
    if session.started is not None:
        wall = ((session.finished or time.perf_counter()) - session.started) * 1000
    summary = SessionSummary(
        session_id=session.dataset.session_id,
        total_batches=len(records),
        successes=sum(r.status in ("ok", "kept") for r in records),
        failures=sum(r.status == "error" for r in records),
        skipped=sum(r.status == "skipped" for r in records),
        total_execution_time_ms=round(wall, 3),
        avg_batch_time_ms=round(sum(latencies) / len(latencies), 3) if latencies else 0.0,
        p50_batch_time_ms=round(percentile(latencies, 50), 3),
        p95_batch_time_ms=round(percentile(latencies, 95), 3),
        max_batch_time_ms=round(max(latencies), 3) if latencies else 0.0,
        retries=sum(max(0, r.attempts - 1) for r in records),
        input_tokens=sum(r.input_tokens for r in records),
        output_tokens=sum(r.output_tokens for r in records),
        rate_limited_responses=session.rate_limited,
        cache_hits=sum(r.cached for r in records),
        turns=records,
    )
    dataset = session.dataset.model_copy(update={"conversation": list(session.batches)})
    return dataset, summary


def totals(summaries: list[SessionSummary], wall_ms: float) -> RunTotals:
    """Run-level sums of the session summaries."""
    return RunTotals(
        sessions=len(summaries),
        turns=sum(s.total_batches for s in summaries),
        successes=sum(s.successes for s in summaries),
        failures=sum(s.failures for s in summaries),
        skipped=sum(s.skipped for s in summaries),
        retries=sum(s.retries for s in summaries),
        input_tokens=sum(s.input_tokens for s in summaries),
        output_tokens=sum(s.output_tokens for s in summaries),
        wall_time_ms=round(wall_ms, 3),
        rate_limited_responses=sum(s.rate_limited_responses for s in summaries),
        cache_hits=sum(s.cache_hits for s in summaries),
    )
