"""fair-runners benchmark: speed against the sequential Fair-Forge baseline, CPU and memory, cold start.

Run from the repo root:  python bench/bench.py          (or `make bench`)

The loopback servers run in a separate process (their CPU is not the runner's); each workload runs through the
real `lambda_handler` in a fresh process; the Fair-Forge baseline runs in its own virtualenv
(`.bench/venv-fairforge`, created on first use with `alquimia-fair-forge==3.0.0` and `alquimia-client`).
The servers get uvloop + httptools from `.bench/server-site` (also installed on first use). Each workload
runs in a warmed process (one 1-turn request first), as in a warm Lambda; so does the baseline. LLM mode runs
(a) twice per process and reports both: the first run forks the worker processes, the next finds them kept.

Workloads, side by side in one run:
  (a) --sessions x --turns at --latency-ms, --concurrency sessions in flight, both modes: wall time vs the
      critical path (turns x latency; target <= 1.5x) and vs the sequential baseline (target >= 30x faster).
  (b) --cpu-sessions x --cpu-turns at 0 ms: runner CPU ms per turn (target <= 0.5) and peak RSS (<= 250 MB).
  (d) --llm-sessions x --llm-turns at 0 ms in LLM mode, where the provider SDK makes the run CPU-bound:
      throughput with every turn in one process (FAIR_RUNNERS_WORKERS=1) and with the worker processes
      `auto` picks on this machine.
  (c) cold start: `import handler.app` in a fresh interpreter, median of --import-runs (target <= 0.4 s),
      and whether LangChain got loaded (it must not be).

Flags: --only a,b,c,d  --no-baseline  --setup-only  --fallback-baseline (skip the package, use the built-in
sequential loop)  --json PATH (default .bench/results.json)  --markdown PATH (also write the table there).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
FF_VENV = ROOT / ".bench" / "venv-fairforge"
FF_PACKAGES = ["alquimia-fair-forge==3.0.0", "alquimia-client"]
# uvloop + httptools for the loopback servers only (uvicorn picks them up): the stand-in backend shares this
# machine with the runner, so it should cost as little CPU as it can. Never on the runner's path.
SERVER_SITE = ROOT / ".bench" / "server-site"
SERVER_PACKAGES = ["uvloop>=0.19", "httptools>=0.6"]


def _ff_python() -> Path:
    return FF_VENV / "bin" / "python"


def setup_baseline() -> str | None:
    """Create the Fair-Forge virtualenv if needed; None when ready, else why it could not be made."""
    python = _ff_python()
    if python.exists():
        probe = subprocess.run(
            [str(python), "-c", "import fair_forge.runners, alquimia_client"], capture_output=True
        )
        if probe.returncode == 0:
            return None
    print(f"setting up the Fair-Forge baseline in {FF_VENV} (one time) ...", file=sys.stderr)
    base = os.environ.get("BENCH_BASELINE_PYTHON", "python3.11")
    steps = [
        [base, "-m", "venv", str(FF_VENV)],
        [str(python), "-m", "pip", "install", "-q", *FF_PACKAGES],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            return f"{' '.join(step[:4])} failed: {(done.stderr or done.stdout).strip()[-300:]}"
    return None


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux /proc; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def setup_server_site() -> str | None:
    """Install the servers' speed-ups into .bench/server-site; None when ready, else why not."""
    if (SERVER_SITE / "uvloop").exists() and (SERVER_SITE / "httptools").exists():
        return None
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--target", str(SERVER_SITE), *SERVER_PACKAGES]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return (done.stderr or done.stdout).strip()[-300:]
    return None


