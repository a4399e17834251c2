"""Rate budgets: who sets them, and what a request may do with them.

A deployer sets budgets for the keys the deployment holds in env `FAIR_RUNNERS_RATE_LIMITS`, a JSON object
from target to `{"rpm": ..., "tpm": ...}`. Targets, most specific first: `"<provider>:<model>"` (the provider
names of `connector.model`: `openai`, `groq`, `anthropic`, `azure_openai`, `bedrock_converse`, ...),
`"<provider>"`, `"alquimia:<agent_id>"`, `"alquimia"`, `"*"`. Example:

    FAIR_RUNNERS_RATE_LIMITS='{"openai:gpt-4o-mini": {"rpm": 5000, "tpm": 2000000}, "alquimia": {"rpm": 600}}'

For a deployment key (and the Lambda role, for Bedrock) the deployer's budget applies, and a request's
`options.requests_per_minute` / `tokens_per_minute` can only lower its own draw. For a key the caller brings,
the request's values define that key's own bucket (the deployer's map does not apply to it).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

from ._errors import ConfigurationError

ENV = "FAIR_RUNNERS_RATE_LIMITS"


@dataclass(frozen=True)
class RateBudget:
    """Requests and tokens per minute (None: not limited)."""

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None

    @property
    def limited(self) -> bool:
        """True when either rate is set."""
        return self.requests_per_minute is not None or self.tokens_per_minute is not None


def deployment_budgets() -> dict[str, RateBudget]:
    """The deployer's budgets by target (env `FAIR_RUNNERS_RATE_LIMITS`); `ConfigurationError` if bad."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return {}
    try:
        table = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"env {ENV} is not valid JSON ({exc.msg})") from None
    if not isinstance(table, dict):
        raise ConfigurationError(f'env {ENV} must be a JSON object: {{"<target>": {{"rpm": n, "tpm": n}}}}')
    budgets: dict[str, RateBudget] = {}
    for target, entry in table.items():
        if not isinstance(entry, dict) or not set(entry) <= {"rpm", "tpm"}:
            raise ConfigurationError(f'env {ENV}: {target!r} must map to {{"rpm": n, "tpm": n}}')
        rates = [entry.get("rpm"), entry.get("tpm")]
        for name, value in zip(("rpm", "tpm"), rates, strict=True):
            if value is not None and not (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
                and value > 0
            ):
                raise ConfigurationError(
                    f"env {ENV}: {target}.{name} must be a positive number, got {value!r}"
                )
        budgets[str(target)] = RateBudget(rates[0], rates[1])
    return budgets


def resolve_budget(
    names: Sequence[str],
    *,
    deployment_key: bool,
    asked: RateBudget,
    table: dict[str, RateBudget] | None = None,
) -> RateBudget:
    """The budget a run paces to: the deployer's (first of `names` found, then `"*"`), lowered by what the
    request asked; or, for a caller's own key, what the request asked."""
    if not deployment_key:
        return asked
    table = deployment_budgets() if table is None else table
    found = next((table[name] for name in [*names, "*"] if name in table), RateBudget())
    return RateBudget(
        _lower(found.requests_per_minute, asked.requests_per_minute),
        _lower(found.tokens_per_minute, asked.tokens_per_minute),
    )


def _lower(deployer: float | None, asked: float | None) -> float | None:
    if deployer is None:
        return asked
    if asked is None:
        return deployer
    return min(deployer, asked)
