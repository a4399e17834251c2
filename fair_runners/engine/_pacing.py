"""The engine's side of rate pacing: one `Pacer` per run, what an earlier run in this process learned of the
same provider, and the shared budget table when the deployment has one.

A warm Lambda's next run starts from what the last one learned of the same bucket (same origin, class, model
and key): the limits its headers announced, or that it sends none, so only a process's first run pays the
pacer's probe (its first request going alone).
"""

from __future__ import annotations

import os

from .._budgets import RateBudget
from ..pacing import ENV_TABLE, Pacer, RateSignals, SharedBudget

# bucket id -> (learned requests/min, learned tokens/min): what the last run in this process saw.
_LEARNED: dict[str, tuple[float | None, float | None]] = {}


def open_pacer(
    bucket: str, budget: RateBudget, *, fan_out: int | None, reports_headers: bool = True
) -> Pacer:
    """A pacer for one run against `bucket`, sharing the budget through the table named by env
    `FAIR_RUNNERS_RATE_TABLE` when there is one; without it, one of a fan-out (`fan_out` > 1: a Map batch)
    paces to an even share with a warning, a lone run to the whole budget. A runner that never reports headers
    gets no probe: its first request could teach the pacer nothing."""
    shared = None
    if budget.limited and (os.environ.get(ENV_TABLE) or (fan_out or 1) > 1):
        shared = SharedBudget(bucket, fan_out=fan_out or 1)
    learned = _LEARNED.get(bucket)
    pacer = Pacer(
        requests_per_minute=budget.requests_per_minute,
        tokens_per_minute=budget.tokens_per_minute,
        shared=shared,
        probe=learned is None and reports_headers,
    )
    if learned is not None and (learned[0] or learned[1]):
        pacer.observe(RateSignals(limit_requests=learned[0], limit_tokens=learned[1], window_s=60.0))
    return pacer


async def close_pacer(bucket: str, pacer: Pacer) -> None:
    """Remember what the run learned (for the next run in this process), give the shared lease back."""
    snapshot = pacer.snapshot()
    if snapshot.sent:
        _LEARNED[bucket] = (snapshot.limit_requests_per_minute, snapshot.limit_tokens_per_minute)
    await pacer.aclose()


def forget() -> None:
    """Drop what earlier runs learned (tests)."""
    _LEARNED.clear()
