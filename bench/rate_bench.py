"""fair-runners rate benchmark: the real engine against loopback providers that enforce rate limits.

Run from the repo root:  python bench/rate_bench.py [--only r1,r2,r3,b1] [--markdown PATH] [--json PATH]

Every provider is a loopback app behind `RateLimitGate` (429 + Retry-After + x-ratelimit-* headers, a burst
of 10 requests enforced) in its own process pinned to core 1; every invocation is a fresh process pinned to
core 0 that imports `handler.app` (the Lambda's init), then runs the request twice through
`fair_runners.run_sync` (or `lambda_handler`): cold (the process's first run; with no budget the pacer
probes) and warm (right after, in the same process). A query's delay is a pure function of its text
(`_workload.Latency`: lognormal, median 300 ms, sigma 0.5, from a SHA-256 of the query).

  R1  one invocation, 60 sessions x 5 turns, max_concurrency 60, max_attempts 8, against 1,200 requests/min:
      wall / floor (300 / 20 per s = 15 s) and the 429 share, both modes (LLM: ChatOpenAI on
      OpenAICompatServer; Alquimia: only the infer POST gated), with no options (<= 1.25x, <= 5%) and with
      requests_per_minute 1200 (<= 1.10x, <= 1%); and the peer: `abatch` rounds with LangChain's
      InMemoryRateLimiter(20/s, bucket 10) and max_retries 8 (the OpenAI SDK honours Retry-After).
  R2  fan-out: 8 Map batch invocations (`lambda_handler` on `{"Items", "BatchInput": {..., "fan_out": 8}}`),
      one process each, sharing requests_per_minute 1200 through the DynamoDB rate table (moto, atomic),
      400 sessions x 3 turns: wall <= 1.2x the floor (60 s), <= 2% 429; the busiest 60 s and 1 s windows.
      The batch processes import LangChain and boto3 before the start signal (8 on one core would
      otherwise spend seconds importing at once, which 8 Lambdas on their own CPUs do not).
  R3  tokens: 20 sessions x 3 turns, a 4,000-character context (~1,000 tokens), max_tokens 50, against
      60,000 tokens/min (and 60,000 requests/min): floor = the tokens the gate admitted / 1,000 per s;
      <= 1.2x, <= 5% 429; with no options and with tokens_per_minute 60000 (the two side by side, one
      provider each, the second started 8 s later so that the two cold starts do not share the core; at ~1
      request a second neither needs the CPU then; --r3-sequential to run them in turn).
  B1  Bedrock concurrency: 32 sessions x 3 turns at a fixed 500 ms on BedrockEmulator (no gate),
      max_concurrency 32: wall <= 1.3x the critical path (1.5 s); the emulator's peak calls in flight.

Writes the results as JSON (--json, default .bench/rate_results.json) and, with --markdown PATH, the table.
The children's stderr goes to .bench/rate-logs/.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import _rate_procs
from _harness import Pinning, calibration_s, loadavg, machine
from _rate_procs import ROOT, Child, Provider, child_env, client, peer
from _rate_report import Table, gate_stats, header, pace_digest
from _workload import API_KEY, MODEL, Latency, datasets

LATENCY = Latency(0.3, 0.5)
RPM = 1200
RUNS = ("cold", "warm")
BEDROCK_MODEL = "anthropic.claude-3-5-haiku-20241022-v1:0"
R3_CONTEXT = ("The benchmark context sentence, repeated to fill about one thousand tokens. " * 60)[:4000]
# Side by side, the second R3 configuration starts this much later: its cold start (imports, LangChain's
# ~2.5 s on this machine) then does not share core 0 with the first one's.
R3_STAGGER_S = 8.0
AWS_DUMMY = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def llm_connector(url: str, **params: Any) -> dict[str, Any]:
    """ChatOpenAI on the loopback OpenAI-compatible server."""
    base = {"model": MODEL, "api_key": API_KEY, "base_url": f"{url}/v1"}
    return {"class_path": "langchain_openai.ChatOpenAI", "params": base | params}


def request(mode: str, url: str, data: list[dict[str, Any]], **options: Any) -> dict[str, Any]:
    """A run request for `mode` against `url`."""
    if mode == "alquimia":
        config = {"base_url": url, "api_key": API_KEY, "agent_id": "bench"}
        return {"datasets": data, "config": config, "options": options}
    return {"datasets": data, "connector": llm_connector(url), "options": options}


def drive(children: list[Child], provider: Provider, runs: int = len(RUNS)) -> list[dict[str, Any]]:
    """Start every run of every child at once (after all are ready); each run's results and gate log."""
    try:
        ready = [child.read() for child in children]
        out = []
        for _ in range(runs):
            for child in children:
                child.send("go")
            results = [child.read() for child in children]
            dump = provider.dump()
            start, end = min(r["start"] for r in results), max(r["end"] for r in results)
            arrivals = dump.pop("arrivals")
            gate = gate_stats(arrivals, start, end)
            run = {"start": start, "end": end, "wall_s": round(end - start, 4), "gate": gate}
            # Every arrival, for a look afterwards: [ms since the run's start, accepted, tokens].
            run["arrivals"] = [[round((at - start) * 1000, 1), ok, tokens] for at, ok, tokens in arrivals]
            out.append(run | {"processes": results} | dump)
        out[0]["import_s"] = [r["import_s"] for r in ready]
        return out
    finally:
        for child in children:
            child.close()


