"""The DynamoDB response cache (moto): round trips, TTL, the S3 spill of large answers, and failures
(throttling, no table, no network) that are misses and skipped writes, never exceptions."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from moto import mock_aws
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fair_runners.cache import (
    INLINE_LIMIT_BYTES,
    KEY_ATTRIBUTE,
    TTL_ATTRIBUTE,
    CachedAnswer,
    DynamoStore,
    SqliteStore,
    open_store,
)
from fair_runners.testing import LoopbackServer

from ._aws import REGION, fake_credentials
from .conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
TABLE = "fair-runners-cache-test"
BUCKET = "fair-runners-cache-spill-test"


@dataclass
class Aws:
    dynamodb: Any
    s3: Any

    def item(self, key: str) -> dict[str, Any] | None:
        return self.dynamodb.get_item(TableName=TABLE, Key={KEY_ATTRIBUTE: {"S": key}}).get("Item")  # type: ignore[no-any-return]

    def store(self, *, spill: bool = True) -> DynamoStore:
        return DynamoStore(TABLE, spill_bucket=BUCKET if spill else None, dynamodb=self.dynamodb, s3=self.s3)


@pytest.fixture
def creds(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_credentials(monkeypatch)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def aws(creds: None) -> Iterator[Aws]:
    """The table as the SAM template would make it (key `cache_key`, TTL on `expires_at`) and a bucket."""
    with mock_aws():
        dynamodb = boto3.client("dynamodb", region_name=REGION)
        dynamodb.create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": KEY_ATTRIBUTE, "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": KEY_ATTRIBUTE, "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        dynamodb.update_time_to_live(
            TableName=TABLE, TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE}
        )
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET)
        yield Aws(dynamodb, s3)


def test_put_then_get_round_trips_every_field(aws: Aws) -> None:
    async def main() -> None:
        async with aws.store() as store:
            assert await store.get("k1") is None
            before = time.time()
            assert await store.put("k1", CachedAnswer("héllo 😀", input_tokens=12, output_tokens=34), None)
            got = await store.get("k1")
            assert got is not None
            assert (got.content, got.input_tokens, got.output_tokens) == ("héllo 😀", 12, 34)
            assert before - 0.001 <= got.created_at <= time.time()
            assert await store.put("k1", CachedAnswer("replaced", created_at=1234.5), 60)
            assert await store.get("k1") == CachedAnswer("replaced", created_at=1234.5)
            many = await asyncio.gather(*(store.put(f"c{i}", CachedAnswer(f"v{i}"), 60) for i in range(20)))
            assert all(many)
            got_many = await asyncio.gather(*(store.get(f"c{i}") for i in range(20)))
            assert [g.content if g else None for g in got_many] == [f"v{i}" for i in range(20)]
            assert store.errors == 0

    asyncio.run(main())


def test_ttl_sets_the_ttl_attribute_and_is_checked_on_read(aws: Aws) -> None:
    store = aws.store()
    before = time.time()
    assert store.put_sync("forever", CachedAnswer("a"), None)
    assert store.put_sync("day", CachedAnswer("b"), 86400)
    assert store.put_sync("short", CachedAnswer("c"), 0.5)
    assert TTL_ATTRIBUTE not in (aws.item("forever") or {})
    day = int((aws.item("day") or {})[TTL_ATTRIBUTE]["N"])
    assert math.ceil(before + 86400) <= day <= math.ceil(time.time() + 86400)
    # DynamoDB deletes expired items within days, not at once: an item still there past its time is a miss.
    item = {
        **(aws.item("day") or {}),
        KEY_ATTRIBUTE: {"S": "stale"},
        TTL_ATTRIBUTE: {"N": str(int(before) - 1)},
    }
    aws.dynamodb.put_item(TableName=TABLE, Item=item)
    assert aws.item("stale") is not None and store.get_sync("stale") is None
    assert store.get_sync("short") is not None
    expiry = int((aws.item("short") or {})[TTL_ATTRIBUTE]["N"])
    time.sleep(max(0.0, expiry - time.time()) + 0.05)
    assert store.get_sync("short") is None
    assert store.get_sync("forever") is not None and store.get_sync("day") is not None
    assert store.errors == 0


def test_a_moto_item_over_400_kb_is_refused_so_the_limits_below_mean_something(aws: Aws) -> None:
    with pytest.raises(aws.dynamodb.exceptions.ClientError, match="maximum allowed size"):
        aws.dynamodb.put_item(
            TableName=TABLE, Item={KEY_ATTRIBUTE: {"S": "x"}, "content": {"S": "x" * 410_000}}
        )


def test_answers_up_to_the_inline_limit_stay_in_the_item(aws: Aws) -> None:
    store = aws.store()
    content = "x" * (INLINE_LIMIT_BYTES - 512 - 64)
    assert store.put_sync("k" * 64, CachedAnswer(content), 60)
    item = aws.item("k" * 64) or {}
    assert item["content"]["S"] == content and "spill" not in item
    assert aws.s3.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0


@pytest.mark.parametrize("content", ["y" * 400_000, "😀" * 100_000], ids=["ascii", "4-byte-utf8"])
def test_larger_answers_spill_to_s3_with_a_pointer_in_the_item(aws: Aws, content: str) -> None:
    store = aws.store()
    key = "a" * 64
    assert store.put_sync(key, CachedAnswer(content, 5, 6), 3600)
    item = aws.item(key) or {}
    assert "content" not in item
    assert item["spill"]["S"] == f"s3://{BUCKET}/cache/{key}.json"
    assert int(item[TTL_ATTRIBUTE]["N"]) > time.time()
    body = json.loads(aws.s3.get_object(Bucket=BUCKET, Key=f"cache/{key}.json")["Body"].read())
    assert body["key"] == key and body["content"] == content
    got = store.get_sync(key)
    assert got is not None and (got.content, got.input_tokens, got.output_tokens) == (content, 5, 6)
    assert store.errors == 0 and store.too_large == 0


def test_without_a_spill_bucket_large_answers_are_not_cached_and_nothing_raises(aws: Aws) -> None:
    store = aws.store(spill=False)
    assert store.put_sync("big", CachedAnswer("z" * 400_000), 60) is False
    assert store.too_large == 1 and store.errors == 0
    assert aws.item("big") is None and store.get_sync("big") is None
    assert store.put_sync("small", CachedAnswer("z"), 60) is True


def test_a_spilled_answer_whose_object_is_gone_or_foreign_is_a_miss(aws: Aws) -> None:
    store = aws.store()
    assert store.put_sync("gone", CachedAnswer("y" * 400_000), 60)
    aws.s3.delete_object(Bucket=BUCKET, Key="cache/gone.json")
    assert store.get_sync("gone") is None
    assert store.put_sync("moved", CachedAnswer("y" * 400_000), 60)
    item = {**(aws.item("moved") or {}), "spill": {"S": "s3://someone-elses-bucket/cache/moved.json"}}
    aws.dynamodb.put_item(TableName=TABLE, Item=item)
    assert store.get_sync("moved") is None
    aws.s3.put_object(Bucket=BUCKET, Key="cache/moved.json", Body=b'{"key": "other", "content": "x"}')
    aws.dynamodb.put_item(TableName=TABLE, Item={**item, "spill": {"S": store.spill_uri("moved")}})
    assert store.get_sync("moved") is None
    assert store.errors == 0


def test_text_dynamodb_cannot_hold_is_a_failed_put_not_an_exception(aws: Aws) -> None:
    store = aws.store()
    assert store.put_sync("k", CachedAnswer("lone \ud800 surrogate"), 60) is False
    assert store.errors == 1 and store.get_sync("k") is None
    assert store.put_sync("big", CachedAnswer("\ud800" * 200_000), 60) is False  # the same when spilled
    assert store.errors == 2 and store.get_sync("big") is None


@pytest.mark.parametrize(
    "item",
    [
        {"v": {"N": "1"}},
        {"content": {"N": "1"}},
        {"content": {"S": "x"}, "input_tokens": {"N": "-3"}},
        {"content": {"S": "x"}, "created_at": {"S": "today"}},
    ],
)
def test_malformed_items_are_misses(aws: Aws, item: dict[str, Any]) -> None:
    aws.dynamodb.put_item(TableName=TABLE, Item={KEY_ATTRIBUTE: {"S": "bad"}, **item})
    store = aws.store()
    assert store.get_sync("bad") is None and store.errors == 0


def test_a_missing_table_or_bucket_is_a_miss_and_a_skipped_write(aws: Aws) -> None:
    async def main() -> None:
        store = DynamoStore("no-such-table", spill_bucket=BUCKET, dynamodb=aws.dynamodb, s3=aws.s3)
        assert await store.get("k") is None
        assert await store.put("k", CachedAnswer("a"), 60) is False
        assert store.errors == 2
        spill = DynamoStore(TABLE, spill_bucket="no-such-bucket", dynamodb=aws.dynamodb, s3=aws.s3)
        assert await spill.put("k", CachedAnswer("y" * 400_000), 60) is False
        assert spill.errors == 1 and aws.item("k") is None

    asyncio.run(main())


def throttling_app(seen: list[str], latency_s: float = 0.0) -> Starlette:
    """A DynamoDB endpoint that throttles every call, as DynamoDB does over a table's capacity."""

    async def endpoint(request: Request) -> Response:
        seen.append(request.headers.get("x-amz-target", ""))
        await asyncio.sleep(latency_s)
        body = {
            "__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
            "message": "The level of configured provisioned throughput for the table was exceeded.",
        }
        return Response(json.dumps(body), status_code=400, media_type="application/x-amz-json-1.0")

    return Starlette(routes=[Route("/", endpoint, methods=["POST"])])


