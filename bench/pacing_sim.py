"""Pacing simulation: concurrent sessions against a provider-like rate limit (the real `RateLimitGate`).

A trivial chat app answers after a lognormal latency; `RateLimitGate` in front of it enforces the provider's
buckets on 127.0.0.1. Each session sends its turns in order through a small aiohttp client that does what the
engine does for every attempt: the AIMD limiter slot, `await pacer.acquire(tokens)`, the request, then
`observe(headers)` / `on_rate_limited(retry_after)` / `settle(...)` / `release()`, and again on a 429.

    python bench/pacing_sim.py                  # every scenario at full size (a few minutes)
    python bench/pacing_sim.py headers budget   # some of them
    python bench/pacing_sim.py --scale 5 ...    # rates x5, latency /5: the same run, 5 times shorter

Prints one JSON line per scenario: wall time, the floor (total cost / limit), their ratio, attempts, 429s and
their share, and the most requests the gate accepted in any 1 s and 60 s window. Also used by the tests
(`tests/test_pacing_sim.py`, scaled down) and by the multi-process shared-budget test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402

from fair_runners.engine import AdaptiveLimiter, backoff_delay  # noqa: E402
from fair_runners.pacing import Pacer, SharedBudget, estimate_tokens, parse_rate_headers  # noqa: E402
from fair_runners.testing import LoopbackServer  # noqa: E402
from fair_runners.testing.ratelimit import RateLimitGate  # noqa: E402


@dataclass(frozen=True)
class Scenario:
    """One simulated run. Rates are the provider's; `budget_*` the pacer's explicit options."""

    name: str = "headers"
    sessions: int = 60
    turns: int = 5
    latency_s: float = 0.3  # median
    latency_sigma: float = 0.5
    requests_per_minute: float = 1200
    tokens_per_minute: float | None = None
    burst_requests: float | None = 10
    burst_tokens: float | None = None
    send_headers: bool = True
    budget_rpm: float | None = None
    budget_tpm: float | None = None
    prompt_chars: int = 40
    max_tokens: int | None = None
    max_in_flight: int = 60
    backoff_base_s: float = 0.5  # the engine's retry policy (`backoff_delay`), at least the Retry-After
    backoff_max_s: float = 20.0
    pacer: bool = True
    seed: int = 7

    def scaled(self, k: float) -> Scenario:
        """The same run `k` times faster: rates x k, latency / k (burst sizes kept)."""
        return replace(
            self,
            latency_s=self.latency_s / k,
            requests_per_minute=self.requests_per_minute * k,
            tokens_per_minute=self.tokens_per_minute * k if self.tokens_per_minute else None,
            burst_tokens=self.burst_tokens * k if self.burst_tokens else None,
            budget_rpm=self.budget_rpm * k if self.budget_rpm else None,
            budget_tpm=self.budget_tpm * k if self.budget_tpm else None,
            backoff_base_s=self.backoff_base_s / k,
            backoff_max_s=self.backoff_max_s / k,
        )

    def cost(self) -> int:
        """Tokens one request is charged (the same estimate on both sides: this is a pacing test)."""
        return estimate_tokens(["x" * self.prompt_chars], max_tokens=self.max_tokens)

    def floor_s(self, requests: int | None = None) -> float:
        """The shortest possible run: total requests (or tokens) / the provider's rate."""
        total = requests if requests is not None else self.sessions * self.turns
        floor = total / (self.requests_per_minute / 60)
        if self.tokens_per_minute:
            floor = max(floor, total * self.cost() / (self.tokens_per_minute / 60))
        return floor


SCENARIOS: dict[str, Scenario] = {
    "baseline": Scenario(name="baseline", pacer=False),
    "headers": Scenario(name="headers"),
    "budget": Scenario(name="budget", budget_rpm=1200),
    "no-headers": Scenario(name="no-headers", send_headers=False),
    "tokens": Scenario(
        name="tokens", sessions=20, turns=2, tokens_per_minute=60_000, prompt_chars=4_000, max_tokens=50
    ),
    "tokens-budget": Scenario(
        name="tokens-budget",
        sessions=20,
        turns=2,
        tokens_per_minute=60_000,
        prompt_chars=4_000,
        max_tokens=50,
        budget_tpm=60_000,
    ),
}


