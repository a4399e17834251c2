"""Pacing sends to a provider's rate limits: requests and tokens per minute, per key.

- `parse_rate_headers(headers) -> RateSignals | None`: limits, remaining, reset and Retry-After from the
  header families providers send (`x-ratelimit-*`, `anthropic-ratelimit-*`, IETF `ratelimit-*`,
  `retry-after[-ms]`).
- `estimate_tokens(texts, max_tokens=..., model=...)`: a request's token charge before it is sent.
- `Pacer`: the per-invocation pacer every attempt waits in (budget, learned limits, 429 back-off).
- `SharedBudget`, `bucket_id`: one budget shared by many invocations through a DynamoDB table.

Importing this package imports neither boto3 nor tiktoken.
"""

from ._estimate import estimate_tokens
from ._headers import RateSignals, parse_rate_headers
from ._ledger import KEY_ATTRIBUTE, TTL_ATTRIBUTE, bucket_id
from ._pacer import Pacer
from ._shared import ENV_TABLE, Share, SharedBudget
from ._stats import PaceSnapshot

__all__ = [
    "ENV_TABLE",
    "KEY_ATTRIBUTE",
    "TTL_ATTRIBUTE",
    "PaceSnapshot",
    "Pacer",
    "RateSignals",
    "Share",
    "SharedBudget",
    "bucket_id",
    "estimate_tokens",
    "parse_rate_headers",
]
