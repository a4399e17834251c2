"""Benchmark helper: serve the loopback Alquimia agent and OpenAI-compatible endpoint in THIS process.

Started by `bench.py` as a separate process (pinned to its own core when the machine has two), so the
servers' CPU is never counted as the invocation's. `--latency fixed:MS` or `lognormal:MS:SIGMA` sets each
answer's delay from its query text (`_workload.Latency`). Prints one JSON line with the two base URLs, then
serves until its stdin closes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _workload import API_KEY, Latency

from fair_runners.testing import AlquimiaAgent, LoopbackServer, OpenAICompatServer


def main() -> None:
    """Serve both backends with the given latency until stdin closes."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=Latency.parse, default=Latency(0.0))
    args = parser.parse_args()
    latency: Latency = args.latency
    agent = AlquimiaAgent(api_key=API_KEY, latency=latency)
    llm = OpenAICompatServer(api_key=API_KEY, latency=latency)
    with LoopbackServer(agent.app) as agent_server, LoopbackServer(llm.app) as llm_server:
        print(json.dumps({"alquimia": agent_server.url, "llm": llm_server.url}), flush=True)
        sys.stdin.read()  # until the parent closes our stdin (or exits)


if __name__ == "__main__":
    main()
