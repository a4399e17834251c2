"""Run the `fair-runners` command line in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
