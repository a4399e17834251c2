"""`SharedBudget` on DynamoDB (moto): fair leases that never add up to more than the budget, expiry, giving
back, the fallback when the table cannot be used; and a `Pacer` spending its share."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto import mock_aws

from bench.pacing_sim import AtomicMotoServer, create_rate_table, dynamodb_client
from fair_runners.pacing import ENV_TABLE, Pacer, RateSignals, SharedBudget, bucket_id

TABLE = "rates"


class Clock:
    """A hand-moved epoch clock."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def dynamodb() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        create_rate_table(client, TABLE)
        yield client


def _budget(
    client: Any, clock: Clock, fan_out: int = 1, holder: str | None = None, **kw: Any
) -> SharedBudget:
    return SharedBudget("b1", fan_out=fan_out, table=TABLE, client=client, clock=clock, holder=holder, **kw)


def _item(client: Any) -> dict[str, Any]:
    return client.get_item(TableName=TABLE, Key={"bucket": {"S": "b1"}}, ConsistentRead=True)["Item"]  # type: ignore[no-any-return]


def test_bucket_id_is_an_hmac_that_never_shows_the_key() -> None:
    key = "sk-secret-123"
    one = bucket_id("https://API.openai.com/", "langchain_openai.ChatOpenAI", "gpt-4o", key)
    assert one == bucket_id("https://api.openai.com", "langchain_openai.ChatOpenAI", "gpt-4o", key)
    assert one.startswith("rl1-") and len(one) == 68 and key not in one
    others = {
        bucket_id("https://api.openai.com", "langchain_openai.ChatOpenAI", "gpt-4o", "sk-other"),
        bucket_id("https://api.openai.com", "langchain_openai.ChatOpenAI", "gpt-4o-mini", key),
        bucket_id("https://api.groq.com", "langchain_openai.ChatOpenAI", "gpt-4o", key),
        bucket_id("https://api.openai.com", "langchain_groq.ChatGroq", "gpt-4o", key),
        bucket_id("https://api.openai.com", "langchain_openai.ChatOpenAI", None, None),
    }
    assert one not in others and len(others) == 5


def test_first_leases_assume_the_fan_out_then_live_holders_share(dynamodb: Any) -> None:
    clock = Clock()
    a, b = _budget(dynamodb, clock, fan_out=4, holder="a"), _budget(dynamodb, clock, fan_out=4, holder="b")
    first = asyncio.run(a.lease(1200, 60_000))
    assert (first.requests_per_minute, first.tokens_per_minute, first.source) == (300, 15_000, "table")
    assert asyncio.run(b.lease(1200, 60_000)).requests_per_minute == 300
    clock.now += 2
    assert asyncio.run(a.lease(1200, 60_000)).requests_per_minute == 600  # two live holders
    assert asyncio.run(b.lease(1200, 60_000)).requests_per_minute == 600
    item = _item(dynamodb)
    assert item["version"]["N"] == "4"
    holders = item["holders"]["M"]
    assert set(holders) == {"a", "b"}
    assert float(holders["b"]["M"]["until"]["N"]) == pytest.approx(clock.now + 5.0)
    assert int(item["expires_at"]["N"]) == int(clock.now + 5.0 + 3600)  # the table's TTL attribute
    assert a.calls <= 4 and a.warning is None


def test_a_newcomer_gets_what_is_left_until_the_others_shrink(dynamodb: Any) -> None:
    clock = Clock()
    a, b = _budget(dynamodb, clock, holder="a"), _budget(dynamodb, clock, holder="b")
    assert asyncio.run(a.lease(1200, None)).requests_per_minute == 1200
    late = asyncio.run(b.lease(1200, None))
    assert late.requests_per_minute == 0 and b.renew_in_s() == 1.0  # asks again sooner
    clock.now += 1
    assert asyncio.run(a.lease(1200, None)).requests_per_minute == 600
    assert asyncio.run(b.lease(1200, None)).requests_per_minute == 600
    assert b.renew_in_s() == 2.0


