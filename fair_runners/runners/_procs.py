"""Run a CPU-heavy runner's turns in forked worker processes, so one invocation uses every vCPU it has.

The engine (order, retries, the deadline, accounting) stays in the parent; only `run_turn` crosses over. Each
worker is forked before any connection is opened, runs its own event loop with its own copy of the runner,
and answers many turns at once. Frames are length-prefixed pickles over a socketpair driven by asyncio on
both ends, so neither side ever blocks on a full pipe. A cancelled turn (timeout, deadline) is cancelled in
the worker too; a worker that dies fails its in-flight turns as transient, and the engine retries them on
the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import multiprocessing
import pickle
import socket
import struct
import sys
from types import TracebackType
from typing import Any

from .._errors import FairRunnersError, PermanentBackendError, TransientBackendError, as_backend_error
from ._base import Runner, TurnInput, TurnOutput

_HEADER = struct.Struct("!I")
_STOP_GRACE_S = 2.0
_START_TIMEOUT_S = 30.0


def _frame(message: object) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(data)) + data


async def _read(reader: asyncio.StreamReader) -> Any:
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    return pickle.loads(await reader.readexactly(size))


class _Worker:
    def __init__(self, process: Any, sock: socket.socket) -> None:
        self.process = process
        self.sock = sock
        self.writer: asyncio.StreamWriter | None = None
        self.pending: dict[int, asyncio.Future[TurnOutput]] = {}
        self.reading: asyncio.Task[None] | None = None
        self.alive = True


class ProcessRunner:
    """Spreads `run_turn` calls of `runner` over `workers` forked processes (least busy first)."""

    def __init__(self, runner: Runner, workers: int) -> None:
        self.runner = runner
        self.name = runner.name
        self._count = workers
        self._workers: list[_Worker] = []
        self._ids = itertools.count()

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the workers started by `__aenter__`."""
        return [int(w.process.pid) for w in self._workers]

    def describe(self) -> dict[str, Any]:
        """The wrapped runner's facts, plus the worker count."""
        return {**self.runner.describe(), "workers": self._count}

    async def __aenter__(self) -> ProcessRunner:
        context = multiprocessing.get_context("fork")
        sys.stdout.flush()  # or the fork's copy of unflushed output would be written twice
        sys.stderr.flush()
        gc.freeze()  # the workers' collections then never write to (and copy) the parent's pages
        readers: list[asyncio.StreamReader] = []
        try:
            for _ in range(self._count):
                ours, theirs = socket.socketpair()
                inherited = [w.sock for w in self._workers] + [ours]
                process = context.Process(
                    target=_worker_main, args=(self.runner, theirs, inherited), daemon=True
                )
                process.start()
                theirs.close()
                worker = _Worker(process, ours)
                reader, worker.writer = await asyncio.open_connection(sock=ours)
                readers.append(reader)
                self._workers.append(worker)
            # Each worker opens its runner first and says whether it could: a model its params break is
            # the same error here as in one process, not a failure of every turn.
            await asyncio.gather(*(_started(w, r) for w, r in zip(self._workers, readers, strict=True)))
            for worker, reader in zip(self._workers, readers, strict=True):
                worker.reading = asyncio.create_task(self._read_replies(worker, reader))
        except BaseException:
            await self._stop()
            raise
        finally:
            gc.unfreeze()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    async def run_turn(self, turn: TurnInput) -> TurnOutput:
        """Answer `turn` in the least busy live worker."""
        live = [w for w in self._workers if w.alive]
        if not live:
            raise PermanentBackendError("internal error: every worker process has exited")
        worker = min(live, key=lambda w: len(w.pending))
        assert worker.writer is not None
        turn_id = next(self._ids)
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

    async def _read_replies(self, worker: _Worker, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                kind, turn_id, body = await _read(reader)
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
            code = worker.process.exitcode
            for future in worker.pending.values():
                if not future.done():
                    future.set_exception(
                        TransientBackendError(f"worker process exited (exit code {code}) during the turn")
                    )

    async def _stop(self) -> None:
        # Every turn is answered or abandoned by now, so a worker holds nothing worth a graceful exit: end it
        # at once (the kernel closes its connections) rather than wait for its event loop to wind down.
        for worker in self._workers:
            if worker.writer is not None:
                worker.writer.close()
            if worker.process.is_alive():
                worker.process.kill()
        for worker in self._workers:
            worker.process.join(timeout=_STOP_GRACE_S)
            if worker.reading is not None:
                worker.reading.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker.reading
            worker.sock.close()
        self._workers.clear()


async def _started(worker: _Worker, reader: asyncio.StreamReader) -> None:
    """Wait for a worker's first frame: `ready`, or the exception its runner raised on opening."""
    try:
        kind, _, body = await asyncio.wait_for(_read(reader), _START_TIMEOUT_S)
    except (asyncio.IncompleteReadError, ConnectionError, OSError, TimeoutError):
        worker.process.join(timeout=1.0)  # it is exiting (or stuck): wait briefly to report its exit code
        code = worker.process.exitcode
        raise PermanentBackendError(
            f"internal error: a worker process did not start (exit code {code})"
        ) from None
    if kind != "ready":
        raise body


def _worker_main(runner: Runner, sock: socket.socket, inherited: list[socket.socket]) -> None:
    """Entry point of a forked worker: serve turns until the parent closes its end."""
    for other in inherited:  # the parent's ends: keeping them open would hide the parent's EOF
        other.close()
    asyncio.run(_serve(runner, sock))


async def _serve(runner: Runner, sock: socket.socket) -> None:
    reader, writer = await asyncio.open_connection(sock=sock)
    running: dict[int, asyncio.Task[None]] = {}

    async def answer(turn_id: int, turn: TurnInput) -> None:
        try:
            output = await runner.run_turn(turn)
            reply: tuple[str, int, object] = ("ok", turn_id, output)
        except asyncio.CancelledError:
            return
        except Exception as exc:
            reply = ("error", turn_id, as_backend_error(exc))
        finally:
            running.pop(turn_id, None)
        writer.write(_frame(reply))

    try:
        await runner.__aenter__()
    except Exception as exc:
        failure = exc if isinstance(exc, FairRunnersError) else as_backend_error(exc)
        writer.write(_frame(("failed", -1, failure)))
        await writer.drain()
        writer.close()
        return
    writer.write(_frame(("ready", -1, None)))
    try:
        while True:
            kind, turn_id, body = await _read(reader)
            if kind == "turn":
                running[turn_id] = asyncio.create_task(answer(turn_id, body))
            elif kind == "cancel" and turn_id in running:
                running[turn_id].cancel()
    except (asyncio.IncompleteReadError, ConnectionError, OSError):
        pass
    finally:
        for task in list(running.values()):
            task.cancel()
        if running:
            await asyncio.wait(list(running.values()), timeout=1.0)
        await runner.__aexit__(None, None, None)
    writer.close()
