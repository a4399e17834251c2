"""What a cache store holds (`CachedAnswer`), the interface every store implements (`CacheStore`), and the
async face of a store whose work blocks (`BlockingStore`: each call in a worker thread)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, Self


@dataclass(frozen=True)
class CachedAnswer:
    """One turn's answer as the cache keeps it."""

    content: str
    input_tokens: int = 0
    output_tokens: int = 0
    created_at: float = 0.0  # epoch seconds; `put` stamps the current time when this is 0


class CacheStore(Protocol):
    """A response cache. Stores never raise for a backend failure: a failed `get` is a miss, a failed `put`
    returns False, and each such failure adds one to `errors`. Only the caller's bugs raise: `ValueError`
    from `put` for a malformed answer or a `ttl_s` that keeps nothing (<= 0, NaN), `RuntimeError` for a
    call after `aclose`."""

    errors: int

    async def get(self, key: str) -> CachedAnswer | None:
        """The answer stored under `key`, or None (missing, expired, unreadable)."""
        ...

    async def put(self, key: str, answer: CachedAnswer, ttl_s: float | None) -> bool:
        """Store `answer` for `ttl_s` seconds (None: no expiry); True when it was stored."""
        ...

    async def aclose(self) -> None:
        """Release connections; the store cannot be used afterwards."""
        ...


class BlockingStore:
    """A `CacheStore` made of blocking `get_sync`, `put_sync` and `close`, each awaited in a worker thread."""

    def get_sync(self, key: str) -> CachedAnswer | None:
        raise NotImplementedError

    def put_sync(self, key: str, answer: CachedAnswer, ttl_s: float | None) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    async def get(self, key: str) -> CachedAnswer | None:
        """The unexpired answer under `key`, or None (also when the backend fails: see `errors`)."""
        return await asyncio.to_thread(self.get_sync, key)

    async def put(self, key: str, answer: CachedAnswer, ttl_s: float | None) -> bool:
        """Store `answer` under `key` for `ttl_s` seconds (None: no expiry); False when it was not stored."""
        return await asyncio.to_thread(self.put_sync, key, answer, ttl_s)

    async def aclose(self) -> None:
        """`close`, in a worker thread; the store cannot be used afterwards."""
        await asyncio.to_thread(self.close)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def expires_at(ttl_s: float | None, now: float) -> float | None:
    """The expiry time of an entry put at `now` (None: never); `ValueError` for a TTL that keeps nothing."""
    if ttl_s is None or (isinstance(ttl_s, int | float) and math.isinf(ttl_s) and ttl_s > 0):
        return None
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float) or not ttl_s > 0:
        raise ValueError(f"ttl_s must be a positive number of seconds or None (no expiry), got {ttl_s!r}")
    return now + float(ttl_s)


def stamped(answer: CachedAnswer, now: float | None = None) -> CachedAnswer:
    """`answer` with `created_at` set to now when it is 0."""
    if answer.created_at > 0:
        return answer
    return CachedAnswer(answer.content, answer.input_tokens, answer.output_tokens, now or time.time())


def check_answer(answer: Any) -> CachedAnswer:
    """`answer` when it is a well-formed `CachedAnswer`, else `ValueError` naming the bad field."""
    if not isinstance(answer, CachedAnswer):
        raise ValueError(f"answer must be a CachedAnswer, got {type(answer).__name__}")
    if not isinstance(answer.content, str):
        raise ValueError(f"answer.content must be a string, got {type(answer.content).__name__}")
    for name in ("input_tokens", "output_tokens"):
        value = getattr(answer, name)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
            raise ValueError(f"answer.{name} must be an integer from 0 to 2**63 - 1, got {value!r}")
    if isinstance(answer.created_at, bool) or not isinstance(answer.created_at, int | float):
        raise ValueError(f"answer.created_at must be epoch seconds, got {answer.created_at!r}")
    return answer


def answer_from(fields: Mapping[str, Any]) -> CachedAnswer:
    """A `CachedAnswer` from stored fields; `ValueError` when they are not what a store writes."""
    content = fields.get("content")
    created = fields.get("created_at", 0.0)
    if isinstance(created, bool) or not isinstance(created, int | float) or not math.isfinite(created):
        raise ValueError(f"stored created_at is {created!r}")
    answer = CachedAnswer(
        content=content,  # type: ignore[arg-type]  # checked just below
        input_tokens=fields.get("input_tokens", 0),
        output_tokens=fields.get("output_tokens", 0),
        created_at=float(created),
    )
    return check_answer(answer)