def test_an_expired_holder_frees_its_share(dynamodb: Any) -> None:
    clock = Clock()
    a, b = _budget(dynamodb, clock, holder="a"), _budget(dynamodb, clock, holder="b")
    asyncio.run(a.lease(1200, None))
    clock.now += 4.8  # a's lease ends at +5: it stops spending it 0.25 s before
    spent = a.share()
    assert spent is not None and spent.source == "fallback"
    assert spent.requests_per_minute == 1200  # the fallback: budget / fan_out (1)
    clock.now += 1.5  # a crashed: its entry is dead
    assert asyncio.run(b.lease(1200, None)).requests_per_minute == 1200
    assert set(_item(dynamodb)["holders"]["M"]) == {"b"}


def test_aclose_gives_the_share_back(dynamodb: Any) -> None:
    clock = Clock()
    a, b = _budget(dynamodb, clock, holder="a"), _budget(dynamodb, clock, holder="b")
    asyncio.run(a.lease(600, None))
    assert asyncio.run(b.lease(600, None)).requests_per_minute == 0
    asyncio.run(a.aclose())
    assert "a" not in _item(dynamodb)["holders"]["M"]
    assert asyncio.run(b.lease(600, None)).requests_per_minute == 600


def test_interleaved_holders_never_lease_more_than_the_budget(dynamodb: Any) -> None:
    clock, rng = Clock(), random.Random(3)
    holders = [_budget(dynamodb, clock, fan_out=3, holder=f"h{i}") for i in range(4)]
    for _ in range(60):
        holder = rng.choice(holders)
        asyncio.run(holder.lease(1200, 6000))
        clock.now += rng.uniform(0.0, 1.5)
        spending = [h.share() for h in holders]
        live = [s for s in spending if s is not None and s.source == "table"]
        assert sum(s.requests_per_minute or 0 for s in live) <= 1200 + 1e-6
        assert sum(s.tokens_per_minute or 0 for s in live) <= 6000 + 1e-6
    assert all(h.warning is None for h in holders)


def test_a_missing_table_falls_back_to_an_even_split(dynamodb: Any) -> None:
    shared = SharedBudget("b1", fan_out=4, table="nope", client=dynamodb)
    share = asyncio.run(shared.lease(1200, 6000))
    assert (share.requests_per_minute, share.tokens_per_minute, share.source) == (300, 1500, "fallback")
    assert shared.warning is not None
    assert "'nope'" in shared.warning and "ResourceNotFoundException" in shared.warning
    assert "create it" in shared.warning and "1/4" in shared.warning
    calls = shared.calls
    asyncio.run(shared.lease(1200, 6000))
    assert shared.calls == calls  # not asked again
    asyncio.run(shared.aclose())  # nothing to give back, no error


def test_without_a_configured_table_no_call_is_made(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_TABLE, raising=False)
    shared = SharedBudget("b1", fan_out=2)
    assert asyncio.run(shared.lease(600, None)).requests_per_minute == 300
    assert shared.calls == 0 and shared.warning is not None and ENV_TABLE in shared.warning
    monkeypatch.setenv(ENV_TABLE, "from-env")
    assert SharedBudget("b1", fan_out=2).table == "from-env"


