"""Calls an emulator is answering at once (and the most seen), and a release for calls left hanging."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import Iterator
from concurrent.futures import Future


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


class TracksCalls:
    """`in_flight` and `peak_in_flight` of an emulator whose `_calls` is a `CallTracker`."""

    _calls: CallTracker

    @property
    def in_flight(self) -> int:
        """Calls being answered now."""
        return self._calls.in_flight

    @property
    def peak_in_flight(self) -> int:
        """The most calls answered at once (since the last `reset`)."""
        return self._calls.peak_in_flight