def _digest(run: dict[str, Any]) -> None:
    for process in run["processes"]:
        if "pace" in process:
            process["pace_digest"] = pace_digest(process["pace"])


def _rate_rows(
    table: Table, name: str, runs: list[dict[str, Any]], floor_s: float | None, limits: Any
) -> None:
    """Wall / floor and the 429 share of each run against `limits` (ratio, share) or none."""
    for label, run in zip(RUNS, runs, strict=True):
        _digest(run)
        gate = run["gate"]
        floor = floor_s if floor_s is not None else gate["tokens_admitted"] / 1000.0
        run["floor_s"], run["ratio"] = round(floor, 3), round(run["wall_s"] / floor, 4)
        done = sum(p["successes"] for p in run["processes"])
        turns = sum(p["turns"] for p in run["processes"])
        note = (
            f"wall {run['wall_s']:.2f} s, floor {floor:.2f} s; {done}/{turns} turns ok; "
            f"{gate['rejected']} 429 of {gate['arrivals']} arrivals; first send at {gate['first_send_s']} s"
        )
        if limits is None:
            table.info(name, label, "wall / floor", f"{run['ratio']:.3f}x", note)
            table.info(name, label, "429 share", f"{gate['share_429'] * 100:.2f}%")
            continue
        table.check(name, label, "wall / floor", run["ratio"], limits[0], "x")
        table.rows[-1].note = note
        table.check(name, label, "429 share", gate["share_429"], limits[1], "%")
        _after_build(table, name, label, run, floor)


def _after_build(
    table: Table, name: str, label: str, run: dict[str, Any], floor: float, what: str = "floor"
) -> None:
    """For a cold run whose runner took a while to build (LangChain's import): the ratio from then on."""
    built = run["processes"][0].get("marks", {}).get("engine_started_s")
    if label != "cold" or built is None or built < 0.2:
        return
    ratio = (run["wall_s"] - built) / floor
    table.info(
        name,
        label,
        f"wall after the runner was built / {what}",
        f"{ratio:.3f}x",
        f"the engine started {built:.2f} s into the run (`RunStarted`): `prepare` imports the LangChain "
        "class first",
    )


