"""Benchmark helper: the peer, what a LangChain user writes instead of fair-runners (fresh, warmed process).

One `model.abatch(list_of_message_lists, config={"max_concurrency": N})` per round of turns: round k sends
every session's turn k with its history (system message, then the earlier (query, answer) pairs), and round
k's answers feed round k+1's history. The model is built as a user builds it (the class's own HTTP client,
its default retries). Prints one JSON line as `_measure.py` does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from typing import Any

from _workload import API_KEY, MODEL, abatch_rounds, datasets, peak_rss_mb
from langchain_core.language_models import BaseChatModel


def _model(provider: str, url: str) -> BaseChatModel:
    if provider == "openai":
        from langchain_openai import ChatOpenAI

        return ChatOpenAI(model=MODEL, api_key=API_KEY, base_url=f"{url}/v1")
    from langchain_groq import ChatGroq

    return ChatGroq(model=MODEL, api_key=API_KEY, base_url=url)  # type: ignore[call-arg]


def main() -> None:
    """Run the workload described by the flags with `abatch` rounds; print the measurements as JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--sessions", type=int, required=True)
    parser.add_argument("--turns", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--provider", choices=["openai", "groq"], default="openai")
    args = parser.parse_args()

    async def measure() -> dict[str, Any]:
        model = _model(args.provider, args.url)
        warmup = datasets(1, 1)
        warmup[0]["conversation"][0]["query"] = "warm-up question"
        await abatch_rounds(model, warmup, 1)
        started = time.perf_counter()
        usage0 = resource.getrusage(resource.RUSAGE_SELF)
        ok, failed = await abatch_rounds(model, datasets(args.sessions, args.turns), args.concurrency)
        usage1 = resource.getrusage(resource.RUSAGE_SELF)
        wall = time.perf_counter() - started
        user, system = usage1.ru_utime - usage0.ru_utime, usage1.ru_stime - usage0.ru_stime
        turns = ok + failed
        return {
            "mode": "llm (abatch rounds)",
            "provider": args.provider,
            "wall_s": round(wall, 4),
            "cpu_s": round(user + system, 4),
            "user_s": round(user, 4),
            "sys_s": round(system, 4),
            "cpu_ms_per_turn": round((user + system) * 1000 / max(1, turns), 4),
            "peak_rss_mb": peak_rss_mb(),
            "turns": turns,
            "successes": ok,
            "failures": failed,
        }

    print(json.dumps(asyncio.run(measure())), flush=True)


if __name__ == "__main__":
    main()
