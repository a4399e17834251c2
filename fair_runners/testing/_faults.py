"""Fault injection rules shared by the loopback servers."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal

FaultKind = Literal[
    "status",
    "hang",
    "drop",
    "malformed",
    "garbage_then_ok",
    "empty",
    "no_stream_id",
    "slow",
    "echo",
    "redirect",
    "echo_answer",
    "answer",
]


@dataclass
class Fault:
    """Misbehave on matching requests, `times` times (None: forever).

    `query` matches when it is a substring of the turn's query; `session_id` when equal. `phase` picks the
    Alquimia step (`infer` or `stream`); the OpenAI server has one step. `delay_s` is used by `slow`.
    `echo` answers `status` with a body that repeats the request's headers (Authorization included) and
    body, as a careless backend does; `echo_answer` puts the Authorization header in a successful answer;
    `redirect` answers `status` (a 3xx) with `Location: location`; `answer` answers `text` (written with
    JSON escapes, so it may hold what UTF-8 cannot, such as an unpaired surrogate).
    """

    kind: FaultKind
    query: str | None = None
    session_id: str | None = None
    status: int = 500
    retry_after: float | None = None
    times: int | None = 1
    phase: Literal["infer", "stream"] = "infer"
    delay_s: float = 0.0
    location: str = "http://169.254.169.254/latest/meta-data/"
    text: str = ""

    def matches(self, query: str, session_id: str | None, phase: str) -> bool:
        """True when this rule applies to the request."""
        if self.times is not None and self.times <= 0:
            return False
        if self.phase != phase:
            return False
        if self.query is not None and self.query not in query:
            return False
        return self.session_id is None or self.session_id == session_id


class FaultPlan:
    """A thread-safe list of rules; `take` consumes one use of the first matching rule."""

    def __init__(self) -> None:
        self._rules: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, *faults: Fault) -> None:
        """Add rules (first match wins)."""
        with self._lock:
            self._rules.extend(faults)

    def clear(self) -> None:
        """Remove every rule."""
        with self._lock:
            self._rules.clear()

    def take(self, query: str, session_id: str | None, phase: str) -> Fault | None:
        """The first matching rule, with one use consumed."""
        with self._lock:
            for rule in self._rules:
                if rule.matches(query, session_id, phase):
                    if rule.times is not None:
                        rule.times -= 1
                    return rule
        return None