@dataclass
class ChatApp:
    """A chat endpoint that answers after a lognormal latency and reports usage (ASGI)."""

    latency_s: float
    sigma: float = 0.5
    seed: int = 7
    calls: int = 0
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.calls += 1
        data = json.loads(body or b"{}")
        usage = estimate_tokens(
            [m["content"] for m in data.get("messages", [])], max_tokens=data.get("max_tokens")
        )
        await asyncio.sleep(self.latency_s * math.exp(self.rng.gauss(0.0, self.sigma)))
        answer = json.dumps({"choices": [{"message": {"content": "ok"}}], "usage": {"total_tokens": usage}})
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer.encode()})


def gate_for(scenario: Scenario) -> RateLimitGate:
    """The provider: `ChatApp` behind a `RateLimitGate` with the scenario's limits."""

    def cost(body: bytes) -> int:
        data = json.loads(body)
        return estimate_tokens([m["content"] for m in data["messages"]], max_tokens=data.get("max_tokens"))

    app = ChatApp(scenario.latency_s, scenario.latency_sigma, scenario.seed)
    return RateLimitGate(
        app,
        requests_per_minute=scenario.requests_per_minute,
        tokens_per_minute=scenario.tokens_per_minute,
        burst_requests=scenario.burst_requests,
        burst_tokens=scenario.burst_tokens,
        send_headers=scenario.send_headers,
        token_cost=cost,
    )


@dataclass
class Tally:
    """What the client side saw."""

    attempts: int = 0
    rate_limited: int = 0
    done: int = 0
    queue_wait_s: float = 0.0


async def run_sessions(
    scenario: Scenario, url: str, *, pacer: Pacer | None, first: int = 0, count: int | None = None
) -> Tally:
    """Send `count` sessions (default: all) of `scenario` to `url`, each turn until it succeeds."""
    tally = Tally()
    limiter = AdaptiveLimiter(scenario.max_in_flight)
    prompt = "x" * scenario.prompt_chars
    body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": prompt}]}
    if scenario.max_tokens:
        body["max_tokens"] = scenario.max_tokens
    payload = json.dumps(body).encode()
    estimated = scenario.cost()
    connector = aiohttp.TCPConnector(limit=scenario.max_in_flight)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def turn() -> None:
            failures = 0
            while True:
                await limiter.acquire()
                if pacer is not None:
                    waited = await pacer.acquire(estimated)  # (not `+= await`: that loses updates)
                    tally.queue_wait_s += waited
                tally.attempts += 1
                try:
                    async with http.post(f"{url}/v1/chat/completions", data=payload) as response:
                        answer = await response.read()
                        signals = parse_rate_headers(response.headers)
                        status = response.status
                finally:
                    limiter.release()
                if pacer is not None and signals is not None:
                    pacer.observe(signals)
                if status == 429:
                    tally.rate_limited += 1
                    retry = signals.retry_after_s if signals else None
                    limiter.on_rate_limited(retry)
                    if pacer is not None:
                        pacer.on_rate_limited(retry)
                        pacer.release()
                    failures += 1
                    await asyncio.sleep(
                        backoff_delay(failures, scenario.backoff_base_s, scenario.backoff_max_s, retry)
                    )
                    continue
                limiter.on_success()
                if pacer is not None:
                    pacer.settle(estimated, json.loads(answer)["usage"]["total_tokens"])
                    pacer.release()
                tally.done += 1
                return

        async def session() -> None:
            for _ in range(scenario.turns):
                await turn()

        total = scenario.sessions if count is None else count
        await asyncio.gather(*(session() for _ in range(first, first + total)))
    return tally


