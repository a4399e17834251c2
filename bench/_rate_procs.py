"""Benchmark plumbing for `rate_bench.py`: the provider's process and the measured processes, each pinned to a
core, talking in JSON lines (see `_rate_serve.py`, `_rate_client.py`, `_rate_peer.py`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import IO, Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
LOGS = ROOT / ".bench" / "rate-logs"
# The variables a child keeps from this environment; everything else (AWS profiles, endpoints, keys a
# developer has set) is left out, so that the children talk only to the loopback servers.
_KEPT = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")


# `rate_bench.py --preload`: env FAIR_RUNNERS_PRELOAD of every child (providers imported at "init").
PRELOAD: dict[str, str] = {}


def child_env(**extra: str) -> dict[str, str]:
    """A clean environment for a child: the kept variables, quiet Powertools, the character token estimate
    (tiktoken's cache disabled: the gate counts characters / 4, and so must the estimate), the preload
    when chosen, plus `extra`."""
    env = {name: os.environ[name] for name in _KEPT if name in os.environ} | PRELOAD
    env |= {
        "POWERTOOLS_LOG_LEVEL": "WARNING",
        "POWERTOOLS_METRICS_NAMESPACE": "FairRunnersRateBench",
        "TIKTOKEN_CACHE_DIR": "",
        "PYTHONUNBUFFERED": "1",
    }
    return env | extra


def _pin(core: int | None) -> Any:
    if core is None:
        return None
    return lambda: os.sched_setaffinity(0, {core})


class Child:
    """A child process speaking `@@`-prefixed JSON lines on stdout, its stderr in a log file."""

    def __init__(self, cmd: list[str], *, core: int | None, env: dict[str, str], log_name: str) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        self.log_path = LOGS / f"{log_name}.log"
        self.script = Path(cmd[1]).name
        self._log: IO[str] = self.log_path.open("w")
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            preexec_fn=_pin(core),
        )

    def read(self) -> dict[str, Any]:
        """The next `@@` line, as a dict (other lines are skipped); raises if the child ends first."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("@@"):
                return json.loads(line[2:])  # type: ignore[no-any-return]
        self.proc.wait()
        tail = self.log_path.read_text()[-3000:]
        raise RuntimeError(f"{self.script} ended (exit {self.proc.returncode}) without a result:\n{tail}")

    def send(self, line: str) -> None:
        """Write one line to the child's stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        """Close its stdin and wait for it (killed after 30 s)."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


class Provider:
    """`_rate_serve.py` in its own process: `url`, `moto`, and `dump()`: the arrivals since the last dump."""

    def __init__(self, args: list[str], *, core: int | None, log_name: str) -> None:
        cmd = [sys.executable, str(BENCH / "_rate_serve.py"), *args]
        self._child = Child(cmd, core=core, env=child_env(), log_name=log_name)
        self.url = ""
        self.moto: str | None = None

    def __enter__(self) -> Provider:
        assert self._child.proc.stdout is not None
        line = self._child.proc.stdout.readline()
        if not line:
            self._child.close()
            raise RuntimeError(f"the provider did not start: {self._child.log_path.read_text()[-2000:]}")
        info = json.loads(line)
        self.url, self.moto = info["url"], info["moto"]
        return self

    def dump(self) -> dict[str, Any]:
        """Arrivals (and Bedrock's peak in flight) since the last dump."""
        self._child.send("dump")
        assert self._child.proc.stdout is not None
        return json.loads(self._child.proc.stdout.readline())  # type: ignore[no-any-return]

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`, for FAIR_RUNNERS_ALLOWED_HOSTS."""
        return self.url.split("://", 1)[1]

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._child.close()


def client(job: dict[str, Any], *, name: str, core: int | None, env: dict[str, str]) -> Child:
    """`_rate_client.py` with `job` (written to .bench/rate-logs/NAME.job.json); ready to take `go`."""
    LOGS.mkdir(parents=True, exist_ok=True)
    path = LOGS / f"{name}.job.json"
    path.write_text(json.dumps(job))
    cmd = [sys.executable, str(BENCH / "_rate_client.py"), "--job", str(path)]
    return Child(cmd, core=core, env=env, log_name=name)


def peer(args: list[str], *, name: str, core: int | None, env: dict[str, str]) -> Child:
    """`_rate_peer.py` with `args`; ready to take `go`."""
    return Child([sys.executable, str(BENCH / "_rate_peer.py"), *args], core=core, env=env, log_name=name)
