"""The small interface every runner implements: open once per run, answer one turn at a time."""

from __future__ import annotations

from collections.abc import Callable, Mapping
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


HeadersHook = Callable[[Mapping[str, str]], None]


class Runner(Protocol):
    """One backend. Used as `async with runner: await runner.run_turn(...)` inside one event loop."""

    name: str
    # Called with every response's headers (the engine reads the provider's rate limits from them).
    on_headers: HeadersHook | None

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

    def request_of(self, turn: TurnInput) -> Any:
        """What this turn sends, as JSON (the response cache's key is made of it)."""
        ...

    def token_estimate(self, turn: TurnInput) -> int:
        """The turn's token charge before it is sent (what the rate budget draws)."""
        ...
