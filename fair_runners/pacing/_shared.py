"""One rate budget shared by many Lambda invocations (a Step Functions Map fan-out), kept in DynamoDB.

Table: env `FAIR_RUNNERS_RATE_TABLE`; key schema, TTL attribute and item format in `_ledger`.

Each invocation (holder) leases a share of the budget's rate for `lease_s` seconds and renews it every
`renew_s`: it reads the live holders (entries whose `until` has not passed), takes the fair share `rate / live
holders` but never more than what the others leave (`rate - sum of their shares`), and writes the item back
with a conditional write on `version` (optimistic concurrency: on a conflict it starts again from the item
DynamoDB returns). So the shares of live holders never add up to more than the rate, a newcomer gets its share
as the others renew, and a crashed holder's share is free again once its `until` passes. The first lease
assumes `fan_out` holders (the Map's width) so that invocations starting together do not all grab the whole
rate. A holder spends its share at a steady pace (the `Pacer`'s schedule), never in bursts.

If the table cannot be used (not configured, missing, access denied, throttled, unreachable), the share is
`rate / fan_out` and `warning` says why; nothing is raised. boto3 is synchronous: its calls run in a worker
thread with short timeouts. About one DynamoDB call per second per holder (a renewal every 2 s is one
conditional write, plus a second one after a conflict).
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ._ledger import KEY_ATTRIBUTE, decode, encode

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

ENV_TABLE = "FAIR_RUNNERS_RATE_TABLE"
_TTL_SLACK_S = 3_600.0  # the item outlives its last lease by an hour, then DynamoDB's TTL removes it
_ATTEMPTS = 6
_UNTIL_MARGIN_S = 0.25  # stop spending a lease this long before it ends (clocks of holders differ a little)
_PERMANENT = {
    "ResourceNotFoundException": "the table does not exist: create it (partition key `bucket` S)",
    "AccessDeniedException": "access denied: allow dynamodb:GetItem, PutItem and UpdateItem on it",
    "UnrecognizedClientException": "the credentials were refused",
    "ValidationException": "the table does not have the expected key schema (partition key `bucket` S)",
}


@dataclass(frozen=True)
class Share:
    """What this holder may spend: per-minute rates (None: not shared) until `until` (epoch seconds)."""

    requests_per_minute: float | None
    tokens_per_minute: float | None
    until: float
    source: Literal["table", "fallback"]


class SharedBudget:
    """A holder's view of a budget shared through DynamoDB (see the module docstring)."""

    def __init__(
        self,
        bucket: str,
        *,
        fan_out: int,
        table: str | None = None,
        client: DynamoDBClient | None = None,
        holder: str | None = None,
        lease_s: float = 5.0,
        renew_s: float = 2.0,
        call_timeout_s: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if fan_out < 1:
            raise ValueError(
                f"fan_out must be >= 1 (the number of invocations sharing the budget), got {fan_out}"
            )
        if not 0 < renew_s < lease_s:
            raise ValueError(f"renew_s ({renew_s}) must be > 0 and below lease_s ({lease_s})")
        self.bucket = bucket
        self.fan_out = fan_out
        self.table = table if table is not None else (os.environ.get(ENV_TABLE) or None)
        self.holder = holder or uuid.uuid4().hex[:16]
        self.lease_s = lease_s
        self.renew_s = renew_s
        self.call_timeout_s = call_timeout_s
        self.warning: str | None = None
        self.calls = 0  # DynamoDB calls made (for tests and metrics)
        self._client = client
        self._clock = clock
        self._share: Share | None = None
        self._asked: tuple[float | None, float | None] = (None, None)
        self._item: dict[str, Any] | None = None
        self._leased = False
        self._short = False
        self._disabled = False
        if self.table is None:
            self._disable(f"env {ENV_TABLE} is not set")

    def share(self) -> Share | None:
        """The rates to spend now: the lease while it runs, else `rate / fan_out`; None before any lease."""
        share = self._share
        if share is not None and share.source == "table" and self._clock() >= share.until - _UNTIL_MARGIN_S:
            return self._fallback()
        return share

    def renew_in_s(self) -> float:
        """When to renew: sooner while this holder got less than its fair share (others still shrinking)."""
        return self.renew_s / 2 if self._short else self.renew_s

    async def lease(self, requests_per_minute: float | None, tokens_per_minute: float | None) -> Share:
        """Lease (or renew) this holder's share of the given total rates. Never raises."""
        self._asked = (requests_per_minute, tokens_per_minute)
        if not self._disabled:
            try:
                work = asyncio.to_thread(self._lease_sync, requests_per_minute, tokens_per_minute)
                self._share = await asyncio.wait_for(work, self.call_timeout_s * 3)
                self.warning = None
            except Exception as exc:  # never out of the pacer: fall back to an even split
                self._failed(exc)
        share = self.share()
        if share is None:
            share = self._share = self._fallback()
        return share

    async def aclose(self) -> None:
        """Give this holder's share back (remove its entry). Never raises."""
        if self._disabled or not self._leased or self.table is None:
            return
        try:
            await asyncio.wait_for(asyncio.to_thread(self._remove_sync), self.call_timeout_s)
        except Exception as exc:
            self._failed(exc)

    # -- DynamoDB, in a worker thread -------------------------------------------------------------------

    @property
    def client(self) -> DynamoDBClient:
        """The DynamoDB client (created on first use, with short timeouts)."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            timeout = max(0.1, self.call_timeout_s / 2)
            config = Config(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 1})
            self._client = boto3.client("dynamodb", config=config)
        return self._client

    def _lease_sync(self, rpm: float | None, tpm: float | None) -> Share:
        from botocore.exceptions import ClientError

        assert self.table is not None
        item = self._item
        for attempt in range(_ATTEMPTS):
            now = self._clock()
            version, holders = decode(item)
            others = {h: e for h, e in holders.items() if h != self.holder and e[2] > now}
            live = len(others) + 1 if self._leased else max(len(others) + 1, self.fan_out)
            grant_r = _grant(rpm, live, sum(e[0] for e in others.values()))
            grant_t = _grant(tpm, live, sum(e[1] for e in others.values()))
            until = now + self.lease_s
            self._share = self._lowered(grant_r, grant_t)  # a smaller share applies before the write
            entries = {**others, self.holder: (grant_r or 0.0, grant_t or 0.0, until)}
            new = encode(self.bucket, version + 1, entries, until + _TTL_SLACK_S)
            request: dict[str, Any] = {
                "TableName": self.table,
                "Item": new,
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
            if item is None:
                request |= {"ConditionExpression": "attribute_not_exists(#b)"}
                request |= {"ExpressionAttributeNames": {"#b": KEY_ATTRIBUTE}}
            else:
                request |= {"ConditionExpression": "#v = :v", "ExpressionAttributeNames": {"#v": "version"}}
                request |= {"ExpressionAttributeValues": {":v": {"N": str(version)}}}
            try:
                self.calls += 1
                self.client.put_item(**request)
            except ClientError as exc:
                if _code(exc) != "ConditionalCheckFailedException":
                    raise
                returned: Any = dict(exc.response).get("Item")
                item = returned or self._read()
                time.sleep(random.uniform(0.0, 0.01 * (attempt + 1)))
                continue
            self._item, self._leased = new, True
            self._short = bool(rpm and grant_r is not None and grant_r < rpm / live * 0.99) or bool(
                tpm and grant_t is not None and grant_t < tpm / live * 0.99
            )
            return Share(grant_r, grant_t, until, "table")
        raise TimeoutError(f"{_ATTEMPTS} conditional writes in a row lost to other holders")

    def _read(self) -> dict[str, Any] | None:
        assert self.table is not None
        self.calls += 1
        answer = self.client.get_item(
            TableName=self.table, Key={KEY_ATTRIBUTE: {"S": self.bucket}}, ConsistentRead=True
        )
        found: Any = dict(answer).get("Item")
        return found if isinstance(found, dict) else None

    def _remove_sync(self) -> None:
        from botocore.exceptions import ClientError

        assert self.table is not None
        self.calls += 1
        try:
            self.client.update_item(
                TableName=self.table,
                Key={KEY_ATTRIBUTE: {"S": self.bucket}},
                UpdateExpression="REMOVE holders.#h SET #v = #v + :one",
                ConditionExpression="attribute_exists(#b)",
                ExpressionAttributeNames={"#h": self.holder, "#v": "version", "#b": KEY_ATTRIBUTE},
                ExpressionAttributeValues={":one": {"N": "1"}},
            )
        except ClientError as exc:
            if _code(exc) != "ConditionalCheckFailedException":  # the item is gone already: nothing to give
                raise
        self._item = None

    # -- shares -----------------------------------------------------------------------------------------

    def _lowered(self, rpm: float | None, tpm: float | None) -> Share | None:
        current = self._share
        if current is None or current.source != "table":
            return current
        return Share(
            _min(current.requests_per_minute, rpm),
            _min(current.tokens_per_minute, tpm),
            current.until,
            "table",
        )

    def _fallback(self) -> Share:
        rpm, tpm = self._asked
        return Share(
            None if rpm is None else rpm / self.fan_out,
            None if tpm is None else tpm / self.fan_out,
            math.inf,
            "fallback",
        )

    def _disable(self, reason: str) -> None:
        self._disabled = True
        self.warning = f"shared rate budget unavailable ({reason}): each invocation paces to 1/{self.fan_out}"

    def _failed(self, exc: BaseException) -> None:
        code = _code(exc)
        table = f"table {self.table!r}"
        if code in _PERMANENT:
            self._disable(f"{table}: {code}: {_PERMANENT[code]}")
        elif type(exc).__name__ in ("NoCredentialsError", "NoRegionError"):
            self._disable(f"{table}: {type(exc).__name__}: configure AWS credentials and region")
        else:
            what = code or type(exc).__name__
            self.warning = (
                f"shared rate budget: {table} failed ({what}); keeping the current lease until it ends, "
                f"then 1/{self.fan_out} of the budget"
            )


def _grant(rate: float | None, live: int, used: float) -> float | None:
    if rate is None:
        return None
    return max(0.0, min(rate / live, rate - used))


def _min(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else min(a, b)


def _code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error")
        if isinstance(error, dict) and isinstance(error.get("Code"), str):
            return str(error["Code"])
    return None
