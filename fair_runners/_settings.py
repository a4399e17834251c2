"""Deployment settings read from the environment, with the built-in defaults in one place.

| env variable                       | default | meaning                                              |
|------------------------------------|---------|------------------------------------------------------|
| FAIR_RUNNERS_MAX_CONCURRENCY       | 16      | sessions in flight when the request does not say     |
| FAIR_RUNNERS_MAX_CONCURRENCY_CAP   | 256     | the highest `max_concurrency` a request may ask for  |
| FAIR_RUNNERS_TURN_TIMEOUT_S        | 60      | per-attempt timeout                                   |
| FAIR_RUNNERS_CONNECT_TIMEOUT_S     | 10      | TCP/TLS connect timeout (HTTP runners)               |
| FAIR_RUNNERS_MAX_ATTEMPTS          | 3       | attempts per turn for transient failures             |
| FAIR_RUNNERS_SAFETY_MARGIN_S       | 3       | kept free before the Lambda's own timeout            |
| FAIR_RUNNERS_HTTP_DEADLINE_S       | 27      | run budget for API Gateway events (~29 s hard limit) |
| FAIR_RUNNERS_WORKERS               | auto    | LLM-mode worker processes (`auto`: one per vCPU)     |

`auto` workers: one per vCPU the function really has (on Lambda, 1 per 1,769 MB of memory, since Lambda shows
two CPUs to every function but throttles the small ones), and one per 8 sessions at most, so a small run
never pays for a fork.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ._errors import ConfigurationError

# Lambda gives a function one vCPU's worth of time per 1,769 MB of memory (documented figure).
_LAMBDA_MB_PER_VCPU = 1769
# `auto` forks a worker only for at least this many sessions each (a fork costs ~5-10 ms).
MIN_SESSIONS_PER_WORKER = 8


def _env_number(name: str, default: float, minimum: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"env {name} must be a number, got {raw!r}") from None
    if not value >= minimum:
        raise ConfigurationError(f"env {name} must be >= {minimum}, got {raw!r}")
    return value


@dataclass(frozen=True)
class Settings:
    """Effective deployment settings."""

    max_concurrency: int = 16
    max_concurrency_cap: int = 256
    turn_timeout_s: float = 60.0
    connect_timeout_s: float = 10.0
    max_attempts: int = 3
    safety_margin_s: float = 3.0
    http_deadline_s: float = 27.0
    backoff_base_s: float = 0.5
    backoff_max_s: float = 20.0
    workers: int | None = None  # None: auto

    @classmethod
    def from_env(cls) -> Settings:
        """Read the settings from the environment (see the module docstring)."""
        return cls(
            max_concurrency=int(_env_number("FAIR_RUNNERS_MAX_CONCURRENCY", 16, 1)),
            max_concurrency_cap=int(_env_number("FAIR_RUNNERS_MAX_CONCURRENCY_CAP", 256, 1)),
            turn_timeout_s=_env_number("FAIR_RUNNERS_TURN_TIMEOUT_S", 60.0, 0.001),
            connect_timeout_s=_env_number("FAIR_RUNNERS_CONNECT_TIMEOUT_S", 10.0, 0.001),
            max_attempts=int(_env_number("FAIR_RUNNERS_MAX_ATTEMPTS", 3, 1)),
            safety_margin_s=_env_number("FAIR_RUNNERS_SAFETY_MARGIN_S", 3.0, 0.0),
            http_deadline_s=_env_number("FAIR_RUNNERS_HTTP_DEADLINE_S", 27.0, 1.0),
            backoff_base_s=_env_number("FAIR_RUNNERS_BACKOFF_BASE_S", 0.5, 0.0),
            backoff_max_s=_env_number("FAIR_RUNNERS_BACKOFF_MAX_S", 20.0, 0.0),
            workers=_env_workers(),
        )

    def worker_count(self, sessions: int) -> int:
        """Worker processes for an LLM run of `sessions` sessions (1 means: in this process)."""
        if self.workers is not None:
            return max(1, min(self.workers, sessions))
        return max(1, min(available_vcpus(), sessions // MIN_SESSIONS_PER_WORKER))


def _env_workers() -> int | None:
    raw = os.environ.get("FAIR_RUNNERS_WORKERS", "").strip()
    if raw in ("", "auto"):
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigurationError(f"env FAIR_RUNNERS_WORKERS must be 'auto' or an integer >= 1, got {raw!r}")
    return int(raw)


def available_vcpus() -> int:
    """CPUs this process may use; on Lambda, the share its memory size buys (at least 1)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    memory = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "")
    if memory.isdigit():
        cpus = min(cpus, max(1, round(int(memory) / _LAMBDA_MB_PER_VCPU)))
    return max(1, cpus)