def r1(pin: Pinning, table: Table) -> dict[str, Any]:
    """R1: one invocation, both modes, no options and an explicit budget; the `abatch` peer."""
    out: dict[str, Any] = {"floor_s": 15.0}
    configs = [
        ("no options", {}, (1.25, 0.05)),
        ("requests_per_minute 1200", {"requests_per_minute": RPM}, (1.10, 0.01)),
    ]
    gate_args = ["--latency", LATENCY.spec(), "--rpm", str(RPM), "--burst", "10"]
    for mode in ("llm", "alquimia"):
        for label, options, limits in configs:
            name = f"R1 {mode}, {label}"
            key = f"r1-{mode}-{'budget' if options else 'none'}"
            with Provider(
                ["--app", mode, *gate_args], core=pin.servers, log_name=f"{key}-server"
            ) as provider:
                data = datasets(60, 5)
                req = request(mode, provider.url, data, max_concurrency=60, max_attempts=8, **options)
                job = {"api": "run_sync", "request": req, "runs": len(RUNS)}
                env = child_env(FAIR_RUNNERS_ALLOWED_HOSTS=provider.host)
                runs = drive([client(job, name=key, core=pin.invocation, env=env)], provider)
            _rate_rows(table, name, runs, 15.0, limits)
            out[key] = runs
    with Provider(["--app", "llm", *gate_args], core=pin.servers, log_name="r1-peer-server") as provider:
        flags = ["--url", provider.url, "--sessions", "60", "--turns", "5", "--concurrency", "60"]
        flags += ["--rps", "20", "--bucket", "10", "--max-retries", "8", "--runs", str(len(RUNS))]
        child = peer(flags, name="r1-peer", core=pin.invocation, env=child_env())
        runs = drive([child], provider)
    name = "R1 peer: abatch rounds + InMemoryRateLimiter(20/s, bucket 10), max_retries 8"
    _rate_rows(table, name, runs, 15.0, None)
    imported = runs[0]["import_s"][0]
    table.info(name, "cold", "LangChain import + model build, before its first run", f"{imported:.2f} s")
    table.rows[-1].note = "not in the peer's walls (a user's script imports first); ours include it"
    out["r1-peer"] = runs
    return out


