"""The benchmark's workloads, shared by the orchestrator, the servers and the measured processes.

Stdlib only (the Fair-Forge baseline's virtualenv imports it too). A query's delay is a pure function of its
text (`Latency`), so the loopback servers and the orchestrator
agree on every turn's delay, and the critical path (the longest session's summed delays) is known exactly.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # LangChain only inside `abatch_rounds`: the peers time their own imports
    from langchain_core.language_models import BaseChatModel, LanguageModelInput
    from langchain_core.messages import BaseMessage

CONTEXT = "You are the benchmark assistant. Answer briefly."
MODEL = "bench-model"
# Shaped like a real key: random, sharing no 4-character piece with the queries, answers or ids. (A key like
# "bench-key" would: the response redaction then finds a trace of it and walks every string of the result.)
API_KEY = "sk-Qm7ZtR4vXw9LpK2cHd8N"
_UNIT = NormalDist()


def query(session: int, turn: int) -> str:
    """The text of turn `turn` of session `session` (unique in a workload)."""
    return f"question {turn} of session {session}"


@dataclass(frozen=True)
class Latency:
    """Per-query delay: `fixed_s` when `sigma` is 0, else lognormal with median `median_s` and `sigma`."""

    median_s: float
    sigma: float = 0.0

    def __call__(self, text: str) -> float:
        """The delay of `text` in seconds: the same text always gets the same delay."""
        if self.sigma == 0:
            return self.median_s
        digest = hashlib.sha256(text.encode()).digest()
        uniform = (int.from_bytes(digest[:8], "big") + 0.5) / 2**64  # in (0, 1), never 0 or 1
        return self.median_s * math.exp(self.sigma * _UNIT.inv_cdf(uniform))

    def spec(self) -> str:
        """The command-line form `_serve.py --latency` takes: `fixed:MS` or `lognormal:MS:SIGMA`."""
        if self.sigma == 0:
            return f"fixed:{self.median_s * 1000:g}"
        return f"lognormal:{self.median_s * 1000:g}:{self.sigma:g}"

    @classmethod
    def parse(cls, spec: str) -> Latency:
        """The inverse of `spec`."""
        kind, *values = spec.split(":")
        if kind == "fixed" and len(values) == 1:
            return cls(float(values[0]) / 1000)
        if kind == "lognormal" and len(values) == 2:
            return cls(float(values[0]) / 1000, float(values[1]))
        raise ValueError(f"latency spec {spec!r}: use fixed:MS or lognormal:MS:SIGMA")


@dataclass(frozen=True)
class Workload:
    """Sessions x turns at a latency, with `concurrency` sessions in flight."""

    name: str
    sessions: int
    turns: int
    latency: Latency
    concurrency: int

    def critical_path_s(self) -> float:
        """The longest session's summed delays: no run can finish sooner."""
        return max(sum(self.latency(query(i, j)) for j in range(self.turns)) for i in range(self.sessions))

    def sum_of_round_maxima_s(self) -> float:
        """What a run in lock-step rounds waits at least: the slowest turn of each round, summed."""
        return sum(max(self.latency(query(i, j)) for i in range(self.sessions)) for j in range(self.turns))

    def label(self) -> str:
        """Short description for the table."""
        if self.latency.sigma:
            delay = f"lognormal {self.latency.median_s * 1000:g} ms median, sigma {self.latency.sigma:g}"
        else:
            delay = f"{self.latency.median_s * 1000:g} ms"
        return f"{self.sessions}x{self.turns} @ {delay}, {self.concurrency} in flight"

    def describe(self) -> dict[str, Any]:
        """The workload's facts for the JSON results."""
        return {
            "sessions": self.sessions,
            "turns": self.turns,
            "latency": self.latency.spec(),
            "concurrency": self.concurrency,
            "critical_path_s": round(self.critical_path_s(), 4),
            "sum_of_round_maxima_s": round(self.sum_of_round_maxima_s(), 4),
        }


def datasets(sessions: int, turns: int, context: str = CONTEXT) -> list[dict[str, Any]]:
    """Fair-Forge datasets for `sessions` x `turns` (session ids `s0`..., queries from `query`)."""
    return [
        {
            "session_id": f"s{i}",
            "assistant_id": "bench",
            "context": context,
            "conversation": [{"qa_id": f"s{i}-q{j}", "query": query(i, j)} for j in range(turns)],
        }
        for i in range(sessions)
    ]


def peak_rss_mb() -> float:
    """This process image's peak RSS (VmHWM); `ru_maxrss` would carry the forking parent's over."""
    with open("/proc/self/status") as status:
        return round(next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024, 1)


async def abatch_rounds(
    model: BaseChatModel, data: list[dict[str, Any]], concurrency: int
) -> tuple[int, int]:
    """The peer's run: every round of turns as one `abatch` (round k: each session's turn k with its history,
    the system message then the earlier (query, answer) pairs); (successes, failures)."""
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    histories: list[list[BaseMessage]] = [[SystemMessage(content=d["context"])] for d in data]
    ok = failed = 0
    for k in range(max(len(d["conversation"]) for d in data)):
        live = [i for i, d in enumerate(data) if k < len(d["conversation"])]
        sent = [[*histories[i], HumanMessage(content=data[i]["conversation"][k]["query"])] for i in live]
        inputs: list[LanguageModelInput] = list(sent)
        replies = await model.abatch(inputs, config={"max_concurrency": concurrency}, return_exceptions=True)
        for i, messages, reply in zip(live, sent, replies, strict=True):
            if isinstance(reply, AIMessage) and reply.content:
                ok += 1
                histories[i] = [*messages, reply]
            else:
                failed += 1
                histories[i] = [*messages, AIMessage(content="")]
    return ok, failed
