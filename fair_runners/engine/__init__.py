"""The execution engine: sessions side by side, turns in order, retries, timeouts, the deadline, summaries.

`Engine` runs a list of datasets through one runner; `Deadline` is the point the run must end by;
`AdaptiveLimiter` bounds attempts in flight (AIMD on rate limits); `AuthCircuit` stops a backend whose key
was refused.
"""

from ._engine import Engine, EngineOptions, EngineOutcome
from ._limiter import AdaptiveLimiter, AuthCircuit
from ._timing import Deadline, backoff_delay, percentile

__all__ = [
    "AdaptiveLimiter",
    "AuthCircuit",
    "Deadline",
    "Engine",
    "EngineOptions",
    "EngineOutcome",
    "backoff_delay",
    "percentile",
]
