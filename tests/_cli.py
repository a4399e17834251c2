"""Run the `fair-runners` command line (or a probe script) in a subprocess, as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def cli_env(**extra: str) -> dict[str, str]:
    """The test process's env (loopback hosts allowed by the fixtures) plus `extra`, importing this tree."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    env["POWERTOOLS_METRICS_DISABLED"] = "true"
    env.update(extra)
    return env


def cli(
    *args: str, timeout: float = 60, input: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    """`python -m fair_runners.cli ARGS` from the repository root; stdout and stderr captured."""
    return subprocess.run(
        [sys.executable, "-m", "fair_runners.cli", *args],
        cwd=ROOT,
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        check=False,
    )


def probe(code: str, *args: str, input: Any, env: dict[str, str], timeout: float = 120) -> Any:
    """Run `code` in a fresh interpreter from the repository root with `input` as JSON on stdin; the JSON
    of its last stdout line (the run must succeed: its stderr's end is the failure message)."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        input=json.dumps(input),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
