"""fair-runners benchmark: latency-bound runs against their critical path, the LangChain `abatch` peer, the
sequential Fair-Forge reference, and the cold start.

Run from the repo root:  python bench/bench.py          (or `make bench`)

The loopback servers run in their own process (uvloop + httptools from `.bench/server-site`), pinned to one
core; each measured run is a fresh process pinned to another core (on a one-core machine nothing is pinned,
and the table says so), warmed by one 1-turn request, as a warm Lambda is. A query's delay is a pure function
of its text (`_workload.Latency`), so each workload's critical path (the longest session's summed delays) is
exact.

  W1  256 sessions x 4 turns, lognormal delays (median 800 ms, sigma 0.5), max_concurrency 256, both modes
      (Alquimia agent; LLM mode with ChatOpenAI, or ChatGroq with --provider groq) through `lambda_handler`:
      wall time / critical path (<= 1.10x), invocation CPU per turn (<= 1.5 ms Alquimia, <= 4 ms LLM),
      peak RSS (<= 200 MB). Median of --repeat runs.
  W2  the peer: what a LangChain user writes instead, one `model.abatch(..., config={"max_concurrency": N})`
      per round of turns with each session's history, same model class, server, workload and pinning.
      Ours (W1's LLM runs) no slower than the peer by more than 5% (median walls). Runs interleaved with W1's.
  W3  50 sessions x 6 turns at a fixed 50 ms, both modes, against the sequential Fair-Forge runner
      (`.bench/venv-fairforge`: alquimia-fair-forge==3.0.0): x times faster (>= 30x).
  cold  `import handler.app` in a fresh interpreter, median of --import-runs (<= 0.4 s); LangChain not loaded.
        Twice: with only the Lambda's runtime dependencies (`.bench/venv-lambda`, same versions as here),
        and in this (dev) virtualenv.

Flags: --only w1,w2,w3,cold  --repeat N  --provider openai|groq  --no-baseline  --fallback-baseline (the
built-in sequential loop instead of the package)  --setup-only  --json PATH (default .bench/results.json)
--markdown PATH (also write the table there)  --w1-sessions --w1-turns --w3-sessions --w3-turns (smaller
runs, to try the harness).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _harness import (
    BENCH,
    ROOT,
    Pinning,
    calibration_s,
    ff_python,
    json_line,
    lambda_python,
    loadavg,
    machine,
    process_cpu_s,
    servers,
    setup_baseline,
    setup_lambda_venv,
    setup_server_site,
)
from _report import summarize, table, verdict_lines
from _workload import API_KEY, Latency, Workload


def ours(mode: str, urls: dict[str, Any], work: Workload, core: int | None, **flags: Any) -> dict[str, Any]:
    """One run of `work` through `lambda_handler` in a fresh process; the servers' CPU during it too."""
    cmd = [sys.executable, str(BENCH / "_measure.py"), "--mode", mode, "--url", urls[mode]]
    cmd += ["--sessions", str(work.sessions), "--turns", str(work.turns)]
    cmd += ["--concurrency", str(work.concurrency), "--latency", work.latency.spec()]
    cmd += ["--provider", flags.get("provider", "openai")]
    if flags.get("no_history"):
        cmd.append("--no-history")
    return _timed(cmd, urls, core)


def peer(urls: dict[str, Any], work: Workload, core: int | None, provider: str) -> dict[str, Any]:
    """One run of `work` as `abatch` rounds (LLM mode) in a fresh process."""
    cmd = [sys.executable, str(BENCH / "_peer.py"), "--url", urls["llm"], "--provider", provider]
    cmd += ["--sessions", str(work.sessions), "--turns", str(work.turns)]
    cmd += ["--concurrency", str(work.concurrency)]
    return _timed(cmd, urls, core)


def _timed(cmd: list[str], urls: dict[str, Any], core: int | None) -> dict[str, Any]:
    load, server0 = loadavg(), process_cpu_s(urls["pid"])
    row = json_line(cmd, core)
    # The servers' CPU over the whole process (warm-up included): when it nears the wall time, the servers,
    # not the measured process, set the pace.
    row["server_cpu_s"] = round(process_cpu_s(urls["pid"]) - server0, 3)
    row["loadavg_start"] = load
    if row["failures"]:
        print(
            f"warning: {row['failures']} failed turns in {Path(cmd[1]).name} {row['mode']}", file=sys.stderr
        )
    return row


