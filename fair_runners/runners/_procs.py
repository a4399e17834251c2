"""Run a CPU-heavy runner's turns in forked worker processes, so one invocation uses every vCPU it has.

The engine (order, retries, the deadline, accounting) stays in the parent; only `run_turn` crosses over.
Frames are length-prefixed pickles over a socketpair driven by asyncio on both ends, so neither side ever
blocks on a full pipe. A cancelled turn (timeout, deadline) is cancelled in the worker too; a worker that dies
fails its in-flight turns as transient, and the engine retries them on the others.

The workers are forked once, before they open any connection, and kept for the next run, as a warm Lambda
keeps its module state: a later run skips the fork and the forked memory's first-touch page faults, and
when its runner is the same (same class and params), the runner's construction and its open connections
too. Each run sends its runner to the workers, which reopen it only when it differs; at the end of a run
each worker cancels what is left and confirms, so the next run starts on a clean stream. A worker that does
not confirm, has died, or was forked under another environment is replaced. One run uses the kept workers
at a time: a run that overlaps it in the same process forks workers of its own and ends them after.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import multiprocessing
import os
import pickle
import socket
import struct
import sys
import threading
import weakref
from collections.abc import Hashable
from types import TracebackType
from typing import Any

from .._errors import FairRunnersError, PermanentBackendError, TransientBackendError, as_backend_error
from ._base import Runner, TurnInput, TurnOutput

_HEADER = struct.Struct("!I")
# Env variables that change on every invocation without changing what a worker does: the Lambda runtime sets
# the X-Ray trace header for each one. Any other difference replaces the kept workers.
_PER_INVOCATION_ENV = frozenset({"_X_AMZN_TRACE_ID"})
_START_TIMEOUT_S = 30.0  # a worker opening its runner (building a model) before it answers `ready`
_END_TIMEOUT_S = 1.0  # a worker confirming the end of a run: its cancelled turns wind down first

# The parent's ends of every worker's socketpair: a newly forked worker closes them all, or it would keep
# another worker's stream open after the parent closed it.
_PARENT_ENDS: weakref.WeakSet[socket.socket] = weakref.WeakSet()
_FORKING = threading.Lock()
# Turn ids never repeat in this process, not even across runs: a late reply can only miss, never answer
# another turn.
_TURN_IDS = itertools.count()


def _frame(message: object) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


async def _read(reader: asyncio.StreamReader) -> Any:
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    return pickle.loads(await reader.readexactly(size))


class _Worker:
    """A forked process, the parent's end of its socketpair, and the stream state of the run using it."""

    def __init__(self, process: Any, sock: socket.socket) -> None:
        self.process = process
        self.sock = sock
        # Between runs: at a frame boundary, nothing in flight. Only a confirmed end of a run sets it.
        self.clean = True
        self.writer: asyncio.StreamWriter | None = None
        self.reading: asyncio.Task[None] | None = None
        self.pending: dict[int, asyncio.Future[TurnOutput]] = {}
        self.control: asyncio.Future[tuple[str, Any]] | None = None  # the next ready/failed/ended frame
        self.alive = True

    def kill(self) -> None:
        """End the process at once (the kernel closes its connections) and close our end."""
        self.clean = False
        if self.process.is_alive():
            self.process.kill()
        # No timeout: a killed process always exits, and a timed join would wait on the exit pipe, which a
        # process forked meanwhile by another thread may hold open.
        self.process.join()
        self.sock.close()


class WorkerPool:
    """Forked workers kept between runs; `lock` lets one run use them at a time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._workers: list[_Worker] = []
        self._state: Hashable = None

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers held now."""
        return [int(w.process.pid) for w in self._workers]

    def take(self, count: int, state: Hashable) -> list[_Worker]:
        """`count` clean, live workers forked under `state`: kept ones first, new ones forked as needed."""
        if state != self._state:
            self.close()
            self._state = state
        kept = [w for w in self._workers if w.clean and w.process.is_alive()]
        for worker in self._workers:
            if worker not in kept:
                worker.kill()
        self._workers = kept
        if len(kept) < count:
            sys.stdout.flush()  # or the fork's copy of unflushed output would be written twice
            sys.stderr.flush()
            gc.freeze()  # the workers' collections then never write to (and copy) the parent's pages
            try:
                while len(self._workers) < count:
                    self._workers.append(_fork())
            finally:
                gc.unfreeze()
        return self._workers[:count]

    def discard(self, worker: _Worker) -> None:
        """End `worker` and forget it (the next run forks a replacement)."""
        worker.kill()
        if worker in self._workers:
            self._workers.remove(worker)

    def close(self) -> None:
        """End every worker."""
        for worker in self._workers:
            worker.kill()
        self._workers.clear()


