"""The small interface every runner implements: open once per run, answer one turn at a time."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

from .._schemas import Batch


@dataclass(frozen=True)
class TurnInput:
    """Everything a runner needs to answer one turn."""

    session_id: str
    context: str
    batch: Batch
    # Earlier (query, answer) pairs of the same session, oldest first (used by the LLM runner).
    history: tuple[tuple[str, str], ...] = field(default=())


@dataclass(frozen=True)
class TurnOutput:
    """A runner's answer to one turn."""

    content: str
    input_tokens: int = 0
    output_tokens: int = 0
    # What the runner skipped on the way to the answer (malformed stream events, ...), for the run's warnings.
    notes: tuple[str, ...] = ()


class Runner(Protocol):
    """One backend. Used as `async with runner: await runner.run_turn(...)` inside one event loop."""

    name: str

    async def __aenter__(self) -> Runner: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def run_turn(self, turn: TurnInput) -> TurnOutput:
        """Answer one turn or raise a `BackendError` subclass."""
        ...

    def describe(self) -> dict[str, Any]:
        """Non-secret facts about the target, for logs."""
        ...