def make_pacer(scenario: Scenario, shared: SharedBudget | None = None) -> Pacer | None:
    """The pacer the scenario asks for (None for the baseline: the AIMD limiter alone)."""
    if not scenario.pacer:
        return None
    return Pacer(
        requests_per_minute=scenario.budget_rpm, tokens_per_minute=scenario.budget_tpm, shared=shared
    )


def summary(
    scenario: Scenario, gate: RateLimitGate, wall: float, tally: Tally, **extra: Any
) -> dict[str, Any]:
    """The figures a run is judged by."""
    arrivals = len(gate.log.arrivals())
    floor = scenario.floor_s()
    return {
        "scenario": scenario.name,
        "wall_s": round(wall, 2),
        "floor_s": round(floor, 2),
        "ratio": round(wall / floor, 3),
        "attempts": arrivals,
        "rate_limited": gate.log.rejected,
        "rate_limited_share": round(gate.log.rejected / max(1, arrivals), 4),
        "done": tally.done,
        "max_accepted_1s": gate.log.max_in_window(1.0),
        "max_accepted_60s": gate.log.max_in_window(60.0),
        **extra,
    }


async def simulate(scenario: Scenario) -> dict[str, Any]:
    """Run `scenario` against its own gate on 127.0.0.1; the summary."""
    gate = gate_for(scenario)
    with LoopbackServer(gate) as server:
        pacer = make_pacer(scenario)
        start = time.monotonic()
        tally = await run_sessions(scenario, server.url, pacer=pacer)
        wall = time.monotonic() - start
        snapshot = asdict(pacer.snapshot()) if pacer is not None else None
        if pacer is not None:
            await pacer.aclose()
    mean_wait = tally.queue_wait_s / max(1, tally.attempts)
    return summary(scenario, gate, wall, tally, mean_queue_wait_s=round(mean_wait, 3), pacer=snapshot)


# -- one budget shared by several processes (invocations) through DynamoDB (moto) -------------------------