def baseline(mode: str, url: str, work: Workload, fallback: bool, core: int | None) -> dict[str, Any]:
    """The sequential Fair-Forge baseline, in its own virtualenv (or this one for the fallback loop)."""
    python = sys.executable if fallback and mode == "alquimia" else str(ff_python())
    cmd = [python, str(BENCH / "_fairforge_baseline.py"), "--mode", mode, "--url", url]
    cmd += ["--sessions", str(work.sessions), "--turns", str(work.turns)]
    if fallback:
        cmd.append("--fallback")
    return json_line(cmd, core) | {"loadavg_start": loadavg()}


_COLD = """
import json, os, sys, time
t0 = time.perf_counter()
import handler.app
t1 = time.perf_counter()
url, key = sys.argv[1], sys.argv[2]
os.environ["FAIR_RUNNERS_ALLOWED_HOSTS"] = url.split("://", 1)[1]
request = {
    "datasets": [{"session_id": "s", "assistant_id": "a", "conversation": [{"qa_id": "q", "query": "hi"}]}],
    "config": {"base_url": url, "api_key": key, "agent_id": "bench"},
}
stdout, sys.stdout = sys.stdout, open(os.devnull, "w")
result = handler.app.lambda_handler(request, None)
t2 = time.perf_counter()
sys.stdout = stdout
langchain = any(m.split(".")[0].startswith("langchain") for m in sys.modules)
ok = result["totals"]["successes"] == 1
print(json.dumps({"import_s": t1 - t0, "first_s": t2 - t0, "langchain": langchain, "ok": ok}))
"""


def cold_start(pythons: dict[str, str], runs: int, url: str, core: int | None) -> dict[str, Any]:
    """Fresh interpreters: `import handler.app`, then a first 1-turn Alquimia request; medians in seconds.

    Each of `pythons` (name -> interpreter) runs from the repo root, so it imports this checkout's `handler`
    and `fair_runners` with its own site-packages; their runs alternate, so drift hits them alike."""
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in pythons}
    for _ in range(runs):
        for name, python in pythons.items():
            samples[name].append(json_line([python, "-c", _COLD, url, API_KEY], core))
    found: dict[str, Any] = {}
    for name, taken in samples.items():
        imports = [round(s["import_s"], 4) for s in taken]
        found[name] = {
            "median_s": round(statistics.median(imports), 4),
            "samples_s": imports,
            "import_and_first_request_median_s": round(statistics.median(s["first_s"] for s in taken), 4),
            "runs": runs,
            "langchain_loaded": any(s["langchain"] for s in taken),
            "first_requests_ok": all(s["ok"] for s in taken),
        }
    return found


def run_w1_w2(args: argparse.Namespace, pins: Pinning, only: set[str]) -> dict[str, Any]:
    """W1 (both modes) and W2 (the peer), their runs interleaved so drift on the machine hits all alike."""
    work = Workload("W1", args.w1_sessions, args.w1_turns, Latency(0.8, 0.5), 256)
    modes = ["alquimia", "llm"] if "w1" in only else ["llm"]
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in [*modes, "peer"]}
    with servers(work.latency, pins.servers) as urls:
        for n in range(args.repeat):
            for mode in modes:
                runs[mode].append(ours(mode, urls, work, pins.invocation, provider=args.provider))
            if "w2" in only:
                runs["peer"].append(peer(urls, work, pins.invocation, args.provider))
            print(f"W1/W2 round {n + 1}/{args.repeat} done, load {loadavg()}", file=sys.stderr)
    label = work.label().replace(f", {work.concurrency} in flight", f", max_concurrency {work.concurrency}")
    found: dict[str, Any] = {}
    if "w1" in only:
        found["w1"] = {
            "workload": work.describe(),
            "label": label,
            "provider": args.provider,
            "modes": {m: summarize(runs[m]) for m in modes},
        }
    if "w2" in only:
        mine, theirs = summarize(runs["llm"]), summarize(runs["peer"])
        found["w2"] = {
            "workload": work.describe(),
            "label": label,
            "provider": args.provider,
            "ours": mine,
            "peer": theirs,
            "ratio": round(mine["wall_s"] / theirs["wall_s"], 4),
        }
    return found