def r2(pin: Pinning, table: Table, processes: int = 8) -> dict[str, Any]:
    """R2: `processes` Map batch invocations sharing one budget through the DynamoDB table."""
    sessions, turns = 400, 3
    args = ["--app", "llm", "--latency", LATENCY.spec(), "--rpm", str(RPM), "--burst", "10"]
    args += ["--moto", "rates"]
    with Provider(args, core=pin.servers, log_name="r2-server") as provider:
        data = datasets(sessions, turns)
        options = {"max_concurrency": 50, "max_attempts": 8, "requests_per_minute": RPM}
        env = child_env(
            FAIR_RUNNERS_ALLOWED_HOSTS=provider.host,
            FAIR_RUNNERS_RATE_TABLE="rates",
            AWS_ENDPOINT_URL_DYNAMODB=str(provider.moto),
            **AWS_DUMMY,
        )
        share = sessions // processes
        children = []
        for i in range(processes):
            batch = {
                "Items": data[i * share : (i + 1) * share],
                "BatchInput": {
                    "connector": llm_connector(provider.url),
                    "options": options,
                    "fan_out": processes,
                },
            }
            job = {
                "api": "lambda",
                "request": batch,
                "runs": len(RUNS),
                "preimport": ["langchain_openai", "boto3"],
            }
            children.append(client(job, name=f"r2-batch-{i}", core=pin.invocation, env=env))
        runs = drive(children, provider)
    floor = sessions * turns / (RPM / 60)
    name = f"R2 fan-out: {processes} batch processes, requests_per_minute 1200 shared"
    for label, run in zip(RUNS, runs, strict=True):
        gate = run["gate"]
        run["floor_s"], run["ratio"] = floor, round(run["wall_s"] / floor, 4)
        firsts = sorted(
            round(p["start"] - min(q["start"] for q in run["processes"]), 3) for p in run["processes"]
        )
        walls = [p["wall_s"] for p in run["processes"]]
        done = sum(p["successes"] for p in run["processes"])
        note = (
            f"wall {run['wall_s']:.2f} s, floor {floor:.0f} s; {done}/{sessions * turns} turns ok; "
            f"first send at {gate['first_send_s']} s; batch walls {min(walls):.1f}-{max(walls):.1f} s; "
            f"starts spread {firsts[-1]:.3f} s"
        )
        table.check(name, label, "wall / floor", run["ratio"], 1.2, "x")
        table.rows[-1].note = note
        table.check(name, label, "429 share", gate["share_429"], 0.02, "%")
        table.info(
            name,
            label,
            "most requests in any 60 s / 1 s (/ 100 ms)",
            f"{gate['max_accepted_60s']:g} / {gate['max_accepted_1s']:g} accepted; "
            f"{gate['max_arrivals_60s']:g} / {gate['max_arrivals_1s']:g} / "
            f"{gate['max_arrivals_100ms']:g} arrivals",
            "limit 1,200 a minute, 20 a second + burst 10",
        )
        samples = [s for s in run.get("table", []) if run["start"] <= s[0] <= run["end"]]
        if samples:
            writes = samples[-1][1] - samples[0][1]
            table.info(
                name,
                label,
                "rate table, read once a second",
                f"live holders {min(s[2] for s in samples)}-{max(s[2] for s in samples)}; their shares "
                f"summed to at most {max(s[3] for s in samples):g} requests/min",
                f"{writes} conditional writes over {samples[-1][0] - samples[0][0]:.0f} s",
            )
        warnings = sorted({w for p in run["processes"] for w in p["warnings"] if "rate budget" in w})
        table.info(name, label, "shared-budget warnings", "; ".join(warnings)[:300] or "none")
    return {"floor_s": floor, "processes": processes, "runs": runs}


def _r3_one(pin: Pinning, options: dict[str, Any], key: str, delay_s: float) -> list[dict[str, Any]]:
    time.sleep(delay_s)
    args = ["--app", "llm", "--latency", LATENCY.spec(), "--rpm", "60000", "--tpm", "60000"]
    with Provider(args, core=pin.servers, log_name=f"{key}-server") as provider:
        data = datasets(20, 3, context=R3_CONTEXT)
        req = request("llm", provider.url, data, max_concurrency=20, max_attempts=8, **options)
        req["connector"]["params"]["max_tokens"] = 50
        job = {"api": "run_sync", "request": req, "runs": len(RUNS)}
        env = child_env(FAIR_RUNNERS_ALLOWED_HOSTS=provider.host)
        return drive([client(job, name=key, core=pin.invocation, env=env)], provider)


def r3(pin: Pinning, table: Table, parallel: bool) -> dict[str, Any]:
    """R3: a token-limited provider, no options and tokens_per_minute 60000."""
    configs = [
        ("no options", {}, "r3-none"),
        ("tokens_per_minute 60000", {"tokens_per_minute": 60000}, "r3-budget"),
    ]
    with ThreadPoolExecutor(max_workers=2 if parallel else 1) as pool:
        futures = [
            pool.submit(_r3_one, pin, options, key, R3_STAGGER_S * i if parallel else 0.0)
            for i, (_, options, key) in enumerate(configs)
        ]
        results = [future.result() for future in futures]
    out: dict[str, Any] = {"parallel": parallel}
    for (label, _, key), runs in zip(configs, results, strict=True):
        _rate_rows(table, f"R3 tokens, {label}", runs, None, (1.2, 0.05))
        out[key] = runs
    return out


