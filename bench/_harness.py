"""Benchmark plumbing: one-time setup, core pinning, the servers' process, child processes that print JSON."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _workload import Latency

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
FF_VENV = ROOT / ".bench" / "venv-fairforge"
FF_PACKAGES = ["alquimia-fair-forge==3.0.0", "alquimia-client"]
# uvloop + httptools for the loopback servers only (uvicorn picks them up): the stand-in backend should cost
# as little CPU as it can. Never on the measured process's path.
SERVER_SITE = ROOT / ".bench" / "server-site"
SERVER_PACKAGES = ["uvloop>=0.19", "httptools>=0.6"]
# Only the Lambda's runtime dependencies (pyproject `dependencies`), at the versions installed here: the cold
# start imports what the deployed function imports (the dev virtualenv also holds the `local` extra's rich,
# which `import httpx` then loads for its command line).
LAMBDA_VENV = ROOT / ".bench" / "venv-lambda"


def ff_python() -> Path:
    """The Fair-Forge baseline's interpreter."""
    return FF_VENV / "bin" / "python"


def setup_baseline() -> str | None:
    """Create the Fair-Forge virtualenv if needed; None when ready, else why it could not be made."""
    python = ff_python()
    if python.exists():
        probe = [str(python), "-c", "import fair_forge.runners, alquimia_client"]
        if subprocess.run(probe, capture_output=True).returncode == 0:
            return None
    print(f"setting up the Fair-Forge baseline in {FF_VENV} (one time) ...", file=sys.stderr)
    base = os.environ.get("BENCH_BASELINE_PYTHON", "python3.11")
    for step in (
        [base, "-m", "venv", str(FF_VENV)],
        [str(python), "-m", "pip", "install", "-q", *FF_PACKAGES],
    ):
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            return f"{' '.join(step[:4])} failed: {(done.stderr or done.stdout).strip()[-300:]}"
    return None


def lambda_python() -> Path:
    """The interpreter of the Lambda-dependencies virtualenv."""
    return LAMBDA_VENV / "bin" / "python"


def setup_lambda_venv() -> str | None:
    """Create or refresh `.bench/venv-lambda`; None when ready, else why it could not be made."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = sorted(
        f"{dist.metadata['Name']}=={dist.version}"
        for dist in importlib.metadata.distributions()
        if dist.metadata["Name"] and dist.metadata["Name"].lower() != "fair-runners"
    )
    wanted = hashlib.sha256("\n".join([*deps, "--", *pins]).encode()).hexdigest()
    stamp = LAMBDA_VENV / ".bench-deps"
    if lambda_python().exists() and stamp.exists() and stamp.read_text() == wanted:
        return None
    print(f"setting up the Lambda's dependencies in {LAMBDA_VENV} ...", file=sys.stderr)
    constraints = ROOT / ".bench" / "lambda-constraints.txt"
    constraints.parent.mkdir(parents=True, exist_ok=True)
    constraints.write_text("\n".join(pins) + "\n")
    python = str(lambda_python())
    for step in (
        [sys.executable, "-m", "venv", "--clear", str(LAMBDA_VENV)],
        [python, "-m", "pip", "install", "-q", "-c", str(constraints), *deps],
    ):
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            return f"{' '.join(step[:4])} failed: {(done.stderr or done.stdout).strip()[-300:]}"
    stamp.write_text(wanted)
    return None


def setup_server_site() -> str | None:
    """Install the servers' speed-ups into .bench/server-site; None when ready, else why not."""
    if (SERVER_SITE / "uvloop").exists() and (SERVER_SITE / "httptools").exists():
        return None
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--target", str(SERVER_SITE), *SERVER_PACKAGES]
    done = subprocess.run(cmd, capture_output=True, text=True)
    return None if done.returncode == 0 else (done.stderr or done.stdout).strip()[-300:]


@dataclass(frozen=True)
class Pinning:
    """Which core the measured process gets and which the servers get (None: not pinned)."""

    invocation: int | None
    servers: int | None

    @classmethod
    def choose(cls) -> Pinning:
        """The first two cores this process may use; no pinning on a one-core machine."""
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        return cls(cores[0], cores[1]) if len(cores) >= 2 else cls(None, None)

    def describe(self) -> str:
        """One line for the table's header."""
        if self.invocation is None:
            return "not pinned (fewer than two usable cores): invocation and servers share the CPU"
        return f"invocation pinned to core {self.invocation}, servers to core {self.servers}"


def _pin(core: int | None) -> Callable[[], None] | None:
    if core is None:
        return None
    return lambda: os.sched_setaffinity(0, {core})


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux /proc; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages (empty where /proc/loadavg is missing)."""
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


@contextmanager
def servers(latency: Latency, core: int | None) -> Iterator[dict[str, Any]]:
    """Both loopback servers in their own process, on `core`; yields their URLs and the process id."""
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "_serve.py"), "--latency", latency.spec()],
        env={**os.environ, "PYTHONPATH": str(SERVER_SITE)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=_pin(core),
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
            proc.wait()


def json_line(cmd: list[str], core: int | None, timeout: float = 900) -> dict[str, Any]:
    """Run `cmd` (pinned to `core`) from the repo root; its last stdout line that is a JSON object."""
    done = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, preexec_fn=_pin(core)
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed (exit {done.returncode}): {done.stderr[-2000:]}")
    return json.loads(lines[-1])  # type: ignore[no-any-return]


_CALIBRATION = """
import time
t = time.perf_counter()
d = {}
for i in range(2_000_000):
    d[i % 1000] = str(i)
print('{"s": %f}' % (time.perf_counter() - t))
"""


def calibration_s(core: int | None, runs: int = 3) -> float:
    """Seconds a fixed pure-Python loop takes on `core` (median of `runs`): this machine's speed right now,
    to compare runs made at different times (a shared VM's speed drifts)."""
    samples = [float(json_line([sys.executable, "-c", _CALIBRATION], core)["s"]) for _ in range(runs)]
    return round(statistics.median(samples), 3)


def machine() -> dict[str, Any]:
    """CPU model, cores, Python and platform of this machine."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
