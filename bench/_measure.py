"""Benchmark helper: run one workload through the real `lambda_handler` in a fresh, warmed process.

Prints one JSON line: the run's wall time, this process's CPU over the run (user + system; the servers run in
another process), peak RSS, the response's totals, whether LangChain got imported, and each turn's latency as
the engine measured it minus the delay the server was told to add (`overhead_ms`: what the client side, the
wire and the server's own work added to the turn).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _workload import API_KEY, MODEL, Latency, datasets, peak_rss_mb


class _Context:
    aws_request_id = "bench"
    function_name = "fair-runners-bench"

    def get_remaining_time_in_millis(self) -> int:
        return 900_000


def connector(provider: str, url: str) -> dict[str, Any]:
    """The `connector` of an LLM-mode request for `provider` at the loopback `url`."""
    if provider == "openai":
        return {
            "class_path": "langchain_openai.chat_models.ChatOpenAI",
            "params": {"model": MODEL, "api_key": API_KEY, "base_url": f"{url}/v1"},
        }
    return {
        "class_path": "langchain_groq.chat_models.ChatGroq",
        "params": {"model": MODEL, "api_key": API_KEY, "base_url": url},
    }


def _request(args: argparse.Namespace, data: list[dict[str, Any]]) -> dict[str, Any]:
    options: dict[str, Any] = {"max_concurrency": args.concurrency, "max_attempts": 1}
    if args.mode == "alquimia":
        config = {"base_url": args.url, "api_key": API_KEY, "agent_id": "bench"}
        return {"datasets": data, "config": config, "options": options}
    options["history"] = not args.no_history
    return {"datasets": data, "connector": connector(args.provider, args.url), "options": options}


def _overheads_ms(result: dict[str, Any], data: list[dict[str, Any]], latency: Latency) -> list[float]:
    queries = {b["qa_id"]: b["query"] for d in data for b in d["conversation"]}
    return [
        turn["latency_ms"] - latency(queries[turn["qa_id"]]) * 1000
        for summary in result["summaries"]
        for turn in summary["turns"]
        if turn["latency_ms"] is not None
    ]


def _cpu_s() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def runqueue_wait_s() -> dict[str, float]:
    """Seconds this process's threads have waited for a CPU while runnable (Linux schedstat), for the main
    thread (the event loop) and for all threads; zeros elsewhere. High for the main thread during a run:
    something else held the core (another process, or one of this process's own threads)."""
    waits = {"main": 0.0, "all": 0.0}
    for stat in Path("/proc/self/task").glob("*/schedstat"):
        try:
            wait = int(stat.read_text().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            continue
        waits["all"] += wait
        if stat.parent.name == str(os.getpid()):
            waits["main"] += wait
    return waits


def main() -> None:
    """Run the workload described by the flags; print the measurements as JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["alquimia", "llm"], required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--sessions", type=int, required=True)
    parser.add_argument("--turns", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--latency", type=Latency.parse, required=True)
    parser.add_argument("--provider", choices=["openai", "groq"], default="openai")
    parser.add_argument("--no-history", action="store_true", help="LLM mode: send no earlier turns")
    args = parser.parse_args()
    os.environ["FAIR_RUNNERS_ALLOWED_HOSTS"] = args.url.split("://", 1)[1]
    os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "FairRunnersBench")
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")

    from handler.app import lambda_handler

    data = datasets(args.sessions, args.turns)
    warmup = datasets(1, 1)
    warmup[0]["session_id"] = "warmup"
    devnull = os.open(os.devnull, os.O_WRONLY)
    saved_stdout = os.dup(1)
    os.dup2(devnull, 1)  # Powertools writes EMF metrics to stdout: keep them, but not in our pipe
    try:
        # A warm process, as a warm Lambda is: one 1-turn request first loads what the first call loads
        # lazily (LangChain imports much of itself on the first `ainvoke`).
        lambda_handler(_request(args, warmup), _Context())
        (user0, sys0), wait0, wall0 = _cpu_s(), runqueue_wait_s(), time.perf_counter()
        result = lambda_handler(_request(args, data), _Context())
        wall = time.perf_counter() - wall0
        (user1, sys1), wait1 = _cpu_s(), runqueue_wait_s()
    finally:
        os.dup2(saved_stdout, 1)
    turns = result["totals"]["turns"]
    cpu = (user1 - user0) + (sys1 - sys0)
    overheads = sorted(_overheads_ms(result, data, args.latency))
    report = {
        "mode": args.mode,
        "provider": args.provider if args.mode == "llm" else None,
        "wall_s": round(wall, 4),
        "cpu_s": round(cpu, 4),
        "user_s": round(user1 - user0, 4),
        "sys_s": round(sys1 - sys0, 4),
        "cpu_ms_per_turn": round(cpu * 1000 / turns, 4),
        "runqueue_wait_s": round(wait1["main"] - wait0["main"], 4),
        "runqueue_wait_all_threads_s": round(wait1["all"] - wait0["all"], 4),
        "threads": len(list(Path("/proc/self/task").iterdir())),
        "peak_rss_mb": peak_rss_mb(),
        "turns": turns,
        "successes": result["totals"]["successes"],
        "failures": result["totals"]["failures"],
        "complete": result["complete"],
        "overhead_ms": {
            "median": round(statistics.median(overheads), 2) if overheads else None,
            "p95": round(overheads[int(len(overheads) * 0.95)], 2) if overheads else None,
            "max": round(overheads[-1], 2) if overheads else None,
        },
        "langchain_loaded": any(m.split(".")[0].startswith("langchain") for m in sys.modules),
    }
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