def _fork() -> _Worker:
    # One fork at a time in this process: a worker forked by another thread meanwhile would inherit this
    # one's end of the socketpair, and the parent's close would never reach it.
    with _FORKING:
        ours, theirs = socket.socketpair()
        context = multiprocessing.get_context("fork")
        inherited = [*_PARENT_ENDS, ours]
        process = context.Process(target=_worker_main, args=(theirs, inherited), daemon=True)
        process.start()
        theirs.close()
        _PARENT_ENDS.add(ours)
    return _Worker(process, ours)


_POOL = WorkerPool()


def kept_workers() -> WorkerPool:
    """The process-wide pool of kept workers (tests close it between cases)."""
    return _POOL


class ProcessRunner:
    """Spreads `run_turn` calls of `runner` over `workers` worker processes (least busy first).

    `state` is whatever else the workers must share with this process (env variables are always compared):
    kept workers forked under another state are replaced.
    """

    def __init__(self, runner: Runner, workers: int, state: Hashable = None) -> None:
        self.runner = runner
        self.name = runner.name
        self._count = workers
        self._state = state
        self._pool: WorkerPool | None = None  # the kept workers, or (overlapping another run) our own
        self._workers: list[_Worker] = []

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the workers this run uses."""
        return [int(w.process.pid) for w in self._workers]

    def describe(self) -> dict[str, Any]:
        """The wrapped runner's facts, plus the worker count."""
        return {**self.runner.describe(), "workers": self._count}

    async def __aenter__(self) -> ProcessRunner:
        if _POOL.lock.acquire(blocking=False):
            self._pool = _POOL
        else:  # another run of this process holds the kept workers: fork a set of our own
            self._pool = WorkerPool()
        try:
            env = frozenset(item for item in os.environ.items() if item[0] not in _PER_INVOCATION_ENV)
            state = (env, self._state)
            self._workers = self._pool.take(self._count, state)
            spec = pickle.dumps(self.runner, protocol=pickle.HIGHEST_PROTOCOL)
            for worker in self._workers:
                await self._attach(worker)
                assert worker.writer is not None
                worker.writer.write(_frame(("open", -1, spec)))
            # Each worker opens the runner (or keeps the same one) and says whether it could: a model its
            # params break is the same error here as in one process, not a failure of every turn.
            outcomes = await asyncio.gather(
                *(self._control(w, "ready", _START_TIMEOUT_S) for w in self._workers), return_exceptions=True
            )
            problems = [(w, o) for w, o in zip(self._workers, outcomes, strict=True) if o is not None]
            # A worker that died since the last run is replaced by the next one; this run goes on with the
            # others. A runner that could not open, or a worker stuck opening it, fails the start.
            if problems and (len(problems) == len(self._workers) or any(w.alive for w, _ in problems)):
                raise problems[0][1]
        except BaseException:
            await self._release()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._release()

    async def run_turn(self, turn: TurnInput) -> TurnOutput:
        """Answer `turn` in the least busy live worker."""
        live = [w for w in self._workers if w.alive]
        if not live:
            raise PermanentBackendError("internal error: every worker process has exited")
        worker = min(live, key=lambda w: len(w.pending))
        assert worker.writer is not None
        turn_id = next(_TURN_IDS)
        future: asyncio.Future[TurnOutput] = asyncio.get_running_loop().create_future()
        worker.pending[turn_id] = future
        try:
            worker.writer.write(_frame(("turn", turn_id, turn)))
            return await future
        except asyncio.CancelledError:
            if worker.alive and not worker.writer.is_closing():
                worker.writer.write(_frame(("cancel", turn_id, None)))
            raise
        finally:
            worker.pending.pop(turn_id, None)

    async def _attach(self, worker: _Worker) -> None:
        """Streams for this run's loop on a duplicate of the kept socket (closing them keeps the original)."""
        worker.clean = False
        worker.alive = True
        worker.pending = {}
        duplicate = worker.sock.dup()
        _PARENT_ENDS.add(duplicate)
        reader, worker.writer = await asyncio.open_connection(sock=duplicate)
        worker.control = asyncio.get_running_loop().create_future()
        worker.reading = asyncio.create_task(self._read_replies(worker, reader))

    async def _control(self, worker: _Worker, expected: str, seconds: float) -> None:
        """Wait for the worker's next control frame; raise unless it is `expected`."""
        assert worker.control is not None
        try:
            kind, body = await asyncio.wait_for(asyncio.shield(worker.control), seconds)
        except TimeoutError:
            kind, body = "gone", None
        worker.control = asyncio.get_running_loop().create_future()
        if kind == expected:
            return
        if kind == "failed":
            raise body
        if expected == "ended":
            raise TransientBackendError("a worker process did not confirm the end of the run")
        worker.process.join(timeout=1.0)  # it is exiting (or stuck): wait briefly to report its exit code
        raise PermanentBackendError(
            f"internal error: a worker process did not start (exit code {worker.process.exitcode})"
        )

    async def _read_replies(self, worker: _Worker, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                kind, turn_id, body = await _read(reader)
                if kind in ("ready", "failed", "ended"):
                    if worker.control is not None and not worker.control.done():
                        worker.control.set_result((kind, body))
                    continue
                future = worker.pending.get(turn_id)
                if future is None or future.done():
                    continue  # cancelled meanwhile
                if kind == "ok":
                    future.set_result(body)
                else:  # a BackendError: pickling keeps its class, message, status and retry_after
                    future.set_exception(body)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            worker.alive = False
            if worker.control is not None and not worker.control.done():
                worker.control.set_result(("gone", None))
            code = worker.process.exitcode
            for future in worker.pending.values():
                if not future.done():
                    future.set_exception(
                        TransientBackendError(f"worker process exited (exit code {code}) during the turn")
                    )

    async def _release(self) -> None:
        """End the run in every worker (kept clean for the next run), or replace the ones that fail to."""
        attached = [w for w in self._workers if w.writer is not None]
        readers = [w.reading for w in attached if w.reading is not None]
        try:
            for worker in attached:
                assert worker.writer is not None
                if worker.alive and not worker.writer.is_closing():
                    worker.writer.write(_frame(("end", -1, None)))
            ended = await asyncio.gather(
                *(self._control(w, "ended", _END_TIMEOUT_S) for w in attached), return_exceptions=True
            )
            for worker, outcome in zip(attached, ended, strict=True):
                worker.clean = outcome is None
        finally:  # also when cancelled: the kept workers must be released (or replaced) whatever happens
            for worker in attached:
                assert worker.writer is not None and worker.reading is not None
                worker.reading.cancel()
                worker.writer.close()
                worker.writer = worker.reading = worker.control = None
            assert self._pool is not None
            for worker in attached:
                if not worker.clean:
                    self._pool.discard(worker)
            self._workers = []
            if self._pool is not _POOL:
                self._pool.close()
            else:
                self._pool.lock.release()
            self._pool = None
        if readers:
            await asyncio.wait(readers)


def _worker_main(sock: socket.socket, inherited: list[socket.socket]) -> None:
    """Entry point of a forked worker: serve runs until the parent closes its end."""
    for other in inherited:  # the parent's ends: keeping them open would hide the parent's EOF
        other.close()
    asyncio.run(_serve(sock))


async def _serve(sock: socket.socket) -> None:
    reader, writer = await asyncio.open_connection(sock=sock)
    runner: Runner | None = None
    spec: bytes | None = None
    running: dict[int, asyncio.Task[None]] = {}

    async def answer(turn_id: int, turn: TurnInput) -> None:
        try:
            if runner is None:
                raise PermanentBackendError("internal error: a turn reached a worker before its runner")
            output = await runner.run_turn(turn)
            reply: tuple[str, int, object] = ("ok", turn_id, output)
        except asyncio.CancelledError:
            return
        except Exception as exc:
            reply = ("error", turn_id, as_backend_error(exc))
        finally:
            running.pop(turn_id, None)
        writer.write(_frame(reply))

    async def cancel_all() -> bool:
        """Cancel every running turn; True once all have ended (none can reply any more)."""
        tasks = list(running.values())
        for task in tasks:
            task.cancel()
        if not tasks:
            return True
        _, pending = await asyncio.wait(tasks, timeout=_END_TIMEOUT_S / 2)
        return not pending

    try:
        while True:
            kind, turn_id, body = await _read(reader)
            if kind == "turn":
                running[turn_id] = asyncio.create_task(answer(turn_id, body))
            elif kind == "cancel" and turn_id in running:
                running[turn_id].cancel()
            elif kind == "end" and await cancel_all():  # else no confirmation: the parent replaces us
                writer.write(_frame(("ended", -1, None)))
            elif kind == "open":
                if body != spec:  # another runner than the one held: close that one, open this one
                    if runner is not None:
                        await _close(runner)
                    runner, spec = None, None
                    candidate: Runner = pickle.loads(body)
                    try:
                        await candidate.__aenter__()
                    except Exception as exc:
                        failure = exc if isinstance(exc, FairRunnersError) else as_backend_error(exc)
                        writer.write(_frame(("failed", -1, failure)))
                        continue
                    runner, spec = candidate, body
                writer.write(_frame(("ready", -1, None)))
    except (asyncio.IncompleteReadError, ConnectionError, OSError):
        pass
    finally:
        await cancel_all()
        if runner is not None:
            await _close(runner)
    writer.close()


async def _close(runner: Runner) -> None:
    with contextlib.suppress(Exception):
        await runner.__aexit__(None, None, None)
