"""Benchmark helper for `rate_bench.py`: one provider in its own process (the parent pins it to a core).

A loopback app (`--app llm`: `OpenAICompatServer`; `alquimia`: `AlquimiaAgent`, only its infer POST gated;
`bedrock`: `BedrockEmulator`, not gated) answering after the workload's per-query delay (`_workload.Latency`),
behind a `RateLimitGate` when `--rpm` is given; with `--moto TABLE`, also moto's DynamoDB (`AtomicMotoServer`)
holding the rate table `SharedBudget` uses.

Prints one JSON line `{"url": ..., "moto": ...}`, then answers commands on stdin, one per line:

    dump   -> one JSON line: the gate's arrivals since the last dump (`[[monotonic s, accepted, tokens]...]`,
              the host's CLOCK_MONOTONIC, which every process on this machine shares; for Bedrock, every
              call, accepted) and, for Bedrock, the most calls in flight at once since the last dump; with
              `--moto`, the rate table read once a second: `[monotonic s, version, live holders, the sum of
              their requests/min]`.

It exits when its stdin closes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _workload import API_KEY, Latency
from starlette.types import Receive, Scope, Send

from fair_runners.testing import AlquimiaAgent, BedrockEmulator, LoopbackServer, OpenAICompatServer
from fair_runners.testing.ratelimit import RateLimitGate


class TableWatch:
    """Reads the rate table once a second (a thread): its version and the live holders' shares."""

    def __init__(self, url: str, table: str) -> None:
        from pacing_sim import dynamodb_client

        self._client, self._table = dynamodb_client(url), table
        self._samples: list[list[float]] = []  # [monotonic, version, live holders, their requests/min]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="table-watch", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            items = self._client.scan(TableName=self._table, ConsistentRead=True).get("Items", [])
            now, wall = time.monotonic(), time.time()
            for item in items:  # the item format is documented in fair_runners/pacing/_ledger.py
                holders = [entry["M"] for entry in item.get("holders", {}).get("M", {}).values()]
                live = [float(h["rpm"]["N"]) for h in holders if float(h["until"]["N"]) > wall]
                with self._lock:
                    self._samples.append([now, int(item["version"]["N"]), len(live), round(sum(live), 3)])

    def take(self) -> list[list[float]]:
        """The samples since the last call."""
        with self._lock:
            samples, self._samples = self._samples, []
        return samples

    def close(self) -> None:
        """Stop reading."""
        self._stop.set()
        self._thread.join(timeout=5)


class Provider:
    """The app (gated or not) and what `dump` reports about it."""

    def __init__(self, args: argparse.Namespace) -> None:
        latency: Latency = args.latency
        self.bedrock: BedrockEmulator | None = None
        self._latency_s = latency.median_s
        app: Any
        if args.app == "llm":
            app = OpenAICompatServer(api_key=API_KEY, latency=latency).app
        elif args.app == "alquimia":
            app = AlquimiaAgent(api_key=API_KEY, latency=latency).app
        else:
            self.bedrock = BedrockEmulator(latency_s=latency.median_s)  # a fixed delay only
            app = self.bedrock.app
        self.gate: RateLimitGate | None = None
        if args.rpm:
            self.gate = RateLimitGate(
                app,
                requests_per_minute=args.rpm,
                tokens_per_minute=args.tpm,
                burst_requests=args.burst,
            )
            app = self.gate
        self.app = app
        self._seen = 0
        self.table: TableWatch | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    def dump(self) -> dict[str, Any]:
        """Arrivals since the last dump; Bedrock's peak in flight since the last dump (then reset)."""
        report: dict[str, Any] = {"arrivals": []}
        if self.gate is not None:
            arrivals = self.gate.log.arrivals()
            report["arrivals"] = [[a.at, a.accepted, a.tokens] for a in arrivals[self._seen :]]
            self._seen = len(arrivals)
        if self.bedrock is not None:  # every call is an arrival (nothing is gated)
            report["arrivals"] = [[r["time"], True, 0] for r in self.bedrock.requests]
            report["peak_in_flight"] = self.bedrock.peak_in_flight
            self.bedrock.reset()  # peak back to the calls in flight (none between runs), log emptied ...
            self.bedrock.latency_s = self._latency_s  # ... and its latency zeroed: set it again
        if self.table is not None:
            report["table"] = self.table.take()
        return report


def main() -> None:
    """Serve until stdin closes; see the module docstring."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--app", choices=["llm", "alquimia", "bedrock"], required=True)
    parser.add_argument("--latency", type=Latency.parse, default=Latency(0.0))
    parser.add_argument("--rpm", type=float, default=None, help="gate: requests per minute (none: no gate)")
    parser.add_argument("--tpm", type=float, default=None, help="gate: tokens per minute")
    parser.add_argument("--burst", type=float, default=10, help="gate: burst of requests enforced")
    parser.add_argument("--moto", default=None, help="also serve moto's DynamoDB with this rate table")
    args = parser.parse_args()
    provider = Provider(args)
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(LoopbackServer(provider))
        moto_url = None
        if args.moto:
            from pacing_sim import AtomicMotoServer, create_rate_table, dynamodb_client

            moto_url = stack.enter_context(AtomicMotoServer()).url
            create_rate_table(dynamodb_client(moto_url), args.moto)
            provider.table = TableWatch(moto_url, args.moto)
            stack.callback(provider.table.close)
        print(json.dumps({"url": server.url, "moto": moto_url}), flush=True)
        for line in sys.stdin:
            if line.strip() == "dump":
                print(json.dumps(provider.dump()), flush=True)


if __name__ == "__main__":
    main()