def test_throttling_is_a_miss_and_a_skipped_write_counted_in_errors(creds: None) -> None:
    seen: list[str] = []
    with LoopbackServer(throttling_app(seen, latency_s=0.3)) as server:
        client = boto3.client(
            "dynamodb",
            endpoint_url=server.url,
            config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
        )

        async def main() -> tuple[CachedAnswer | None, bool, int]:
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.01)

            task = asyncio.create_task(ticker())
            store = DynamoStore(TABLE, spill_bucket=None, dynamodb=client)
            got = await store.get("k")
            stored = await store.put("k", CachedAnswer("a"), 60)
            task.cancel()
            assert store.errors == 2
            return got, stored, ticks

        got, stored, ticks = asyncio.run(main())
    assert got is None and stored is False
    assert seen == ["DynamoDB_20120810.GetItem", "DynamoDB_20120810.PutItem"]
    assert ticks >= 30  # 0.6 s of calls, and the loop kept running all along


def test_clients_are_made_lazily_with_few_retries(creds: None, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    with LoopbackServer(throttling_app(seen)) as server:
        monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", server.url)
        store = DynamoStore(TABLE, spill_bucket=None)
        assert seen == []

        async def main() -> CachedAnswer | None:
            got = await store.get("k")
            await store.aclose()
            return got

        assert asyncio.run(main()) is None
    assert seen == ["DynamoDB_20120810.GetItem"] * 2  # one attempt, one retry: then a miss
    assert store.errors == 1
    with pytest.raises(RuntimeError, match="was closed"):
        asyncio.run(store.get("k"))


def test_an_unreachable_endpoint_is_a_miss(creds: None) -> None:
    config = Config(retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=0.5)
    client = boto3.client("dynamodb", endpoint_url=f"http://127.0.0.1:{free_port()}", config=config)
    store = DynamoStore(TABLE, spill_bucket=None, dynamodb=client)
    assert store.get_sync("k") is None
    assert store.put_sync("k", CachedAnswer("a"), 60) is False
    assert store.errors == 2


def test_aclose_leaves_injected_clients_open(aws: Aws) -> None:
    async def main() -> None:
        store = aws.store()
        await store.put("k", CachedAnswer("a"), 60)
        await store.aclose()

    asyncio.run(main())
    assert aws.item("k") is not None  # the injected client still works


def test_importing_and_building_stores_imports_no_boto3() -> None:
    code = (
        "import sys\n"
        "from fair_runners.cache import DynamoStore, SqliteStore, turn_key\n"
        "DynamoStore('t', spill_bucket=None); SqliteStore()\n"
        "print(sorted(m for m in ('boto3', 'botocore', 'sqlite3') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]"


def test_open_store_picks_dynamodb_in_the_lambda_and_sqlite_elsewhere(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("FAIR_RUNNERS_CACHE_TABLE", raising=False)
    monkeypatch.delenv("FAIR_RUNNERS_CACHE_BUCKET", raising=False)
    monkeypatch.setenv("FAIR_RUNNERS_CACHE_DIR", str(tmp_path))
    assert open_store(lambda_env=True) is None
    monkeypatch.setenv("FAIR_RUNNERS_CACHE_TABLE", " ")
    assert open_store(lambda_env=True) is None
    monkeypatch.setenv("FAIR_RUNNERS_CACHE_TABLE", TABLE)
    store = open_store(lambda_env=True)
    assert isinstance(store, DynamoStore) and store.table == TABLE and store.spill_bucket is None
    monkeypatch.setenv("FAIR_RUNNERS_CACHE_BUCKET", BUCKET)
    store = open_store(lambda_env=True)
    assert isinstance(store, DynamoStore) and store.spill_bucket == BUCKET
    local = open_store(lambda_env=False)
    assert isinstance(local, SqliteStore) and local.path == tmp_path / "responses.sqlite3"
