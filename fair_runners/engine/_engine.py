"""The execution engine: sessions side by side, turns in order, retries, timeouts, the deadline, summaries.

Every input turn gets exactly one outcome: `ok` (answered), `error` (failed after its attempts), `kept`
(`skip_answered` and it already had an answer) or `skipped` (the deadline came first). Outcomes are written
into slots allocated up front, so a session that crashes or is cancelled at the deadline loses nothing that
was already done.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from .._errors import (
    AuthenticationFailed,
    BackendError,
    PermanentBackendError,
    RateLimited,
    TurnTimeout,
    as_backend_error,
)
from .._progress import (
    ProgressCallback,
    RunStarted,
    SessionFinished,
    TurnFinished,
    TurnRetrying,
)
from .._redact import Redactor
from .._schemas import ERROR_PREFIX, Batch, Dataset, RunTotals, SessionSummary, TurnRecord
from .._text import to_text
from ..runners._base import Runner, TurnInput, TurnOutput
from ._limiter import AdaptiveLimiter, AuthCircuit
from ._timing import Deadline, backoff_delay, percentile

_ERROR_NOTE = "Error: "

logger = logging.getLogger("fair_runners.engine")


@dataclass(frozen=True)
class EngineOptions:
    """Resolved execution options (request options merged with deployment defaults)."""

    max_concurrency: int = 16
    turn_timeout_s: float = 60.0
    max_attempts: int = 3
    history: bool = True
    skip_answered: bool = False
    backoff_base_s: float = 0.5
    backoff_max_s: float = 20.0


@dataclass
class EngineOutcome:
    """What the engine hands back: datasets in input order, their summaries, run totals."""

    datasets: list[Dataset]
    summaries: list[SessionSummary]
    totals: RunTotals
    complete: bool
    min_concurrency: int
    # "session s1, turn q3: 2 malformed stream event(s) skipped" and the like, in the order they came.
    notes: list[str] = field(default_factory=list)


@dataclass
class _Session:
    index: int
    dataset: Dataset
    batches: list[Batch]
    records: list[TurnRecord | None]
    started: float | None = None
    finished: float | None = None
    history: list[tuple[str, str]] = field(default_factory=list)
    result: tuple[Dataset, SessionSummary] | None = None


class Engine:
    """Runs datasets through one runner."""

    def __init__(
        self,
        runner: Runner,
        options: EngineOptions,
        *,
        deadline: Deadline | None = None,
        redactor: Redactor | None = None,
        on_progress: ProgressCallback | None = None,
        use_history: bool = False,
    ) -> None:
        self.runner = runner
        self.options = options
        self.deadline = deadline or Deadline()
        self.redactor = redactor or Redactor()
        self._on_event = on_progress
        self._use_history = use_history and options.history
        self.limiter = AdaptiveLimiter(options.max_concurrency)
        self.circuit = AuthCircuit()
        self.deadline_hit = False
        self._finished: set[int] = set()
        self._notes: list[str] = []

    def _emit(self, event: object) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(event)  # type: ignore[arg-type]
        except Exception:  # a broken progress callback must not break the run
            logger.exception("progress callback failed")

    async def run_sessions(self, datasets: list[Dataset], run_id: str = "") -> EngineOutcome:
        """Run every dataset; return when all are done or the deadline has passed."""
        sessions = [
            _Session(i, d, list(d.conversation), [None] * len(d.conversation)) for i, d in enumerate(datasets)
        ]
        self._emit(RunStarted(run_id, self.runner.name, len(sessions), sum(len(s.batches) for s in sessions)))
        started = time.perf_counter()
        queue: asyncio.Queue[_Session] = asyncio.Queue()
        for session in sessions:
            queue.put_nowait(session)
        workers = [
            asyncio.create_task(self._worker(queue))
            for _ in range(min(self.options.max_concurrency, len(sessions)))
        ]
        try:
            if workers:
                remaining = self.deadline.remaining()
                # Attempts stop themselves at the deadline; this guard only catches a runner that ignores
                # cancellation for too long.
                timeout = None if remaining == float("inf") else remaining + 1.0
                _, pending = await asyncio.wait(workers, timeout=timeout)
                if pending:
                    self.deadline_hit = True
        finally:
            # Also when this run is cancelled: no session may outlive it (and call back, or use a closed
            # runner).
            pending = {task for task in workers if not task.done()}
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        wall_ms = (time.perf_counter() - started) * 1000
        for session in sessions:
            if session.index not in self._finished:  # cut off at the deadline: report it all the same
                self._finish_session(session)
        return self._outcome(sessions, wall_ms)

    async def _worker(self, queue: asyncio.Queue[_Session]) -> None:
        while True:
            try:
                session = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                await self._run_session(session)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug in one session stays in that session
                logger.exception("session %s crashed", session.dataset.session_id)
                self._fail_rest(session, PermanentBackendError(f"internal error: {type(exc).__name__}"))
            finally:
                session.finished = time.perf_counter()
            self._finish_session(session)

    def _fail_rest(self, session: _Session, error: BackendError) -> None:
        for i, record in enumerate(session.records):
            if record is None:
                self._set_error(session, i, error, attempts=0, latency_ms=None, retry_wait_ms=0.0)

    async def _run_session(self, session: _Session) -> None:
        session.started = time.perf_counter()
        for i, batch in enumerate(session.batches):
            if self.options.skip_answered and batch.has_answer():
                self._set_kept(session, i)
                session.history.append((batch.query, batch.assistant))
                continue
            if self.deadline.expired:
                self.deadline_hit = True
                return  # this turn and the rest stay None -> skipped
            await self._run_turn(session, i, batch)
            if session.records[i] is None:
                return  # the deadline stopped the turn: the rest are skipped too

    async def _run_turn(self, session: _Session, index: int, batch: Batch) -> None:
        turn = TurnInput(
            session_id=session.dataset.session_id,
            context=session.dataset.context,
            batch=batch,
            history=tuple(session.history) if self._use_history else (),
        )
        attempts = 0
        retry_wait = 0.0
        timeout_s = self.options.turn_timeout_s
        while True:
            if self.circuit.open:
                refused = AuthenticationFailed(f"not sent: {self.circuit.reason}")
                self._set_error(session, index, refused, attempts, None, retry_wait * 1000)
                return
            if not await self._acquire():
                return  # the deadline came while waiting for a slot or a backend-wide pause
            if self.circuit.open:  # tripped while this turn waited for its slot
                self.limiter.release()
                continue
            budget = min(timeout_s, self.deadline.remaining())
            if budget <= 0:
                self.limiter.release()
                self.deadline_hit = True
                return
            begin = time.perf_counter()
            output: TurnOutput | None = None
            error: BackendError | None = None
            try:
                async with asyncio.timeout(budget):
                    output = await self.runner.run_turn(turn)
            except TimeoutError:
                if budget < timeout_s and self.deadline.expired:
                    self.deadline_hit = True
                    return  # cut by the deadline: skipped, re-postable
                error = TurnTimeout(f"no answer within turn_timeout_s={timeout_s:g}")
            except Exception as exc:
                error = as_backend_error(exc)
            finally:
                self.limiter.release()
            latency_ms = (time.perf_counter() - begin) * 1000
            attempts += 1
            if output is not None:
                self.limiter.on_success()
                self._set_ok(session, index, output, attempts, latency_ms, retry_wait * 1000)
                return
            assert error is not None
            if isinstance(error, RateLimited):
                self.limiter.on_rate_limited(error.retry_after)
            if isinstance(error, AuthenticationFailed):
                self.circuit.trip(self.redactor.redact(error.message))
            if not error.retryable or attempts >= self.options.max_attempts:
                self._set_error(session, index, error, attempts, latency_ms, retry_wait * 1000)
                return
            delay = backoff_delay(
                attempts,
                self.options.backoff_base_s,
                self.options.backoff_max_s,
                getattr(error, "retry_after", None),
            )
            if delay >= self.deadline.remaining():
                self.deadline_hit = True
                error.message += " (no time left to retry before the deadline)"
                self._set_error(session, index, error, attempts, latency_ms, retry_wait * 1000)
                return
            self._emit(
                TurnRetrying(session.dataset.session_id, batch.qa_id, attempts, error.error_type, delay)
            )
            await asyncio.sleep(delay)
            retry_wait += delay

    async def _acquire(self) -> bool:
        """Take a limiter slot, waiting no later than the deadline; False when the deadline came first."""
        remaining = self.deadline.remaining()
        if remaining == float("inf"):
            await self.limiter.acquire()
            return True
        try:
            async with asyncio.timeout(remaining):
                await self.limiter.acquire()
        except TimeoutError:
            self.deadline_hit = True
            return False
        return True

    def _set_ok(
        self,
        session: _Session,
        index: int,
        output: TurnOutput,
        attempts: int,
        latency_ms: float,
        retry_wait_ms: float,
    ) -> None:
        batch = session.batches[index]
        for note in output.notes:
            self._notes.append(
                self.redactor.redact(f"session {session.dataset.session_id}, turn {batch.qa_id}: {note}")
            )
        content = to_text(output.content)  # a backend's broken UTF-16 must not make the result unwritable
        session.batches[index] = batch.model_copy(
            update={"assistant": content, "observation": _without_our_error(batch)}
        )
        session.history.append((batch.query, content))
        record = TurnRecord(
            qa_id=batch.qa_id,
            status="ok",
            latency_ms=round(latency_ms, 3),
            attempts=attempts,
            retry_wait_ms=round(retry_wait_ms, 3),
            input_tokens=output.input_tokens,
            output_tokens=output.output_tokens,
        )
        session.records[index] = record
        self._emit(TurnFinished(session.dataset.session_id, record))

    def _set_error(
        self,
        session: _Session,
        index: int,
        error: BackendError,
        attempts: int,
        latency_ms: float | None,
        retry_wait_ms: float,
    ) -> None:
        batch = session.batches[index]
        message = self.redactor.redact(to_text(error.message))
        earlier = _without_our_error(batch)
        observation = f"{earlier}\n{_ERROR_NOTE}{message}" if earlier else f"{_ERROR_NOTE}{message}"
        session.batches[index] = batch.model_copy(
            update={"assistant": f"{ERROR_PREFIX}{message}", "observation": observation}
        )
        record = TurnRecord(
            qa_id=batch.qa_id,
            status="error",
            latency_ms=None if latency_ms is None else round(latency_ms, 3),
            attempts=attempts,
            retry_wait_ms=round(retry_wait_ms, 3),
            error_type=error.error_type,
        )
        session.records[index] = record
        self._emit(TurnFinished(session.dataset.session_id, record))

    def _set_kept(self, session: _Session, index: int) -> None:
        record = TurnRecord(qa_id=session.batches[index].qa_id, status="kept")
        session.records[index] = record
        self._emit(TurnFinished(session.dataset.session_id, record))

    def _finish_session(self, session: _Session) -> None:
        self._finished.add(session.index)
        if self.options.skip_answered:  # answered turns after a deadline cut are kept, not skipped
            for i, batch in enumerate(session.batches):
                if session.records[i] is None and batch.has_answer():
                    self._set_kept(session, i)
        session.result = _summarise(session)
        self._emit(SessionFinished(session.index, *session.result))

    def _outcome(self, sessions: list[_Session], wall_ms: float) -> EngineOutcome:
        datasets: list[Dataset] = []
        summaries: list[SessionSummary] = []
        for session in sessions:
            dataset, summary = session.result or _summarise(session)
            datasets.append(dataset)
            summaries.append(summary)
        skipped = sum(s.skipped for s in summaries)
        totals = RunTotals(
            sessions=len(summaries),
            turns=sum(s.total_batches for s in summaries),
            successes=sum(s.successes for s in summaries),
            failures=sum(s.failures for s in summaries),
            skipped=skipped,
            retries=sum(s.retries for s in summaries),
            input_tokens=sum(s.input_tokens for s in summaries),
            output_tokens=sum(s.output_tokens for s in summaries),
            wall_time_ms=round(wall_ms, 3),
        )
        return EngineOutcome(
            datasets=datasets,
            summaries=summaries,
            totals=totals,
            complete=skipped == 0 and not self.deadline_hit,
            min_concurrency=self.limiter.min_seen,
            notes=self._notes,
        )


def _without_our_error(batch: Batch) -> str | None:
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


def _summarise(session: _Session) -> tuple[Dataset, SessionSummary]:
    records = [
        record or TurnRecord(qa_id=batch.qa_id, status="skipped")
        for record, batch in zip(session.records, session.batches, strict=True)
    ]
    latencies = [r.latency_ms for r in records if r.latency_ms is not None and r.status in ("ok", "error")]
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
        turns=records,
    )
    dataset = session.dataset.model_copy(update={"conversation": list(session.batches)})
    return dataset, summary
