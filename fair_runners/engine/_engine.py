"""The execution engine: sessions side by side, turns in order, retries, timeouts, the deadline, pacing.

Per attempt, in order: the response cache (a hit sends nothing and draws no budget), the auth circuit, a
concurrency slot (`AdaptiveLimiter`), the rate budget (`Pacer`: the last wait before sending), the attempt
under `min(turn_timeout_s, time to the deadline)`, then the outcome into the book (`_book`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .._errors import (
    AuthenticationFailed,
    BackendError,
    NotCached,
    PermanentBackendError,
    RateLimited,
    TurnTimeout,
    as_backend_error,
)
from .._progress import PaceReport, ProgressCallback, RunStarted, TurnRetrying
from .._redact import Redactor
from .._schemas import Batch, Dataset, RunTotals, SessionSummary
from ..pacing import Pacer, parse_rate_headers
from ..runners._base import Runner, TurnInput, TurnOutput
from ._book import Book, Session, Timing, summarise, totals
from ._limiter import AdaptiveLimiter, AuthCircuit
from ._timing import Deadline, backoff_delay

logger = logging.getLogger("fair_runners.engine")
_PACE_REPORT_S = 1.0


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


class Replay(Protocol):
    """The response cache as the engine uses it (`fair_runners.cache.TurnCache`)."""

    mode: str  # "use", "refresh" or "only"
    whole_sessions: bool  # a session is replayed only when every turn hits (Alquimia)

    async def lookup(self, turn: TurnInput, earlier: Sequence[TurnInput]) -> TurnOutput | None:
        """The recorded answer to this turn, sent after `earlier`; None on a miss."""
        ...

    async def store(self, turn: TurnInput, earlier: Sequence[TurnInput], output: TurnOutput) -> None:
        """Record an answer."""
        ...


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
        pacer: Pacer | None = None,
        cache: Replay | None = None,
    ) -> None:
        self.runner = runner
        self.options = options
        self.deadline = deadline or Deadline()
        self.redactor = redactor or Redactor()
        self._on_event = on_progress
        self._use_history = use_history and options.history
        self.limiter = AdaptiveLimiter(options.max_concurrency)
        self.circuit = AuthCircuit()
        self.pacer = pacer
        self.cache = cache
        self.deadline_hit = False
        self.book = Book(self._emit, self.redactor, options.skip_answered)
        self._last_report = 0.0
        if pacer is not None:
            runner.on_headers = self._on_headers

    def _emit(self, event: object) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(event)  # type: ignore[arg-type]
        except Exception:  # a broken progress callback must not break the run
            logger.exception("progress callback failed")

    async def run_sessions(self, datasets: list[Dataset], run_id: str = "") -> EngineOutcome:
        """Run every dataset; return when all are done or the deadline has passed."""
        sessions = [Session.of(i, d) for i, d in enumerate(datasets)]
        self._emit(RunStarted(run_id, self.runner.name, len(sessions), sum(len(s.batches) for s in sessions)))
        started = time.perf_counter()
        queue: asyncio.Queue[Session] = asyncio.Queue()
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
        for session in sessions:  # cut off at the deadline: reported all the same
            self.book.finish(session)
        results = [session.result or summarise(session) for session in sessions]
        summaries = [summary for _, summary in results]
        run_totals = totals(summaries, wall_ms)
        return EngineOutcome(
            datasets=[dataset for dataset, _ in results],
            summaries=summaries,
            totals=run_totals,
            complete=run_totals.skipped == 0 and not self.deadline_hit,
            min_concurrency=self.limiter.min_seen,
            notes=self.book.notes,
        )

    async def _worker(self, queue: asyncio.Queue[Session]) -> None:
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
                self.book.fail_rest(session, PermanentBackendError(f"internal error: {type(exc).__name__}"))
            finally:
                session.finished = time.perf_counter()
            self.book.finish(session)

    def _turn(self, session: Session, batch: Batch) -> TurnInput:
        return TurnInput(
            session_id=session.dataset.session_id,
            context=session.dataset.context,
            batch=batch,
            history=tuple(session.history) if self._use_history else (),
        )

    async def _run_session(self, session: Session) -> None:
        session.started = time.perf_counter()
        cache = self.cache
        if cache is not None and cache.whole_sessions and await self._replay_session(session, cache):
            return
        sent: list[TurnInput] = []
        for i, batch in enumerate(session.batches):
            if self.options.skip_answered and batch.has_answer():
                self.book.kept(session, i)
                session.history.append((batch.query, batch.assistant))
                sent.append(self._turn(session, batch))
                continue
            if self.deadline.expired:
                self.deadline_hit = True
                return  # this turn and the rest stay open -> skipped
            turn = self._turn(session, batch)
            await self._run_turn(session, i, turn, sent)
            sent.append(turn)
            if session.records[i] is None:
                return  # the deadline stopped the turn: the rest are skipped too

    async def _replay_session(self, session: Session, cache: Replay) -> bool:
        """A backend that keeps the conversation on its side (Alquimia) is replayed only as a whole: True
        when every turn hit (and was replayed); False to run the session live from its first turn."""
        if cache.mode == "refresh":
            return False
        turns = [self._turn(session, batch) for batch in session.batches]
        outputs = [await cache.lookup(turn, turns[:i]) for i, turn in enumerate(turns)]
        if all(output is not None for output in outputs):
            for i, output in enumerate(outputs):
                assert output is not None
                self.book.ok(session, i, output, Timing(), cached=True)
            return True
        if cache.mode == "only":
            missed = NotCached("not in the response cache (options.cache=only sends nothing)")
            self.book.fail_rest(session, missed)
            return True
        return False

    async def _run_turn(
        self, session: Session, index: int, turn: TurnInput, earlier: Sequence[TurnInput]
    ) -> None:
        cache = self.cache
        if cache is not None and not cache.whole_sessions and cache.mode != "refresh":
            hit = await cache.lookup(turn, earlier)
            if hit is not None:
                self.book.ok(session, index, hit, Timing(), cached=True)
                return
            if cache.mode == "only":
                missed = NotCached("not in the response cache (options.cache=only sends nothing)")
                self.book.error(session, index, missed, Timing())
                return
        tokens = self.runner.token_estimate(turn) if self.pacer is not None else 0
        attempts = 0
        retry_wait = queue_wait = 0.0
        timeout_s = self.options.turn_timeout_s
        while True:
            if self.circuit.open:
                refused = AuthenticationFailed(f"not sent: {self.circuit.reason}")
                self.book.error(
                    session, index, refused, Timing(attempts, None, retry_wait * 1000, queue_wait * 1000)
                )
                return
            if not await self._acquire():
                return  # the deadline came while waiting for a slot or a backend-wide pause
            if self.circuit.open:  # tripped while this turn waited for its slot
                self.limiter.release()
                continue
            waited = await self._pace(tokens)
            if waited is None:
                self.limiter.release()
                return  # the deadline came while waiting for the rate budget
            queue_wait += waited
            budget = min(timeout_s, self.deadline.remaining())
            if budget <= 0:
                self._done_sending()
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
                    self._done_sending()
                    self.deadline_hit = True
                    return  # cut by the deadline: skipped, re-postable
                error = TurnTimeout(f"no answer within turn_timeout_s={timeout_s:g}")
            except Exception as exc:
                error = as_backend_error(exc)
            except BaseException:
                self._done_sending()
                raise
            latency_ms = (time.perf_counter() - begin) * 1000
            attempts += 1
            if output is not None:
                self.limiter.on_success()
                if self.pacer is not None:
                    used = output.input_tokens + output.output_tokens
                    self.pacer.settle(tokens, used or None)
                self._done_sending()
                self.book.ok(
                    session, index, output, Timing(attempts, latency_ms, retry_wait * 1000, queue_wait * 1000)
                )
                if cache is not None:
                    await cache.store(turn, earlier, output)
                return
            assert error is not None
            if isinstance(error, RateLimited):
                session.rate_limited += 1
                self.limiter.on_rate_limited(error.retry_after)
                if self.pacer is not None:
                    self.pacer.on_rate_limited(error.retry_after)
            self._done_sending()
            if isinstance(error, AuthenticationFailed):
                self.circuit.trip(self.redactor.redact(error.message))
            if not error.retryable or attempts >= self.options.max_attempts:
                self.book.error(
                    session, index, error, Timing(attempts, latency_ms, retry_wait * 1000, queue_wait * 1000)
                )
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
                self.book.error(
                    session, index, error, Timing(attempts, latency_ms, retry_wait * 1000, queue_wait * 1000)
                )
                return
            self._emit(
                TurnRetrying(session.dataset.session_id, turn.batch.qa_id, attempts, error.error_type, delay)
            )
            await asyncio.sleep(delay)
            retry_wait += delay

    def _done_sending(self) -> None:
        """An attempt is over: its slot and its place in the pacer's in-flight count are free."""
        self.limiter.release()
        if self.pacer is not None:
            self.pacer.release()
            self._report_pace()

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

    async def _pace(self, tokens: int) -> float | None:
        """Wait for the rate budget (no later than the deadline); the seconds waited, None at the deadline."""
        if self.pacer is None:
            return 0.0
        remaining = self.deadline.remaining()
        try:
            async with asyncio.timeout(None if remaining == float("inf") else remaining):
                return await self.pacer.acquire(tokens)
        except TimeoutError:
            self.deadline_hit = True  # nothing was counted as sent: nothing to release
            return None

    def _on_headers(self, headers: Mapping[str, str]) -> None:
        """A response's headers (the runner calls this for every response): the provider's limits."""
        signals = parse_rate_headers(headers)
        if signals is not None and self.pacer is not None:
            self.pacer.observe(signals)

    def _report_pace(self) -> None:
        now = time.monotonic()
        if self.pacer is None or now - self._last_report < _PACE_REPORT_S:
            return
        self._last_report = now
        snap = self.pacer.snapshot()
        self._emit(
            PaceReport(
                requests_per_minute=round(snap.requests_per_minute, 1),
                tokens_per_minute=round(snap.tokens_per_minute, 1),
                backing_off=snap.backing_off,
                pace_requests_per_minute=snap.pace_requests_per_minute,
                pace_tokens_per_minute=snap.pace_tokens_per_minute,
                rate_limited=snap.rate_limited,
            )
        )
