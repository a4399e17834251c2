"""The SSE decoder, against httpx-sse as an oracle on generated streams cut into arbitrary chunks."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator

import httpx
from httpx_sse import aconnect_sse
from hypothesis import given, settings
from hypothesis import strategies as st

from fair_runners.runners._sse import SSEDecoder

_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\0"), max_size=12
)
_EOL = st.sampled_from(["\n", "\r\n", "\r"])


@st.composite
def _streams(draw: st.DrawFn) -> str:
    """Events that all carry data, with comments, names, ids and mixed line endings."""
    out = []
    for _ in range(draw(st.integers(0, 5))):
        lines = [f"data:{draw(st.sampled_from(['', ' ']))}{draw(_TEXT)}"]
        lines += [f"data: {draw(_TEXT)}" for _ in range(draw(st.integers(0, 2)))]
        if draw(st.booleans()):
            lines.insert(0, f": {draw(_TEXT)}")
        if draw(st.booleans()):
            lines.append(f"event: {draw(_TEXT)}")
        if draw(st.booleans()):
            lines.append(f"id: {draw(_TEXT)}")
        eol = draw(_EOL)
        out.append(eol.join(lines) + eol + eol)
    return "".join(out)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def _ours(chunks: list[bytes]) -> list[tuple[str, str, str]]:
    decoder = SSEDecoder()
    events = [e for chunk in chunks for e in decoder.feed(chunk)] + decoder.close()
    return [(e.data, e.event, e.id or "") for e in events]


def _oracle(chunks: list[bytes]) -> list[tuple[str, str, str]]:
    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body())

    async def read() -> list[tuple[str, str, str]]:
        async with (
            httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client,
            aconnect_sse(client, "GET", "http://sse.test/") as source,
        ):
            return [(e.data, e.event or "message", e.id) async for e in source.aiter_sse()]

    return asyncio.run(read())


@settings(max_examples=150, deadline=None)
@given(_streams(), st.lists(st.integers(0, 10_000), max_size=6))
def test_matches_httpx_sse(stream: str, cuts: list[int]) -> None:
    chunks = _chunks(stream.encode(), cuts)
    assert _ours(chunks) == _oracle(chunks)


def test_utf8_split_inside_a_character_and_crlf_split_across_chunks() -> None:
    raw = 'data: {"content": "olá ✓"}\r\n\r\n'.encode()
    cut = raw.index("✓".encode()) + 1
    crlf = raw.index(b"\r\n")
    chunks = [raw[:cut], raw[cut : crlf + 1], raw[crlf + 1 :]]
    assert _ours(chunks) == [('{"content": "olá ✓"}', "message", "")]


def test_spec_details() -> None:
    stream = b"data\n\n: comment\nretry: 10\nevent: x\n\ndata: a\ndata:b\nunknown: 1\n\ndata: no blank line"
    decoder = SSEDecoder()
    events = decoder.feed(stream) + decoder.close()
    assert [(e.data, e.event, e.retry) for e in events] == [("", "message", None), ("a\nb", "message", None)]
