"""The shared response cache of a deployment: a DynamoDB table, large answers spilled to S3.

Table (env `FAIR_RUNNERS_CACHE_TABLE`): partition key `cache_key` (String), no sort key; DynamoDB TTL on the
Number attribute `expires_at` (epoch seconds, rounded up; absent for entries without expiry). An item holds
`cache_key`, `v` (format), `input_tokens`, `output_tokens`, `created_at`, `expires_at`, and either `content`
(the answer) or `spill` (`s3://<spill_bucket>/<spill_prefix><key>.json`, a JSON object with the same
fields plus `key`) when the item would be over `INLINE_LIMIT_BYTES` (DynamoDB's item limit is 400 KB).
Without a spill bucket such answers are not cached: `put` returns False and counts them in `too_large`.

DynamoDB deletes expired items lazily (within days), so `get` checks `expires_at` itself. Throttling, a
missing or unreachable table, a failing S3: `get` is a miss and `put` returns False, each counted in
`errors` and logged, never raised. boto3 is imported and clients are made at the first call (in a worker
thread, like every AWS call here); pass `dynamodb`/`s3` clients to use your own.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from typing import TYPE_CHECKING, Any

from ._store import BlockingStore, CachedAnswer, answer_from, check_answer, expires_at, stamped

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_s3 import S3Client

logger = logging.getLogger("fair_runners.cache")

KEY_ATTRIBUTE = "cache_key"
TTL_ATTRIBUTE = "expires_at"
INLINE_LIMIT_BYTES = 350_000
_ITEM_OVERHEAD_BYTES = 512  # names, numbers and the key around the content: far less than this
_FORMAT = "1"


class DynamoStore(BlockingStore):
    """A `CacheStore` in a DynamoDB table, answers over `INLINE_LIMIT_BYTES` spilled to S3."""

    def __init__(
        self,
        table: str,
        *,
        spill_bucket: str | None,
        spill_prefix: str = "cache/",
        dynamodb: DynamoDBClient | None = None,
        s3: S3Client | None = None,
    ) -> None:
        if not table:
            raise ValueError("table must name the DynamoDB cache table (env FAIR_RUNNERS_CACHE_TABLE)")
        self.table = table
        self.spill_bucket = spill_bucket or None
        self.spill_prefix = spill_prefix
        self.errors = 0
        self.too_large = 0
        self._dynamodb = dynamodb
        self._s3 = s3
        self._owned: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        """Close the clients this store made (blocking; injected ones are left open); later calls raise."""
        self._closed = True
        owned, self._owned = self._owned, []
        for client in owned:
            client.close()

    def spill_uri(self, key: str) -> str:
        """Where the answer under `key` is spilled."""
        return f"s3://{self.spill_bucket}/{self.spill_prefix}{key}.json"

    def get_sync(self, key: str) -> CachedAnswer | None:
        """`get`, blocking."""
        self._check_open()
        try:
            reply = self._table_client().get_item(
                TableName=self.table, Key={KEY_ATTRIBUTE: {"S": key}}, ConsistentRead=False
            )
            item = reply.get("Item")
            if item is None:
                return None
            fields = _fields(item)
            expiry = fields.get(TTL_ATTRIBUTE)
            if expiry is not None and expiry <= time.time():
                return None
            spill = item.get("spill", {}).get("S")
            if spill is None:
                return answer_from(fields)
            spilled = self._read_spill(key, spill)
            return None if spilled is None else answer_from(spilled)
        except (ValueError, KeyError, TypeError) as exc:
            logger.debug("response cache: item %s is malformed (%s); a miss", key, exc)
            return None
        except Exception as exc:  # throttling, no table, no network, S3 failures: a miss, never a failed run
            self._failed("get", exc)
            return None

    def put_sync(self, key: str, answer: CachedAnswer, ttl_s: float | None) -> bool:
        """`put`, blocking."""
        self._check_open()
        answer = stamped(check_answer(answer))
        expiry = expires_at(ttl_s, time.time())
        item: dict[str, Any] = {
            KEY_ATTRIBUTE: {"S": key},
            "v": {"N": _FORMAT},
            "input_tokens": {"N": str(answer.input_tokens)},
            "output_tokens": {"N": str(answer.output_tokens)},
            "created_at": {"N": f"{answer.created_at:.6f}"},
        }
        if expiry is not None:
            item[TTL_ATTRIBUTE] = {"N": str(math.ceil(expiry))}
        try:
            # UnicodeEncodeError for text with a lone surrogate, which DynamoDB cannot hold: a failed put.
            size = len(answer.content.encode("utf-8")) + len(key) + _ITEM_OVERHEAD_BYTES
            if size <= INLINE_LIMIT_BYTES:
                item["content"] = {"S": answer.content}
            elif self.spill_bucket is None:
                self.too_large += 1
                logger.info(
                    "response cache: not caching %s (%d bytes, over %d) without a spill bucket "
                    "(set env FAIR_RUNNERS_CACHE_BUCKET)",
                    key,
                    size,
                    INLINE_LIMIT_BYTES,
                )
                return False
            else:
                item["spill"] = {"S": self._write_spill(key, answer, expiry)}
            self._table_client().put_item(TableName=self.table, Item=item)
            return True
        except Exception as exc:  # see get_sync
            self._failed("put", exc)
            return False

    def _write_spill(self, key: str, answer: CachedAnswer, expiry: float | None) -> str:
        body = {
            "key": key,
            "content": answer.content,
            "input_tokens": answer.input_tokens,
            "output_tokens": answer.output_tokens,
            "created_at": answer.created_at,
            TTL_ATTRIBUTE: expiry,
        }
        self._spill_client().put_object(
            Bucket=str(self.spill_bucket),
            Key=f"{self.spill_prefix}{key}.json",
            Body=json.dumps(body, ensure_ascii=False).encode("utf-8"),
            ContentType="application/json",
        )
        return self.spill_uri(key)

    def _read_spill(self, key: str, uri: str) -> dict[str, Any] | None:
        if self.spill_bucket is None or uri != self.spill_uri(key):
            logger.debug("response cache: %s points to %s, not this store's spill bucket; a miss", key, uri)
            return None
        s3 = self._spill_client()
        try:
            reply = s3.get_object(Bucket=self.spill_bucket, Key=f"{self.spill_prefix}{key}.json")
        except s3.exceptions.NoSuchKey:
            return None  # removed by a lifecycle rule before the item expired: a plain miss
        body = json.loads(reply["Body"].read())
        if not isinstance(body, dict) or body.get("key") != key:
            raise ValueError(f"spilled object {uri} is not the answer for this key")
        expiry = body.get(TTL_ATTRIBUTE)
        if expiry is not None and expiry <= time.time():
            return None
        return body

    def _table_client(self) -> DynamoDBClient:
        if self._dynamodb is None:
            with self._lock:  # clients are made once, by one thread (boto3 sessions are not thread-safe)
                if self._dynamodb is None:
                    self._dynamodb = self._make("dynamodb")
        return self._dynamodb

    def _spill_client(self) -> S3Client:
        if self._s3 is None:
            with self._lock:
                if self._s3 is None:
                    self._s3 = self._make("s3")
        return self._s3

    def _make(self, service: str) -> Any:
        import boto3
        from botocore.config import Config

        # Few retries and short timeouts: a cache that is slow to answer costs more than a miss.
        config = Config(
            retries={"mode": "standard", "total_max_attempts": 2}, connect_timeout=2, read_timeout=5
        )
        client = boto3.session.Session().client(service, config=config)  # type: ignore[call-overload]
        self._owned.append(client)
        return client

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"DynamoStore({self.table!r}) was closed")

    def _failed(self, op: str, exc: Exception) -> None:
        self.errors += 1
        log = logger.warning if self.errors == 1 or self.errors % 100 == 0 else logger.debug
        log(
            "response cache %s failed on table %s (%s: %s); %d failure(s) so far",
            op,
            self.table,
            type(exc).__name__,
            exc,
            self.errors,
        )

    def __repr__(self) -> str:
        return f"DynamoStore({self.table!r}, spill_bucket={self.spill_bucket!r})"


def _fields(item: dict[str, Any]) -> dict[str, Any]:
    """The answer fields of an item (numbers as int/float); `ValueError` when one is malformed."""
    fields: dict[str, Any] = {}
    if "content" in item:
        fields["content"] = item["content"]["S"]
    for name in ("input_tokens", "output_tokens"):
        if name in item:
            fields[name] = int(item[name]["N"])
    for name in ("created_at", TTL_ATTRIBUTE):
        if name in item:
            fields[name] = float(item[name]["N"])
    return fields
