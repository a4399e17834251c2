"""Reading a reply within a size cap, counted after decompression, yielding to the event loop as it goes,
so a gzip bomb or an endless body fails its turn as `too_large` in bounded memory and the turn timeout can
always fire. aiohttp only: the Alquimia path imports no httpx.
"""

from __future__ import annotations

import asyncio

import aiohttp

from .._errors import AnswerTooLarge

MIB = 1024 * 1024


def too_large(what: str, limit: int) -> AnswerTooLarge:
    """The error of a reply over its cap (names the env variable that sets it)."""
    return AnswerTooLarge(
        f"{what} is larger than {limit:,} bytes (decoded); the limit is env FAIR_RUNNERS_MAX_ANSWER_BYTES"
    )


async def read_capped(response: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    """The whole (decoded) body, or `AnswerTooLarge` as soon as it passes `limit` bytes."""
    parts: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise too_large(what, limit)
        parts.append(chunk)
        await asyncio.sleep(0)  # buffered data comes back without waiting: let timeouts fire
    return b"".join(parts)