def _stubbed(clock: Clock) -> tuple[SharedBudget, Stubber]:
    client = boto3.client(
        "dynamodb", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    return _budget(client, clock, fan_out=2), Stubber(client)


def test_throttling_keeps_the_lease_until_it_ends_then_falls_back() -> None:
    clock = Clock()
    shared, stubber = _stubbed(clock)
    with stubber:
        stubber.add_response("put_item", {})
        stubber.add_client_error("put_item", "ProvisionedThroughputExceededException")
        stubber.add_response("put_item", {})
        assert asyncio.run(shared.lease(1200, None)).requests_per_minute == 600
        clock.now += 2
        kept = asyncio.run(shared.lease(1200, None))
        assert (kept.requests_per_minute, kept.source) == (600, "table")
        assert shared.warning is not None and "ProvisionedThroughputExceededException" in shared.warning
        clock.now += 3  # the lease has ended
        assert shared.share() is not None and shared.share().source == "fallback"  # type: ignore[union-attr]
        renewed = asyncio.run(shared.lease(1200, None))  # the table answers again
        assert renewed.source == "table" and shared.warning is None
        stubber.assert_no_pending_responses()


def test_access_denied_is_not_retried() -> None:
    shared, stubber = _stubbed(Clock())
    with stubber:
        stubber.add_client_error("put_item", "AccessDeniedException", http_status_code=400)
        share = asyncio.run(shared.lease(1200, None))
        assert (share.requests_per_minute, share.source) == (600, "fallback")
        assert asyncio.run(shared.lease(1200, None)).source == "fallback"  # no second call
        stubber.assert_no_pending_responses()
    assert shared.warning is not None and "dynamodb:GetItem, PutItem and UpdateItem" in shared.warning


def test_an_unanswering_table_times_out_to_the_fallback() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections, never answers
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        client = boto3.client(
            "dynamodb",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="x",
            aws_secret_access_key="x",
            config=Config(connect_timeout=0.2, read_timeout=0.2, retries={"max_attempts": 1}),
        )
        shared = SharedBudget("b1", fan_out=3, table=TABLE, client=client, call_timeout_s=0.4)
        start = time.monotonic()
        share = asyncio.run(shared.lease(900, None))
        assert time.monotonic() - start < 2.0
        assert (share.requests_per_minute, share.source) == (300, "fallback")
        assert shared.warning is not None and "failed" in shared.warning
    finally:
        silent.close()


def test_a_pacer_spends_its_share_steadily(dynamodb: Any) -> None:
    async def scenario() -> tuple[list[float], Any]:
        shared = SharedBudget("b1", fan_out=2, table=TABLE, client=dynamodb)
        pacer = Pacer(requests_per_minute=6000, shared=shared)  # half of 100 per second
        start = time.monotonic()
        times = []
        for _ in range(26):
            await pacer.acquire(0)
            times.append(time.monotonic() - start)
        snapshot = pacer.snapshot()
        await pacer.aclose()
        return times, snapshot

    times, snapshot = asyncio.run(scenario())
    assert snapshot.shared == "table" and snapshot.pace_requests_per_minute == pytest.approx(3000)
    assert 0.45 < times[-1] - times[0] < 1.0  # 25 intervals at 50 per second
    assert _item(dynamodb)["holders"]["M"] == {}  # given back on close


def test_a_pacer_on_an_unusable_table_paces_to_an_even_split_and_says_why(dynamodb: Any) -> None:
    async def scenario() -> tuple[float, Any]:
        pacer = Pacer(
            requests_per_minute=6000, shared=SharedBudget("b1", fan_out=2, table="nope", client=dynamodb)
        )
        start = time.monotonic()
        for _ in range(26):
            await pacer.acquire(0)
        elapsed = time.monotonic() - start
        snapshot = pacer.snapshot()
        await pacer.aclose()
        return elapsed, snapshot

    elapsed, snapshot = asyncio.run(scenario())
    assert snapshot.shared == "fallback" and snapshot.pace_requests_per_minute == pytest.approx(3000)
    assert snapshot.warning is not None and "'nope'" in snapshot.warning
    assert 0.4 < elapsed < 1.0  # 25 intervals at 50 per second


def test_limits_learned_from_headers_are_shared_too(dynamodb: Any) -> None:
    async def scenario() -> Any:
        pacer = Pacer(shared=SharedBudget("b1", fan_out=2, table=TABLE, client=dynamodb, holder="me"))
        await pacer.acquire(0)  # the probe
        pacer.observe(RateSignals(limit_requests=6000, remaining_requests=5999, window_s=60.0))
        pacer.release()
        await pacer.acquire(0)
        snapshot = pacer.snapshot()
        holders = _item(dynamodb)["holders"]["M"]
        await pacer.aclose()
        return snapshot, holders

    snapshot, holders = asyncio.run(scenario())
    assert snapshot.shared == "table"
    assert snapshot.pace_requests_per_minute == pytest.approx(6000 * 0.98 / 2)
    assert float(holders["me"]["M"]["rpm"]["N"]) == pytest.approx(6000 * 0.98 / 2)


def test_the_local_moto_server_makes_conditional_writes_atomic() -> None:
    with AtomicMotoServer() as server:
        client = dynamodb_client(server.url)
        create_rate_table(client, TABLE)
        client.put_item(TableName=TABLE, Item={"bucket": {"S": "n"}, "version": {"N": "0"}})
        wins = [0] * 8

        def writer(i: int) -> None:
            mine = dynamodb_client(server.url)
            version = 0
            for _ in range(25):
                try:
                    mine.put_item(
                        TableName=TABLE,
                        Item={"bucket": {"S": "n"}, "version": {"N": str(version + 1)}},
                        ConditionExpression="#v = :v",
                        ExpressionAttributeNames={"#v": "version"},
                        ExpressionAttributeValues={":v": {"N": str(version)}},
                        ReturnValuesOnConditionCheckFailure="ALL_OLD",
                    )
                    wins[i] += 1
                    version += 1
                except ClientError as exc:
                    version = int(exc.response["Item"]["version"]["N"])  # type: ignore[typeddict-item]

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        final = client.get_item(TableName=TABLE, Key={"bucket": {"S": "n"}}, ConsistentRead=True)
    assert int(final["Item"]["version"]["N"]) == sum(wins) > 25


class _Fixed(random.Random):
    """A phase source that always draws the same point of the period (0.0: the start, 1.0: its end)."""

    def __init__(self, point: float) -> None:
        super().__init__()
        self.point = point

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.point


def _first_sends(monkeypatch: pytest.MonkeyPatch, holders: int) -> list[float]:
    """When each of `holders` pacers sharing 1,200 requests a minute (150 each: 0.4 s apart) first sends.

    On the even split (no table configured, so no DynamoDB latency in the timings): the same phase applies
    to a table's lease."""
    monkeypatch.delenv(ENV_TABLE, raising=False)

    async def one(name: str, start: float) -> tuple[float, float]:
        shared = SharedBudget("b1", fan_out=holders, holder=name)
        pacer = Pacer(requests_per_minute=1200, shared=shared)
        await pacer.acquire(0)
        first = time.monotonic() - start
        await pacer.acquire(0)
        second = time.monotonic() - start
        await pacer.aclose()
        return first, second

    async def scenario() -> list[tuple[float, float]]:
        start = time.monotonic()
        return await asyncio.gather(*(one(f"h{i}", start) for i in range(holders)))

    sends = asyncio.run(scenario())
    for first, second in sends:  # after the phase, the holder's own pace: one period to its next send
        assert 0.3 < second - first < 0.5, sends
    return [first for first, _ in sends]


def test_shared_holders_starting_together_spread_their_first_sends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fair_runners.pacing._pacer._PHASE", random.Random(20261128))
    firsts = _first_sends(monkeypatch, 8)
    assert max(firsts) - min(firsts) > 0.2, firsts  # eight draws over the 0.4 s period
    assert max(firsts) < 0.4 + 0.15, firsts  # the phase costs each holder at most one period


@pytest.mark.parametrize(("point", "low", "high"), [(0.0, 0.0, 0.1), (1.0, 0.3, 0.5)])
def test_the_phase_holds_the_first_shared_send_once(
    monkeypatch: pytest.MonkeyPatch, point: float, low: float, high: float
) -> None:
    monkeypatch.setattr("fair_runners.pacing._pacer._PHASE", _Fixed(point))
    firsts = _first_sends(monkeypatch, 8)
    assert all(low <= first < high for first in firsts), firsts  # at 0.0 all eight go at once: the burst