class AtomicMotoServer:
    """moto's server (the app `moto.server` serves) on 127.0.0.1, handling one request at a time.

    `moto.server.ThreadedMotoServer` runs requests in parallel threads, and moto's DynamoDB checks a
    condition and writes without a lock: two conditional writes on the same version can both succeed (seen
    with 16 threads x 60 conditional increments: 75 successes, final version 74). DynamoDB itself never does
    that, so the same app is served here behind a lock.
    """

    def __init__(self) -> None:
        import threading

        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        dispatcher = DomainDispatcherApplication(create_backend_app)
        lock = threading.Lock()

        def serialized(environ: Any, start_response: Any) -> Any:
            with lock:
                return list(dispatcher(environ, start_response))

        self._server = make_server(
            "127.0.0.1", 0, serialized, threaded=True, request_handler=MotoRequestHandler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, name="moto", daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"

    def __enter__(self) -> AtomicMotoServer:
        import logging

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._thread.start()
        self.reset()
        return self

    def reset(self) -> None:
        """Empty every table (moto's state is per process, shared by every server and mock in it)."""
        import urllib.request

        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as answer:
            answer.read()

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._thread.join(timeout=5)


def dynamodb_client(url: str) -> Any:
    """A DynamoDB client for a local moto server (test credentials, short timeouts)."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1})
    return boto3.client(
        "dynamodb",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=config,
    )


def create_rate_table(client: Any, name: str) -> None:
    """The table `SharedBudget` needs: partition key `bucket` (S), on demand, TTL on `expires_at`."""
    from fair_runners.pacing import KEY_ATTRIBUTE, TTL_ATTRIBUTE

    client.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": KEY_ATTRIBUTE, "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": KEY_ATTRIBUTE, "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    client.update_time_to_live(
        TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE}
    )


def shared_worker(
    index: int, processes: int, scenario: Scenario, urls: Any, barrier: Any, results: Any
) -> None:
    """One invocation: its share of the sessions, paced by a `Pacer` on the shared budget.

    Started before the servers are up (its imports overlap theirs): `urls` brings (gate, moto) URLs.
    """
    share, extra = divmod(scenario.sessions, processes)
    first = index * share + min(index, extra)
    count = share + (1 if index < extra else 0)
    gate_url, moto_url = urls.get(timeout=120)
    client = dynamodb_client(moto_url)
    shared = SharedBudget("bench-bucket", fan_out=processes, table="rates", client=client)
    barrier.wait()

    async def go() -> dict[str, Any]:
        pacer = make_pacer(scenario, shared)
        assert pacer is not None
        start = time.monotonic()
        tally = await run_sessions(scenario, gate_url, pacer=pacer, first=first, count=count)
        wall = time.monotonic() - start
        snapshot = pacer.snapshot()
        await pacer.aclose()
        return {
            "index": index,
            "wall_s": wall,
            "done": tally.done,
            "dynamodb_calls": shared.calls,
            "warning": snapshot.warning,
            "shared": snapshot.shared,
        }

    results.put(asyncio.run(go()))


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """No collection of the objects alive now while the block runs (`gc.freeze`), then back to normal.

    For a gate in a process with a big heap (a test process's): its clock is that process's, and a long
    collection would hold its requests back and then take them at once, past its burst. A fork inside the
    block also spares its children that collection.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def simulate_shared(
    *,
    processes: int = 8,
    scale: float = 1.0,
    sessions: int = 400,
    turns: int = 3,
    rpm: float = 1200,
    start_method: str = "spawn",
) -> dict[str, Any]:
    """`processes` invocations share one `requests_per_minute` budget (DynamoDB on moto) against one gate.

    The workers are started before any server thread runs, so `start_method="fork"` is safe (and saves each
    worker its imports: the tests use it).
    """
    import multiprocessing

    scenario = Scenario(
        name="shared", sessions=sessions, turns=turns, budget_rpm=rpm, requests_per_minute=rpm
    )
    scenario = scenario.scaled(scale)
    context: Any = multiprocessing.get_context(start_method)
    barrier = context.Barrier(processes + 1)
    urls, results = context.Queue(), context.Queue()
    workers = [
        context.Process(target=shared_worker, args=(i, processes, scenario, urls, barrier, results))
        for i in range(processes)
    ]
    with frozen_heap():
        for worker in workers:
            worker.start()
        gate = gate_for(scenario)
        with AtomicMotoServer() as moto, LoopbackServer(gate) as server:
            create_rate_table(dynamodb_client(moto.url), "rates")
            for _ in workers:
                urls.put((server.url, moto.url))
            barrier.wait(timeout=120)
            start = time.monotonic()
            reports = [results.get(timeout=600) for _ in workers]
            wall = time.monotonic() - start
            for worker in workers:
                worker.join(timeout=10)
    tally = Tally(done=sum(r["done"] for r in reports))
    calls_per_s = max(r["dynamodb_calls"] / r["wall_s"] for r in reports)
    return summary(
        scenario,
        gate,
        wall,
        tally,
        processes=processes,
        max_attempts_60s=gate.log.max_in_window(60.0 / scale, accepted_only=False),
        max_attempts_1s=gate.log.max_in_window(1.0 / scale, accepted_only=False),
        dynamodb_calls_per_s_max=round(calls_per_s, 2),
        warnings=sorted({r["warning"] for r in reports if r["warning"]}),
        shares=sorted({str(r["shared"]) for r in reports}),
    )


def main() -> None:
    """Run the named scenarios (default: all but the shared one) and print their summaries."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help=f"scenarios: {', '.join(SCENARIOS)}, shared")
    parser.add_argument("--scale", type=float, default=1.0, help="rates x scale, latency / scale")
    parser.add_argument("--processes", type=int, default=8, help="shared: invocations sharing the budget")
    args = parser.parse_args()
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", "")  # the estimate must not depend on this machine's cache
    for name in args.names or [*SCENARIOS, "shared"]:
        if name == "shared":
            result = simulate_shared(processes=args.processes, scale=args.scale)
        else:
            result = asyncio.run(simulate(SCENARIOS[name].scaled(args.scale)))
        result.pop("pacer", None)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
