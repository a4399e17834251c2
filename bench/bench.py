"""fair-runners benchmark: speed against the sequential Fair-Forge baseline, CPU and memory, cold start.

Run from the repo root:  python bench/bench.py          (or `make bench`)

The loopback servers run in a separate process (their CPU is not the runner's); each workload runs through the
real `lambda_handler` in a fresh process; the Fair-Forge baseline runs in its own virtualenv
(`.bench/venv-fairforge`, created on first use with `alquimia-fair-forge==3.0.0` and `alquimia-client`).

Workloads, side by side in one run:
  (a) --sessions x --turns at --latency-ms, --concurrency sessions in flight, both modes: wall time vs the
      critical path (turns x latency; target <= 1.5x) and vs the sequential baseline (target >= 30x faster).
  (b) --cpu-sessions x --cpu-turns at 0 ms: runner CPU ms per turn (target <= 0.5) and peak RSS (<= 250 MB).
  (c) cold start: `import handler.app` in a fresh interpreter, median of --import-runs (target <= 0.4 s),
      and whether LangChain got loaded (it must not be).

Flags: --only a,b,c  --no-baseline  --setup-only  --fallback-baseline (skip the package, use the built-in
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


@contextmanager
def servers(latency_ms: float) -> Iterator[dict[str, str]]:
    """Both loopback servers in a separate process, with the given latency."""
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "_serve.py"), "--latency-ms", str(latency_ms)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the benchmark servers did not start")
        yield json.loads(line)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _json_line(cmd: list[str], timeout: float = 900) -> dict[str, Any]:
    done = subprocess.run(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=timeout
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed (exit {done.returncode})")
    return json.loads(lines[-1])  # type: ignore[no-any-return]


def measure(mode: str, url: str, sessions: int, turns: int, concurrency: int) -> dict[str, Any]:
    """One workload through `lambda_handler` in a fresh process."""
    cmd = [sys.executable, str(BENCH / "_measure.py"), "--mode", mode, "--url", url]
    cmd += ["--sessions", str(sessions), "--turns", str(turns), "--concurrency", str(concurrency)]
    cmd += ["--provider", "groq"]  # the class the baseline virtualenv has too (alquimia-fair-forge needs it)
    return _json_line(cmd)


def baseline(mode: str, url: str, sessions: int, turns: int, fallback: bool) -> dict[str, Any]:
    """The sequential Fair-Forge baseline, in its own virtualenv (or this one for the fallback loop)."""
    python = sys.executable if fallback and mode == "alquimia" else str(_ff_python())
    cmd = [python, str(BENCH / "_fairforge_baseline.py"), "--mode", mode, "--url", url]
    cmd += ["--sessions", str(sessions), "--turns", str(turns)]
    if fallback:
        cmd.append("--fallback")
    return _json_line(cmd)


def cold_start(runs: int) -> dict[str, Any]:
    """`import handler.app` in fresh interpreters: median seconds, and whether LangChain was loaded."""
    code = (
        "import sys, time, json; t = time.perf_counter(); import handler.app; t = time.perf_counter() - t; "
        "print(json.dumps({'s': t, 'langchain': any(m.startswith('langchain') for m in sys.modules)}))"
    )
    samples = [_json_line([sys.executable, "-c", code]) for _ in range(runs)]
    times = [s["s"] for s in samples]
    return {
        "median_s": round(statistics.median(times), 4),
        "min_s": round(min(times), 4),
        "max_s": round(max(times), 4),
        "runs": runs,
        "langchain_loaded": any(s["langchain"] for s in samples),
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
            critical = speed["critical_path_s"]
            lines.append(
                f"| {label} | wall time | {_fmt(row['wall_s'], ' s')} | <= {_fmt(critical * 1.5, ' s')} "
                f"(1.5x critical path {_fmt(critical, ' s')}) | "
                + (
                    f"{_fmt(row['baseline']['wall_s'], ' s')} | **{row['speedup']:.0f}x** faster |"
                    if row.get("baseline")
                    else "not run | - |"
                )
            )
    cpu = results.get("cpu")
    if cpu:
        label = f"{cpu['sessions']}x{cpu['turns']} @ 0 ms, alquimia"
        lines.append(f"| {label} | runner CPU per turn | {cpu['cpu_ms_per_turn']:.3f} ms | <= 0.5 ms | | |")
        lines.append(f"| {label} | peak RSS | {cpu['peak_rss_mb']:.0f} MB | <= 250 MB | | |")
    cold = results.get("cold_start")
    if cold:
        loaded = "yes (FAIL)" if cold["langchain_loaded"] else "no"
        lines.append(
            f"| cold start | `import handler.app`, median of {cold['runs']} | {cold['median_s']:.3f} s "
            f"(LangChain loaded: {loaded}) | <= 0.4 s | | |"
        )
    return "\n".join(lines)


def main() -> int:
    """Run the selected workloads, print the table, write the JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="a,b,c", help="which workloads: a (speed), b (cpu), c (cold start)")
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--cpu-sessions", type=int, default=2000)
    parser.add_argument("--cpu-turns", type=int, default=5)
    parser.add_argument("--cpu-concurrency", type=int, default=50)
    parser.add_argument("--import-runs", type=int, default=7)
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
                row = measure(mode, urls[mode], args.sessions, args.turns, args.concurrency)
                row["vs_critical_path"] = round(row["wall_s"] / speed["critical_path_s"], 3)
                if not args.no_baseline and not (fallback and mode == "llm" and not _ff_python().exists()):
                    base = baseline(mode, urls[mode], args.sessions, args.turns, fallback)
                    row["baseline"] = base
                    row["speedup"] = round(base["wall_s"] / row["wall_s"], 1)
                speed["modes"][mode] = row
        results["speed"] = speed
    if "b" in only:
        with servers(0.0) as urls:
            results["cpu"] = measure(
                "alquimia", urls["alquimia"], args.cpu_sessions, args.cpu_turns, args.cpu_concurrency
            ) | {"sessions": args.cpu_sessions, "turns": args.cpu_turns}
    if "c" in only:
        results["cold_start"] = cold_start(args.import_runs)
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