@contextmanager
def servers(latency_ms: float) -> Iterator[dict[str, Any]]:
    """Both loopback servers in a separate process, with the given latency."""
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "_serve.py"), "--latency-ms", str(latency_ms)],
        env={**os.environ, "PYTHONPATH": str(SERVER_SITE)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the benchmark servers did not start")
        yield {**json.loads(line), "pid": proc.pid}
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _json_line(cmd: list[str], timeout: float = 900, env: dict[str, str] | None = None) -> dict[str, Any]:
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def measure(
    mode: str, url: str, sessions: int, turns: int, concurrency: int, workers: str = "auto", runs: int = 1
) -> dict[str, Any]:
    """One workload through `lambda_handler` in a fresh process (`runs` times in it)."""
    cmd = [sys.executable, str(BENCH / "_measure.py"), "--mode", mode, "--url", url, "--runs", str(runs)]
    cmd += ["--sessions", str(sessions), "--turns", str(turns), "--concurrency", str(concurrency)]
    cmd += ["--provider", "groq"]  # the class the baseline virtualenv has too (alquimia-fair-forge needs it)
    env = {**os.environ, "FAIR_RUNNERS_WORKERS": workers}
    return _json_line(cmd, env=env)


def baseline(mode: str, url: str, sessions: int, turns: int, fallback: bool) -> dict[str, Any]:
    """The sequential Fair-Forge baseline, in its own virtualenv (or this one for the fallback loop)."""
    python = sys.executable if fallback and mode == "alquimia" else str(_ff_python())
    cmd = [python, str(BENCH / "_fairforge_baseline.py"), "--mode", mode, "--url", url]
    cmd += ["--sessions", str(sessions), "--turns", str(turns)]
    if fallback:
        cmd.append("--fallback")
    return _json_line(cmd)


_COLD = """
import json, os, sys, time
t0 = time.perf_counter()
import handler.app
t1 = time.perf_counter()
url = sys.argv[1]
os.environ["FAIR_RUNNERS_ALLOWED_HOSTS"] = url.split("://", 1)[1]
request = {
    "datasets": [{"session_id": "s", "assistant_id": "a", "conversation": [{"qa_id": "q", "query": "hi"}]}],
    "config": {"base_url": url, "api_key": "bench-key", "agent_id": "bench"},
}
stdout, sys.stdout = sys.stdout, open(os.devnull, "w")
result = handler.app.lambda_handler(request, None)
t2 = time.perf_counter()
sys.stdout = stdout
langchain = any(m.split(".")[0].startswith("langchain") for m in sys.modules)
ok = result["totals"]["successes"] == 1
print(json.dumps({"import_s": t1 - t0, "first_s": t2 - t0, "langchain": langchain, "ok": ok}))
"""


def cold_start(runs: int, url: str) -> dict[str, Any]:
    """Fresh interpreters: `import handler.app`, then a first 1-turn Alquimia request; medians in seconds."""
    samples = [_json_line([sys.executable, "-c", _COLD, url]) for _ in range(runs)]
    imports = [s["import_s"] for s in samples]
    firsts = [s["first_s"] for s in samples]
    return {
        "median_s": round(statistics.median(imports), 4),
        "min_s": round(min(imports), 4),
        "max_s": round(max(imports), 4),
        "import_and_first_request_median_s": round(statistics.median(firsts), 4),
        "runs": runs,
        "langchain_loaded": any(s["langchain"] for s in samples),
        "first_requests_ok": all(s["ok"] for s in samples),
    }


def _fmt(value: float, unit: str = "") -> str:
    return f"{value:.3g}{unit}" if value < 10 else f"{value:.1f}{unit}"


def table(results: dict[str, Any]) -> str:
    """The markdown table for the README."""
    lines = [
        "| Workload | Measure | fair-runners | Target | Sequential Fair-Forge | Ratio |",
        "|---|---|---|---|---|---|",
    ]
    speed = results.get("speed")
    if speed:
        for mode, row in speed["modes"].items():
            label = f"{speed['sessions']}x{speed['turns']} @ {speed['latency_ms']:g} ms, {mode}"
            if row.get("workers", 1) > 1:
                label += f" ({row['workers']} worker processes)"
            critical = speed["critical_path_s"]
            shown = [("wall_s", "speedup", "")]
            if "next_wall_s" in row:
                shown = [
                    ("wall_s", "speedup", ", first run in a process (forks the workers)"),
                    ("next_wall_s", "next_speedup", ", next run (the workers kept)"),
                ]
            for key, ratio, what in shown:
                lines.append(
                    f"| {label} | wall time{what} (median of {len(row.get('wall_s_runs', [1]))}) "
                    f"| {_fmt(row[key], ' s')} | <= {_fmt(critical * 1.5, ' s')} "
                    f"(1.5x critical path {_fmt(critical, ' s')}) | "
                    + (
                        f"{_fmt(row['baseline']['wall_s'], ' s')} | **{row[ratio]:.0f}x** faster |"
                        if row.get("baseline")
                        else "not run | - |"
                    )
                )
    cpu = results.get("cpu")
    if cpu:
        label = f"{cpu['sessions']}x{cpu['turns']} @ 0 ms, alquimia"
        lines.append(f"| {label} | runner CPU per turn | {cpu['cpu_ms_per_turn']:.3f} ms | <= 0.5 ms | | |")
        lines.append(f"| {label} | peak RSS | {cpu['peak_rss_mb']:.0f} MB | <= 250 MB | | |")
    llm = results.get("llm_throughput")
    if llm:
        label = f"{llm['sessions']}x{llm['turns']} @ 0 ms, llm"
        one, auto = llm["one_process"], llm["auto"]
        lines.append(
            f"| {label} | throughput, every turn in one process | {one['turns_per_s']:.0f} turns/s "
            f"({one['wall_s']:.2f} s) | | | |"
        )
        lines.append(
            f"| {label} | throughput, {auto['workers']} worker processes (`auto`) "
            f"| {auto['turns_per_s']:.0f} turns/s ({auto['wall_s']:.2f} s) | | "
            f"| **{llm['speedup']:.2f}x** one process |"
        )
    cold = results.get("cold_start")
    if cold:
        loaded = "yes (FAIL)" if cold["langchain_loaded"] else "no"
        lines.append(
            f"| cold start | `import handler.app`, median of {cold['runs']} | {cold['median_s']:.3f} s "
            f"(LangChain loaded: {loaded}) | <= 0.4 s | | |"
        )
        lines.append(
            f"| cold start | import + first 1-turn Alquimia request | "
            f"{cold['import_and_first_request_median_s']:.3f} s | | | |"
        )
    return "\n".join(lines)


def main() -> int:
    """Run the selected workloads, print the table, write the JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only", default="a,b,c,d", help="workloads: a (speed), b (cpu), c (cold start), d (llm throughput)"
    )
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--cpu-sessions", type=int, default=2000)
    parser.add_argument("--cpu-turns", type=int, default=5)
    parser.add_argument("--cpu-concurrency", type=int, default=50)
    parser.add_argument("--llm-sessions", type=int, default=200)
    parser.add_argument("--llm-turns", type=int, default=5)
    parser.add_argument("--import-runs", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=5, help="runs of each (a) workload; the median counts")
    parser.add_argument("--no-baseline", action="store_true", help="skip the sequential baseline")
    parser.add_argument(
        "--fallback-baseline", action="store_true", help="built-in sequential loop, no package"
    )
    parser.add_argument("--setup-only", action="store_true", help="create the baseline virtualenv and exit")
    parser.add_argument("--json", type=Path, default=ROOT / ".bench" / "results.json")
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()
    only = set(args.only.split(","))

    fallback = args.fallback_baseline
    notes: list[str] = []
    if not args.no_baseline and not fallback and ("a" in only or args.setup_only):
        problem = setup_baseline()
        if problem:
            fallback = True
            notes.append(
                f"alquimia-fair-forge could not be installed ({problem}): using the built-in "
                "faithful sequential baseline instead"
            )
    problem = setup_server_site()
    if problem:
        notes.append(f"uvloop/httptools not installed for the loopback servers ({problem}): slower servers")
    if args.setup_only:
        print("\n".join(notes) or f"baseline ready: {_ff_python()}")
        return 0

    results: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["python", "bench/bench.py", *sys.argv[1:]]),
    }
    if "a" in only:
        speed: dict[str, Any] = {
            "sessions": args.sessions,
            "turns": args.turns,
            "latency_ms": args.latency_ms,
            "concurrency": args.concurrency,
            "critical_path_s": args.turns * args.latency_ms / 1000,
            "baseline": "none"
            if args.no_baseline
            else ("fallback loop" if fallback else "alquimia-fair-forge 3.0.0"),
            "modes": {},
        }
        with servers(args.latency_ms) as urls:
            for mode in ("alquimia", "llm"):
                server_cpu = process_cpu_s(urls["pid"])
                # The median of --repeat fresh processes: one run on a shared 2-core machine is noisy.
                # LLM mode: twice in each process, as a warm Lambda's next invocation, which finds the
                # worker processes the first one forked.
                shape = (mode, urls[mode], args.sessions, args.turns, args.concurrency)
                per_process = 2 if mode == "llm" else 1
                runs = sorted(
                    (measure(*shape, runs=per_process) for _ in range(args.repeat)),
                    key=lambda r: float(r["wall_s"]),
                )
                row = runs[len(runs) // 2]
                row["wall_s_runs"] = [r["wall_s"] for r in runs]
                nexts = sorted(later[0] for later in (r.pop("next_wall_s") for r in runs) if later)
                if nexts:  # the median of the second runs, next to the first runs' median
                    row["next_wall_s_runs"] = nexts
                    row["next_wall_s"] = nexts[len(nexts) // 2]
                # The loopback server's CPU per run (warm-up included): when it nears the wall time, the
                # server, not the runner, sets the pace on this machine.
                row["server_cpu_s"] = round((process_cpu_s(urls["pid"]) - server_cpu) / args.repeat, 3)
                row["vs_critical_path"] = round(row["wall_s"] / speed["critical_path_s"], 3)
                if not args.no_baseline and not (fallback and mode == "llm" and not _ff_python().exists()):
                    base = baseline(mode, urls[mode], args.sessions, args.turns, fallback)
                    row["baseline"] = base
                    row["speedup"] = round(base["wall_s"] / row["wall_s"], 1)
                    if "next_wall_s" in row:
                        row["next_speedup"] = round(base["wall_s"] / row["next_wall_s"], 1)
                speed["modes"][mode] = row
        results["speed"] = speed
    if "b" in only:
        with servers(0.0) as urls:
            server_cpu = process_cpu_s(urls["pid"])
            results["cpu"] = measure(
                "alquimia", urls["alquimia"], args.cpu_sessions, args.cpu_turns, args.cpu_concurrency
            ) | {"sessions": args.cpu_sessions, "turns": args.cpu_turns}
            results["cpu"]["server_cpu_s"] = round(process_cpu_s(urls["pid"]) - server_cpu, 3)
    if "d" in only:
        with servers(0.0) as urls:
            shape = ("llm", urls["llm"], args.llm_sessions, args.llm_turns, args.cpu_concurrency)
            best: dict[str, dict[str, Any]] = {}
            for workers in ("1", "auto"):  # median of 3 fresh processes each
                runs = sorted((measure(*shape, workers=workers) for _ in range(3)), key=lambda r: r["wall_s"])
                row = runs[1] | {"wall_s_runs": [r["wall_s"] for r in runs]}
                row["turns_per_s"] = round(args.llm_sessions * args.llm_turns / row["wall_s"], 1)
                best["one_process" if workers == "1" else "auto"] = row
            results["llm_throughput"] = {
                "sessions": args.llm_sessions,
                "turns": args.llm_turns,
                **best,
                "speedup": round(best["one_process"]["wall_s"] / best["auto"]["wall_s"], 2),
            }
    if "c" in only:
        with servers(0.0) as urls:
            results["cold_start"] = cold_start(args.import_runs, urls["alquimia"])
    results["notes"] = notes
    markdown = table(results)
    results["markdown"] = markdown
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    if args.markdown:
        args.markdown.write_text(markdown + "\n")
    for note in notes:
        print(f"note: {note}")
    print(markdown)
    print(f"\nresults: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