def run_w3(args: argparse.Namespace, pins: Pinning, fallback: bool) -> dict[str, Any]:
    """W3: ours (median of --repeat) and the sequential baseline (once), both modes."""
    work = Workload("W3", args.w3_sessions, args.w3_turns, Latency(0.05), 50)
    name = "none" if args.no_baseline else ("fallback loop" if fallback else "alquimia-fair-forge 3.0.0")
    found: dict[str, Any] = {
        "workload": work.describe(),
        "label": work.label(),
        "provider": "groq",  # the class the baseline's virtualenv has (alquimia-fair-forge depends on it)
        "baseline": name,
        "modes": {},
    }
    with servers(work.latency, pins.servers) as urls:
        for mode in ("alquimia", "llm"):
            # The reference loop sends no history (see _fairforge_baseline.py): neither does ours here.
            row: dict[str, Any] = {
                "ours": summarize(
                    [
                        ours(mode, urls, work, pins.invocation, provider=found["provider"], no_history=True)
                        for _ in range(args.repeat)
                    ]
                )
            }
            if not args.no_baseline and not (fallback and mode == "llm" and not ff_python().exists()):
                base = baseline(mode, urls[mode], work, fallback, pins.invocation)
                row["baseline"] = base
                row["speedup"] = round(base["wall_s"] / row["ours"]["wall_s"], 1)
            found["modes"][mode] = row
            print(f"W3 {mode} done, load {loadavg()}", file=sys.stderr)
    return found


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="w1,w2,w3,cold", help="any of w1, w2, w3, cold (comma-separated)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each W1/W2/W3 row; the median counts")
    parser.add_argument("--provider", choices=["openai", "groq"], default="openai", help="W1/W2 model class")
    parser.add_argument("--w1-sessions", type=int, default=256)
    parser.add_argument("--w1-turns", type=int, default=4)
    parser.add_argument("--w3-sessions", type=int, default=50)
    parser.add_argument("--w3-turns", type=int, default=6)
    parser.add_argument("--import-runs", type=int, default=7)
    parser.add_argument("--no-baseline", action="store_true", help="skip the sequential baseline")
    parser.add_argument(
        "--fallback-baseline", action="store_true", help="built-in sequential loop, no package"
    )
    parser.add_argument("--setup-only", action="store_true", help="create the baseline virtualenv and exit")
    parser.add_argument("--json", type=Path, default=ROOT / ".bench" / "results.json")
    parser.add_argument("--markdown", type=Path, default=None)
    return parser


def main() -> int:
    """Run the selected workloads, print the table and the verdicts, write the JSON (and markdown)."""
    args = _parser().parse_args()
    only = set(args.only.split(","))
    fallback, notes = args.fallback_baseline, []
    if not args.no_baseline and not fallback and ("w3" in only or args.setup_only):
        problem = setup_baseline()
        if problem:
            fallback = True
            notes.append(
                f"alquimia-fair-forge not installed ({problem}): the built-in sequential loop is used"
            )
    problem = setup_server_site()
    if problem:
        notes.append(f"uvloop/httptools not installed for the loopback servers ({problem}): slower servers")
    lambda_ready = "cold" in only or args.setup_only
    if lambda_ready and (problem := setup_lambda_venv()):
        lambda_ready = False
        notes.append(f"no Lambda-dependencies virtualenv ({problem}): cold start in the dev virtualenv only")
    if args.setup_only:
        print("\n".join([*notes, f"ready: {ff_python()}, {lambda_python()}"]))
        return 0

    pins = Pinning.choose()
    results: dict[str, Any] = {
        "machine": machine() | {"calibration_s": calibration_s(pins.invocation)},
        "pinning": pins.describe(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python", "bench/bench.py", *sys.argv[1:]]),
        "loadavg_start": loadavg(),
    }
    if only & {"w1", "w2"}:
        results |= run_w1_w2(args, pins, only)
    if "w3" in only:
        results["w3"] = run_w3(args, pins, fallback)
    if "cold" in only:
        pythons = ({"lambda": str(lambda_python())} if lambda_ready else {}) | {"dev": sys.executable}
        with servers(Latency(0.0), pins.servers) as urls:
            results["cold_start"] = cold_start(pythons, args.import_runs, urls["alquimia"], pins.invocation)
    results["loadavg_end"] = loadavg()
    results["notes"] = notes
    markdown = table(results)
    results["markdown"] = markdown
    results["verdicts"] = verdict_lines(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    if args.markdown:
        args.markdown.write_text(markdown + "\n")
    for note in notes:
        print(f"note: {note}")
    print(markdown)
    print(f"\nload average: {results['loadavg_start']} at the start, {results['loadavg_end']} at the end")
    print("\n".join(["", *results["verdicts"]]))
    print(f"\nresults: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
