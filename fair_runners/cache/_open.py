"""Pick the response cache store of this process: DynamoDB in the Lambda, a local SQLite file elsewhere."""

from __future__ import annotations

import os

from ._dynamodb import DynamoStore
from ._sqlite import SqliteStore
from ._store import CacheStore

TABLE_ENV = "FAIR_RUNNERS_CACHE_TABLE"
BUCKET_ENV = "FAIR_RUNNERS_CACHE_BUCKET"


def open_store(*, lambda_env: bool) -> CacheStore | None:
    """The store to use. In the Lambda (`lambda_env`): a `DynamoStore` on the table named by env
    `FAIR_RUNNERS_CACHE_TABLE`, spilling to env `FAIR_RUNNERS_CACHE_BUCKET` when set, or None when the table
    is not set (the deployment has no cache). Elsewhere (library, CLI): a `SqliteStore` in `cache_dir()`.
    Opens nothing yet: the first `get`/`put` connects."""
    if lambda_env:
        table = os.environ.get(TABLE_ENV, "").strip()
        if not table:
            return None
        bucket = os.environ.get(BUCKET_ENV, "").strip() or None
        return DynamoStore(table, spill_bucket=bucket)
    return SqliteStore()
