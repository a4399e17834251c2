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
| FAIR_RUNNERS_MAX_ANSWER_BYTES      | 2097152 | a reply body, SSE line or event (decoded); stream: 64x |
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ._errors import ConfigurationError


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
    max_answer_bytes: int = 2 * 1024 * 1024

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
            max_answer_bytes=int(_env_number("FAIR_RUNNERS_MAX_ANSWER_BYTES", 2 * 1024 * 1024, 1024)),
        )
