"""Benchmark helper for `rate_bench.py`: the peer, what a LangChain user writes against a rate-limited
provider.

One `model.abatch(messages_per_session, config={"max_concurrency": N})` per round of turns (round k sends
every session's turn k with its history: the system message, then the earlier (query, answer) pairs), the
model built with `rate_limiter=InMemoryRateLimiter(requests_per_second=R, check_every_n_seconds=0.01,
max_bucket_size=B)` and `max_retries=M` (the OpenAI SDK's own retries honour `retry-after[-ms]`).

Same protocol as `_rate_client.py`: prints `@@{"ready": ...}` once the model is built (LangChain imported:
the runs' walls do not include that), then for each of `--runs` waits for a line `go` on stdin and prints
one `@@{...}` line (start, end, wall, CPU, counts). The model (and its rate limiter) is kept between runs, as
a user's process keeps it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from typing import TYPE_CHECKING

from _workload import API_KEY, MODEL, abatch_rounds, datasets

if TYPE_CHECKING:  # LangChain is imported in `main`, timed (what the runs' walls leave out)
    from langchain_core.language_models import BaseChatModel


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    """Build the model, then run the workload once per `go` line."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--sessions", type=int, required=True)
    parser.add_argument("--turns", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--rps", type=float, required=True, help="InMemoryRateLimiter requests_per_second")
    parser.add_argument("--bucket", type=float, required=True, help="InMemoryRateLimiter max_bucket_size")
    parser.add_argument("--max-retries", type=int, required=True)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    started = time.monotonic()
    from langchain_core.rate_limiters import InMemoryRateLimiter
    from langchain_openai import ChatOpenAI

    limiter = InMemoryRateLimiter(
        requests_per_second=args.rps, check_every_n_seconds=0.01, max_bucket_size=args.bucket
    )
    model = ChatOpenAI(
        model=MODEL,
        api_key=API_KEY,
        base_url=f"{args.url}/v1",
        rate_limiter=limiter,
        max_retries=args.max_retries,
    )
    print("@@" + json.dumps({"ready": True, "import_s": round(time.monotonic() - started, 3)}), flush=True)
    asyncio.run(serve(model, args))


async def serve(model: BaseChatModel, args: argparse.Namespace) -> None:
    """The runs, in one event loop (the model's HTTP client belongs to the loop it was first used in)."""
    data = datasets(args.sessions, args.turns)
    for _ in range(args.runs):
        if (await asyncio.to_thread(sys.stdin.readline)).strip() != "go":
            return
        start, cpu0 = time.monotonic(), _cpu_s()
        ok, failed = await abatch_rounds(model, data, args.concurrency)
        end = time.monotonic()
        report = {
            "start": start,
            "end": end,
            "wall_s": round(end - start, 4),
            "cpu_s": round(_cpu_s() - cpu0, 4),
            "turns": ok + failed,
            "successes": ok,
            "failures": failed,
        }
        print("@@" + json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
