"""Benchmark helper: run one workload through the real `lambda_handler` in a fresh, warmed process.

Prints one JSON line: wall time of the run, the process CPU time spent in it (this process only: the servers
run elsewhere), the CPU of its LLM-mode worker processes, peak RSS, the response's totals, and whether
LangChain got imported. Env `FAIR_RUNNERS_WORKERS` applies as in the Lambda. `--runs N` runs the workload N
times in the same process, as a warm Lambda's next invocations: `wall_s` is the first run's, `next_wall_s` the
others' (LLM mode keeps its worker processes from one run to the next).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class _Context:
    aws_request_id = "bench"
    function_name = "fair-runners-bench"

    def get_remaining_time_in_millis(self) -> int:
        return 900_000


def _request(args: argparse.Namespace) -> dict[str, Any]:
    datasets = [
        {
            "session_id": f"s{i}",
            "assistant_id": "bench",
            "conversation": [
                {"qa_id": f"s{i}-q{j}", "query": f"question {j} of session {i}"} for j in range(args.turns)
            ],
        }
        for i in range(args.sessions)
    ]
    options = {"max_concurrency": args.concurrency, "max_attempts": 1}
    if args.mode == "alquimia":
        config = {"base_url": args.url, "api_key": "bench-key", "agent_id": "bench"}
        return {"datasets": datasets, "config": config, "options": options}
    if args.provider == "openai":
        connector = {
            "class_path": "langchain_openai.chat_models.ChatOpenAI",
            "params": {"model": "bench-model", "api_key": "bench-key", "base_url": f"{args.url}/v1"},
        }
    else:
        connector = {
            "class_path": "langchain_groq.chat_models.ChatGroq",
            "params": {"model": "bench-model", "api_key": "bench-key", "base_url": args.url},
        }
    return {"datasets": datasets, "connector": connector, "options": {**options, "history": False}}


def main() -> None:
    """Run the workload described by the flags; print the measurements as JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["alquimia", "llm"], required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--sessions", type=int, required=True)
    parser.add_argument("--turns", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--provider", choices=["openai", "groq"], default="openai")
    parser.add_argument("--runs", type=int, default=1, help="runs in this process after the warm-up")
    args = parser.parse_args()
    host = args.url.split("://", 1)[1]
    os.environ["FAIR_RUNNERS_ALLOWED_HOSTS"] = host
    os.environ.setdefault("POWERTOOLS_METRICS_NAMESPACE", "FairRunnersBench")
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")

    from fair_runners._settings import Settings
    from handler.app import lambda_handler

    request = _request(args)
    devnull = os.open(os.devnull, os.O_WRONLY)
    saved_stdout = os.dup(1)
    os.dup2(devnull, 1)  # Powertools writes EMF metrics to stdout: keep them, but not in our pipe
    try:
        # A warm process, as a warm Lambda is: one small request first loads what the first call loads lazily
        # (LangChain imports much of itself on the first `ainvoke`).
        warmup = argparse.Namespace(**{**vars(args), "sessions": 1, "turns": 1})
        lambda_handler(_request(warmup), _Context())
        cpu0, wall0 = time.process_time(), time.perf_counter()
        result = lambda_handler(request, _Context())
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        next_walls = []
        for _ in range(args.runs - 1):
            started = time.perf_counter()
            again = lambda_handler(request, _Context())
            next_walls.append(round(time.perf_counter() - started, 4))
            assert again["totals"]["successes"] == result["totals"]["successes"]
    finally:
        os.dup2(saved_stdout, 1)
    turns = result["totals"]["turns"]
    if "fair_runners.runners._procs" in sys.modules:  # end the kept LLM workers, so their CPU is counted
        from fair_runners.runners._procs import kept_workers

        kept_workers().close()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # LLM-mode worker processes, reaped by now
    report = {
        "mode": args.mode,
        "sessions": args.sessions,
        "turns_per_session": args.turns,
        "concurrency": args.concurrency,
        "provider": args.provider if args.mode == "llm" else None,
        "wall_s": round(wall, 4),
        "next_wall_s": next_walls,
        "cpu_s": round(cpu, 4),
        "cpu_ms_per_turn": round(cpu * 1000 / turns, 4),
        "workers": Settings.from_env().worker_count(args.sessions) if args.mode == "llm" else 1,
        "workers_cpu_s": round(children.ru_utime + children.ru_stime, 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "successes": result["totals"]["successes"],
        "failures": result["totals"]["failures"],
        "complete": result["complete"],
        "langchain_loaded": any(m.split(".")[0].startswith("langchain") for m in sys.modules),
    }
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
