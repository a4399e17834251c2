"""The hostile backend does on the wire what each mode says: sizes, encodings, cuts, leaks and timings,
checked with raw sockets and aiohttp (auto_decompress=False); bombs inflated in bounded memory."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import random
import socket
import time
import urllib.parse
import zlib
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from fair_runners.testing import LoopbackServer
from fair_runners.testing._runs import crc32_combine
from fair_runners.testing.hostile import DOTDOT_IDS, HostileBackend, HostileMode

KEY = "sk-hostile-0123456789abcdefghijklmnopqrstuvwxyz"
STREAM_HEAD = b'data: {"response": {"data": {"content": "'
STREAM_TAIL = b'"}}, "is_complete": false}\n\n'
INFER = "/api/event/infer/web/bot"
STREAM = "/api/event/stream/h1?response_only=true"
COMPLETION = "/v1/chat/completions"
_PATHS = {"infer": ("POST", INFER), "stream": ("GET", STREAM), "completion": ("POST", COMPLETION)}


@pytest.fixture(scope="module")
def _served() -> Iterator[tuple[HostileBackend, LoopbackServer]]:
    backend = HostileBackend()
    with LoopbackServer(backend.app) as server:
        yield backend, server


@pytest.fixture
def hostile(_served: tuple[HostileBackend, LoopbackServer]) -> HostileBackend:
    backend, server = _served
    backend.reset()
    backend.url = server.url  # type: ignore[attr-defined]
    backend.port = server.port  # type: ignore[attr-defined]
    return backend


def raw(backend: Any, method: str, path: str, body: bytes = b"", limit: int = 1 << 24) -> tuple[bytes, bytes]:
    """One request on a fresh socket (Connection: close); the response head and body bytes until EOF."""
    with socket.create_connection(("127.0.0.1", backend.port), timeout=5) as sock:
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n"
        sock.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        data = bytearray()
        while len(data) < limit and (part := sock.recv(1 << 16)):
            data += part
    response_head, _, rest = bytes(data).partition(b"\r\n\r\n")
    return response_head, rest


def header(head: bytes, name: str) -> str | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.decode("latin-1").partition(":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def dechunk(data: bytes) -> tuple[bytes, bool]:
    """The payload of a chunked body, and whether its final 0-chunk came."""
    out = bytearray()
    while b"\r\n" in data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return bytes(out), data == b"\r\n"
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out), False


def inflate(compressed: bytes, keep: int = 64) -> tuple[int, bytes, bytes, bool]:
    """Streaming gunzip in 16 MiB steps: the inflated size, its first and last `keep` bytes, and whether the
    member ended cleanly (CRC and length checked by zlib) with nothing after it (a single member)."""
    inflater, total, first, last = zlib.decompressobj(31), 0, b"", b""
    data = compressed
    while not inflater.eof and (data or inflater.unconsumed_tail):
        out = inflater.decompress(data, 16 << 20)
        data = inflater.unconsumed_tail
        first = first or out[:keep]
        last = (last + out)[-keep:]
        total += len(out)
        if not out and not data:
            break
    return total, first, last, inflater.eof and inflater.unused_data == b""


async def fetch(url: str, method: str, path: str, **options: Any) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.request(method, url + path, headers={"Authorization": f"Bearer {KEY}"}, **options) as reply,
    ):
        return reply.status, {k.lower(): v for k, v in reply.headers.items()}, await reply.read()


def test_well_behaved_both_protocols_and_the_request_log(hostile: Any) -> None:
    status, _, body = asyncio.run(fetch(hostile.url, "POST", INFER + "?x=a%26b&y", json={"query": "q"}))
    assert status == 200 and json.loads(body) == {"stream_id": "h1", "status": "queued"}
    status, headers, body = asyncio.run(fetch(hostile.url, "GET", STREAM))
    assert status == 200 and headers["content-type"] == "text/event-stream; charset=utf-8"
    events = [json.loads(e.removeprefix(b"data: ")) for e in body.split(b"\n\n") if e]
    answer = hostile.answer
    assert [e["response"]["data"]["content"] for e in events] == [answer[: len(answer) // 2], answer]
    status, _, body = asyncio.run(fetch(hostile.url, "POST", COMPLETION, json={"model": "m"}))
    assert status == 200 and json.loads(body)["choices"][0]["message"]["content"] == answer
    assert asyncio.run(fetch(hostile.url, "POST", "/elsewhere"))[0] == 404
    log = hostile.requests
    assert [(r.method, r.step) for r in log] == [
        ("POST", "infer"),
        ("GET", "stream"),
        ("POST", "completion"),
        ("POST", "other"),
    ]
    assert (log[0].path, log[0].raw_path, log[0].query) == (INFER, INFER, "x=a%26b&y")
    assert log[0].body == b'{"query": "q"}' and log[0].authorization == f"Bearer {KEY}"
    assert log[1].query == "response_only=true" and log[1].body == b""
    raw(hostile, "POST", "/event/infer/web/a%2Fb%20c", b"{}")
    last = hostile.requests[-1]
    assert (last.path, last.raw_path, last.step) == (
        "/event/infer/web/a/b c",
        "/event/infer/web/a%2Fb%20c",
        "infer",
    )


@pytest.mark.slow  # ~3 s of CPU: zlib really inflates the 1 GiB
def test_gzip_bomb_is_one_member_of_1_mb_inflating_to_1_gib(hostile: Any) -> None:
    hostile.set("gzip_bomb")
    started = time.monotonic()
    head, body = raw(hostile, "GET", STREAM)
    served_s = time.monotonic() - started
    compressed, complete = dechunk(body)
    assert complete and header(head, "content-encoding") == "gzip" and header(head, "content-length") is None
    assert 900_000 < len(compressed) < 1_200_000 and served_s < 3
    total, first, last, clean = inflate(compressed)
    assert total == (1 << 30) + len(STREAM_HEAD) + len(STREAM_TAIL) and clean
    assert first == STREAM_HEAD + b"a" * (64 - len(STREAM_HEAD))
    assert last == b"a" * (64 - len(STREAM_TAIL)) + STREAM_TAIL


@pytest.mark.parametrize(
    ("step", "params"),
    [
        ("infer", {}),
        ("completion", {}),
        ("completion", {"chunked": True}),
        ("stream", {"complete": False}),
        ("stream", {"chunked": False}),
    ],
)
def test_gzip_bomb_shapes(hostile: Any, step: str, params: dict[str, Any]) -> None:
    size = 8 << 20
    hostile.set("gzip_bomb", step=step, size=size, **params)
    method, path = _PATHS[step]
    status, headers, compressed = asyncio.run(fetch(hostile.url, method, path))
    assert status == 200 and headers["content-encoding"] == "gzip"
    chunked = params.get("chunked", step == "stream")
    assert headers.get("content-length") == (None if chunked else str(len(compressed)))
    inflated = zlib.decompress(compressed, 31)  # 8 MiB: small enough to hold
    if not params.get("complete", True):
        assert inflated == STREAM_HEAD + b"a" * size  # one endless line: no closing quote, no line end
        return
    document = inflated.removeprefix(b"data: ") if step == "stream" else inflated
    reply = json.loads(document)
    text = {
        "infer": lambda: reply["detail"],
        "stream": lambda: reply["response"]["data"]["content"],
        "completion": lambda: reply["choices"][0]["message"]["content"],
    }[step]()
    assert text == "a" * size


def test_endless_line_never_ends_and_stops_when_the_client_goes(hostile: Any) -> None:
    hostile.set("endless_line")

    async def read() -> tuple[int, bytes, int]:
        seen, first, other_status = 0, b"", 0
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.get(hostile.url + STREAM) as reply,
        ):
            async for part in reply.content.iter_any():
                first = first or part
                assert b"\n" not in part
                seen += len(part)
                if seen > 16 << 20 and not other_status:  # the server still answers while the line flows
                    async with session.post(hostile.url + COMPLETION, json={}) as other:
                        other_status = other.status
                if seen > 32 << 20:
                    break
            assert hostile.active == 1
        return seen, first, other_status

    seen, first, other_status = asyncio.run(read())
    assert seen > 32 << 20 and first.startswith(STREAM_HEAD[:20]) and other_status == 200
    deadline = time.monotonic() + 3
    while hostile.active and time.monotonic() < deadline:
        time.sleep(0.02)
    assert hostile.active == 0, "the server kept generating after the client left"


def test_endless_line_gzipped_and_limited(hostile: Any) -> None:
    hostile.set("endless_line", gzip=True)
    head, body = raw(hostile, "GET", STREAM, limit=40_000)
    assert header(head, "content-encoding") == "gzip" and header(head, "transfer-encoding") == "chunked"
    compressed, complete = dechunk(body)
    total, first, last, clean = inflate(compressed)
    assert not complete and not clean and total > 32 << 20 and first.startswith(STREAM_HEAD)
    assert last == b"a" * 64
    hostile.set("endless_line", size=5000)
    head, body = raw(hostile, "GET", STREAM)
    payload, complete = dechunk(body)
    assert complete and payload == STREAM_HEAD + b"a" * 5000


@pytest.mark.parametrize("chunked", [False, True])
def test_huge_body(hostile: Any, chunked: bool) -> None:
    size = 16 << 20
    hostile.set("huge_body", step="completion", size=size, chunked=chunked)
    status, headers, body = asyncio.run(fetch(hostile.url, "POST", COMPLETION))
    assert status == 200 and "content-encoding" not in headers
    if chunked:
        assert headers["transfer-encoding"] == "chunked" and "content-length" not in headers
    else:
        assert headers["content-length"] == str(len(body))
    assert json.loads(body)["choices"][0]["message"]["content"] == "a" * size


@pytest.mark.parametrize("step", ["infer", "stream", "completion"])
def test_truncated_body_with_content_length(hostile: Any, step: str) -> None:
    hostile.set("truncated_body", step=step, chunked=False)
    method, path = _PATHS[step]
    head, body = raw(hostile, method, path)
    declared = int(header(head, "content-length") or 0)
    assert len(body) == 300 and declared > 4096 + len(hostile.answer)  # the whole reply, with its filler
    with pytest.raises(aiohttp.ClientPayloadError):
        asyncio.run(fetch(hostile.url, method, path))


def test_truncated_body_chunked(hostile: Any) -> None:
    hostile.set("truncated_body", step="completion", chunked=True)
    head, body = raw(hostile, "POST", COMPLETION)
    payload, complete = dechunk(body)
    assert header(head, "transfer-encoding") == "chunked" and not complete and len(payload) == 300
    assert not body.endswith(b"0\r\n\r\n")
    with pytest.raises(aiohttp.ClientPayloadError):
        asyncio.run(fetch(hostile.url, "POST", COMPLETION))


@pytest.mark.parametrize("variant", ["line", "mid"])
def test_truncated_event_ends_mid_event_but_cleanly(hostile: Any, variant: str) -> None:
    hostile.set("truncated_event", variant=variant)
    _, body = raw(hostile, "GET", STREAM)
    payload, complete = dechunk(body)
    assert complete
    *events, rest = payload.split(b"\n\n")
    assert len(events) == 2 and all(json.loads(e.removeprefix(b"data: ")) for e in events)
    assert rest.startswith(b"data: {") and b"\n\n" not in rest
    assert rest.endswith(b"\n") if variant == "line" else b"\n" not in rest


def _fragments_found(text: str) -> set[str]:
    middle = len(KEY) // 2
    found = set()
    if f"Invalid credentials {KEY[:16]}..." in text:
        found.add("prefix")
    if KEY[middle - 8 : middle + 8] in text and "Credential check failed near" in text:
        found.add("middle")
    if "api_key=%" in text and urllib.parse.unquote(text.split("api_key=")[1].split()[0]) == KEY:
        found.add("urlencoded")
    if (
        "Invalid token " in text
        and base64.b64decode(text.split("Invalid token ")[1].split()[0]) == KEY.encode()
    ):
        found.add("base64")
    if f"Invalid key {KEY}" in text:
        found.add("json_escaped")
    return found


@pytest.mark.parametrize("variant", ["prefix", "middle", "urlencoded", "json_escaped", "base64", "all"])
@pytest.mark.parametrize("step", ["infer", "completion"])
def test_key_echo_in_an_error(hostile: Any, variant: str, step: str) -> None:
    hostile.set("key_echo", step=step, variant=variant)
    status, _, body = asyncio.run(fetch(hostile.url, *_PATHS[step]))
    assert status == 401 and KEY.encode() not in body  # never verbatim: each variant disguises it
    reply = json.loads(body)
    message = reply["detail"] if step == "infer" else reply["error"]["message"]
    expected = {"prefix", "middle", "urlencoded", "json_escaped", "base64"} if variant == "all" else {variant}
    assert _fragments_found(message) == expected
    if variant in ("json_escaped", "all"):
        assert "".join(f"\\u{ord(c):04x}" for c in KEY).encode() in body


def test_key_echo_cut_puts_the_cut_in_the_middle_of_the_key(hostile: Any) -> None:
    hostile.set("key_echo", step="infer", variant="cut", status=400)
    status, _, body = asyncio.run(fetch(hostile.url, *_PATHS["infer"]))
    half = len(KEY) // 2
    assert status == 400 and body[:300].endswith(KEY[:half].encode()) and KEY.encode() in body
    assert KEY[half:].encode() not in body[:300] and json.loads(body)["detail"].endswith(
        KEY + " was rejected"
    )


@pytest.mark.parametrize("step", ["stream", "completion"])
def test_key_echo_in_a_200_answer(hostile: Any, step: str) -> None:
    hostile.set("key_echo", step=step, status=200, variant="prefix")
    status, _, body = asyncio.run(fetch(hostile.url, *_PATHS[step]))
    assert status == 200
    reply = json.loads(body.removeprefix(b"data: ")) if step == "stream" else json.loads(body)
    text = (
        reply["response"]["data"]["content"]
        if step == "stream"
        else reply["choices"][0]["message"]["content"]
    )
    assert text == f"Invalid credentials {KEY[:16]}..."


def test_odd_sse_fields(hostile: Any) -> None:
    hostile.set("odd_sse_fields")
    _, body = raw(hostile, "GET", STREAM)
    payload, complete = dechunk(body)
    events = payload.split(b"\n\n")
    assert complete and events[-1] == b"" and len(events) == 6
    assert json.loads(events[0].removeprefix(b"data: "))["response"]["data"]["content"] == hostile.answer
    assert events[1] == b"retry: " + b"9" * 5000
    deep = events[2].removeprefix(b"data: ")
    assert deep == b"[" * 200_000 + b"]" * 200_000
    with pytest.raises(RecursionError):
        json.loads(deep)
    assert events[3] == b"retry: 12abc"
    assert events[4].startswith(b"id: a\x00b\ndata: {")


@pytest.mark.parametrize("stream_id", DOTDOT_IDS)
def test_dotdot_stream_id(hostile: Any, stream_id: str) -> None:
    hostile.set("dotdot_stream_id", stream_id=stream_id)
    status, _, body = asyncio.run(fetch(hostile.url, *_PATHS["infer"]))
    assert status == 200 and json.loads(body) == {"stream_id": stream_id, "status": "queued"}


def test_slow_drip_sends_a_byte_per_interval(hostile: Any) -> None:
    hostile.set("slow_drip", step="completion", interval_s=0.05)
    with socket.create_connection(("127.0.0.1", hostile.port), timeout=5) as sock:
        sock.sendall(f"POST {COMPLETION} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        arrivals = []
        for _ in range(8):
            assert len(sock.recv(100)) == 1
            arrivals.append(time.monotonic())
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert min(gaps) > 0.03 and header(head, "content-length") is not None

    async def time_out() -> tuple[BaseException, float]:
        timeout = aiohttp.ClientTimeout(total=0.6, sock_read=0.3)  # the read timeout never fires: bytes flow
        started = time.monotonic()
        with pytest.raises(TimeoutError) as caught:
            await fetch(hostile.url, "POST", COMPLETION, timeout=timeout)
        return caught.value, time.monotonic() - started

    error, waited = asyncio.run(time_out())
    assert not isinstance(error, aiohttp.ServerTimeoutError) and 0.55 < waited < 2  # the total one fired
    deadline = time.monotonic() + 3
    while hostile.active and time.monotonic() < deadline:
        time.sleep(0.02)
    assert hostile.active == 0


def test_modes_are_checked() -> None:
    with pytest.raises(ValueError, match="step='infer' is not supported; use stream"):
        HostileMode("odd_sse_fields", step="infer")
    with pytest.raises(ValueError, match="kind='nope'"):
        HostileMode("nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="variant='half'"):
        HostileMode("key_echo", variant="half")
    with pytest.raises(ValueError, match="size=None"):
        HostileMode("slow_drip", size=None)
    with pytest.raises(ValueError, match="cut_at=5000"):
        HostileMode("truncated_body", cut_at=5000)
    with pytest.raises(ValueError, match="variant='line'"):
        HostileMode("huge_body", variant="line")
    assert HostileMode("dotdot_stream_id").step == "infer" and HostileMode("gzip_bomb").size == 1 << 30
    assert HostileMode("key_echo").variant == "all" and HostileMode("endless_line").size is None


def test_crc32_combine_matches_zlib() -> None:
    rng = random.Random(7)
    for _ in range(300):
        first, second = rng.randbytes(rng.randint(0, 40)), rng.randbytes(rng.randint(0, 5000))
        assert crc32_combine(zlib.crc32(first), zlib.crc32(second), len(second)) == zlib.crc32(first + second)
