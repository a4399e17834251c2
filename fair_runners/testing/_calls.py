"""Calls an emulator is answering at once (and the most seen), a release for calls left hanging, and the
state the provider emulators share (request log, faults, latency, calls in flight)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from ._faults import Fault, FaultPlan


class CallTracker:
    """Counts calls in flight (thread-safe) and lets `hang()` calls end when `release()` is called."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.in_flight = 0
        self.peak_in_flight = 0
        self._release: Future[None] = Future()  # `release` completes it: calls hung before then end

    @contextlib.contextmanager
    def call(self) -> Iterator[int]:
        """One call being answered; yields its number (1, 2, ...)."""
        with self._lock:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            number = next(self._ids)
        try:
            yield number
        finally:
            with self._lock:
                self.in_flight -= 1

    def release(self) -> None:
        """End the calls hung so far, and start counting the peak again from the calls in flight."""
        with self._lock:
            self.peak_in_flight = self.in_flight
            released, self._release = self._release, Future()
        if not released.done():
            released.set_result(None)

    async def hang(self) -> None:
        """Answer nothing until `release` (or an hour), so a server can stop without waiting on hung calls."""
        # Shielded: a call cancelled by the server's shutdown must not cancel the other calls' wait.
        released = asyncio.shield(asyncio.wrap_future(self._release))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(released, 3600)


class ProviderEmulator:
    """What the provider emulators (dataclasses) share: their `app` on `_routes()`, `add_fault`, `reset`,
    and `in_flight` / `peak_in_flight` from a `CallTracker`. Subclasses declare `latency_s`, `faults` and
    `requests` as dataclass fields; `requests` is appended to under `_lock`."""

    latency_s: float
    faults: FaultPlan
    requests: list[dict[str, Any]]

    def __post_init__(self) -> None:
        self._lock = threading.Lock()  # the request log's
        self._calls = CallTracker()
        self.app = Starlette(routes=self._routes())

    def _routes(self) -> list[BaseRoute]:
        raise NotImplementedError

    def add_fault(self, *faults: Fault) -> None:
        """Inject faults (see the class docstring)."""
        self.faults.add(*faults)

    def reset(self) -> None:
        """No faults, no latency, empty log, in-flight peak back to the calls in flight; hung calls end."""
        self.faults.clear()
        self.latency_s = 0.0
        with self._lock:
            self.requests.clear()
        self._calls.release()

    @property
    def in_flight(self) -> int:
        """Calls being answered now."""
        return self._calls.in_flight

    @property
    def peak_in_flight(self) -> int:
        """The most calls answered at once (since the last `reset`)."""
        return self._calls.peak_in_flight