def b1(pin: Pinning, table: Table) -> dict[str, Any]:
    """B1: Bedrock (a sync SDK behind the engine) keeps 32 calls in flight."""
    critical = 3 * 0.5
    with Provider(
        ["--app", "bedrock", "--latency", "fixed:500"], core=pin.servers, log_name="b1-server"
    ) as provider:
        connector = {"model": f"bedrock_converse:{BEDROCK_MODEL}", "params": {"region_name": "us-east-1"}}
        req = {"datasets": datasets(32, 3), "connector": connector, "options": {"max_concurrency": 32}}
        env = child_env(AWS_ENDPOINT_URL_BEDROCK_RUNTIME=provider.url, **AWS_DUMMY)
        job = {"api": "run_sync", "request": req, "runs": len(RUNS)}
        runs = drive([client(job, name="b1", core=pin.invocation, env=env)], provider)
    name = "B1 Bedrock 32x3 @ 500 ms, max_concurrency 32"
    for label, run in zip(RUNS, runs, strict=True):
        _digest(run)
        run["ratio"] = round(run["wall_s"] / critical, 4)
        process = run["processes"][0]
        gate = run["gate"]
        table.check(name, label, "wall / critical path (1.5 s)", run["ratio"], 1.3, "x")
        table.rows[-1].note = (
            f"wall {run['wall_s']:.2f} s; {process['successes']}/{process['turns']} turns ok; first call at "
            f"{gate['first_send_s']} s, second at {gate['second_send_s']} s"
        )
        _after_build(table, name, label, run, critical, "critical path")
        peak = str(run.get("peak_in_flight"))
        table.info(name, label, "emulator's peak calls in flight", peak, f"{gate['arrivals']} calls")
    return {"critical_path_s": critical, "runs": runs}


def main() -> None:
    """Run the chosen workloads; write the JSON (and the markdown table)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="r1,r2,r3,b1", help="comma-separated: r1, r2, r3, b1")
    parser.add_argument("--json", type=Path, default=ROOT / ".bench" / "rate_results.json")
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument(
        "--r3-sequential", action="store_true", help="R3's two configurations one after the other"
    )
    parser.add_argument(
        "--preload",
        action="store_true",
        help="children import the providers when they import handler.app, as a deployment with env "
        "FAIR_RUNNERS_PRELOAD=openai,bedrock_converse does at Lambda init",
    )
    args = parser.parse_args()
    if args.preload:
        _rate_procs.PRELOAD["FAIR_RUNNERS_PRELOAD"] = "openai,bedrock_converse"
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(chosen) - {"r1", "r2", "r3", "b1"}
    if unknown:
        parser.error(f"--only: unknown workload(s) {sorted(unknown)}; use r1, r2, r3, b1")
    pin = Pinning.choose()
    started, started_utc = time.monotonic(), datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    facts: dict[str, Any] = {
        "command": "python bench/rate_bench.py " + " ".join(sys.argv[1:]),
        "preload": _rate_procs.PRELOAD.get("FAIR_RUNNERS_PRELOAD"),
        "started_utc": started_utc,
        "machine": machine(),
        "pinning": pin.describe().replace("servers", "providers"),
        "calibration_s": calibration_s(pin.invocation),
        "loadavg": {"before": loadavg()},
    }
    table = Table()
    results: dict[str, Any] = {}
    steps = {"r1": lambda: r1(pin, table), "r2": lambda: r2(pin, table), "b1": lambda: b1(pin, table)}
    steps["r3"] = lambda: r3(pin, table, parallel=not args.r3_sequential)
    for name in ("r1", "r2", "r3", "b1"):
        if name in chosen:
            begun = time.monotonic()
            results[name] = steps[name]()
            results[name]["duration_s"] = round(time.monotonic() - begun, 1)
            print(f"{name} done in {results[name]['duration_s']} s", file=sys.stderr, flush=True)
    facts["loadavg"]["after"] = loadavg()
    facts["duration_s"] = round(time.monotonic() - started, 1)
    markdown = header(facts) + "\n\n" + table.markdown() + "\n"
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"facts": facts, "results": results, "table": markdown}, indent=1))
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
