"""The response cache: a key per turn (`turn_key`) and the stores that keep answers under it.

Importing this package imports neither boto3 nor sqlite3: each store imports its library at first use.
"""

from ._dynamodb import INLINE_LIMIT_BYTES, KEY_ATTRIBUTE, TTL_ATTRIBUTE, DynamoStore
from ._key import (
    DENIED_NAMES,
    DENIED_PARTS,
    DENIED_SUFFIXES,
    KEY_FORMAT,
    credential_digest,
    is_denied,
    key_material,
    normalise_origin,
    turn_key,
)
from ._open import BUCKET_ENV, TABLE_ENV, open_store
from ._sqlite import SqliteStore, cache_dir
from ._store import CachedAnswer, CacheStore
from ._turns import TurnCache

__all__ = [
    "BUCKET_ENV",
    "DENIED_NAMES",
    "DENIED_PARTS",
    "DENIED_SUFFIXES",
    "INLINE_LIMIT_BYTES",
    "KEY_ATTRIBUTE",
    "KEY_FORMAT",
    "TABLE_ENV",
    "TTL_ATTRIBUTE",
    "CacheStore",
    "CachedAnswer",
    "DynamoStore",
    "SqliteStore",
    "TurnCache",
    "cache_dir",
    "credential_digest",
    "is_denied",
    "key_material",
    "normalise_origin",
    "open_store",
    "turn_key",
]
