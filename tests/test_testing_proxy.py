"""The test forward proxy, driven by aiohttp and httpx: absolute-form requests with their bodies, streams that
flow through unbuffered, keep-alive, CONNECT tunnels to a TLS server, Basic proxy auth, and its log."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from fair_runners.testing import HostileBackend, LoopbackServer
from fair_runners.testing.proxy import ForwardProxy, ProxyLogEntry

from .conftest import free_port

BASIC = "Basic dXNlcjpwYXNz"  # user:pass


@pytest.fixture(scope="module")
def _backend() -> Iterator[tuple[HostileBackend, LoopbackServer]]:
    backend = HostileBackend()
    with LoopbackServer(backend.app) as server:
        yield backend, server


@pytest.fixture
def backend(_backend: tuple[HostileBackend, LoopbackServer]) -> HostileBackend:
    found, server = _backend
    found.reset()
    found.url = server.url  # type: ignore[attr-defined]
    return found


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    with ForwardProxy() as running:
        yield running


def test_aiohttp_absolute_form_with_a_body_and_keep_alive(backend: Any, proxy: ForwardProxy) -> None:
    async def scenario() -> list[Any]:
        async with aiohttp.ClientSession() as session:
            replies = []
            for n in range(3):
                async with session.post(
                    f"{backend.url}/v1/chat/completions?n={n}", json={"n": n}, proxy=proxy.url
                ) as reply:
                    replies.append((reply.status, await reply.json()))
            return replies

    replies = asyncio.run(scenario())
    assert [status for status, _ in replies] == [200, 200, 200]
    assert replies[0][1]["choices"][0]["message"]["content"] == backend.answer
    assert proxy.connections == 1  # one client connection carried all three (keep-alive)
    assert proxy.log == [
        ProxyLogEntry("POST", f"{backend.url}/v1/chat/completions?n={n}", None, 200) for n in range(3)
    ]
    received = backend.requests
    assert [(r.path, r.query, json.loads(r.body)) for r in received] == [
        ("/v1/chat/completions", f"n={n}", {"n": n}) for n in range(3)
    ]
    assert received[0].headers["host"] == backend.url.removeprefix("http://")
    assert "proxy-authorization" not in received[0].headers


def test_a_chunked_request_body_is_forwarded(backend: Any, proxy: ForwardProxy) -> None:
    async def parts() -> AsyncIterator[bytes]:
        for part in (b'{"query": ', b'"in parts"}'):
            yield part

    async def scenario() -> int:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{backend.url}/event/infer/web/bot", data=parts(), proxy=proxy.url) as reply,
        ):
            return reply.status

    assert asyncio.run(scenario()) == 200
    (received,) = backend.requests
    assert received.body == b'{"query": "in parts"}' and received.headers["transfer-encoding"] == "chunked"


def test_sse_flows_through_without_waiting_for_the_end(proxy: ForwardProxy) -> None:
    seen_first = threading.Event()  # set by the client: the second event is only sent after it

    async def events(request: Request) -> StreamingResponse:
        async def parts() -> AsyncIterator[bytes]:
            yield b"data: one\n\n"
            for _ in range(100):
                if seen_first.is_set():
                    break
                await asyncio.sleep(0.05)
            yield b"data: two\n\n" if seen_first.is_set() else b"data: the client never saw one\n\n"

        return StreamingResponse(parts(), media_type="text/event-stream")

    async def scenario(url: str) -> list[bytes]:
        lines = []
        async with (
            aiohttp.ClientSession() as session,
            session.get(url + "/events", proxy=proxy.url) as reply,
        ):
            async for line in reply.content:
                lines.append(line)
                if line == b"data: one\n":
                    seen_first.set()
        return lines

    app = Starlette(routes=[Route("/events", events)])
    with LoopbackServer(app) as server:
        lines = asyncio.run(scenario(server.url))
    assert lines == [b"data: one\n", b"\n", b"data: two\n", b"\n"]
    assert proxy.log[0].status == 200


def test_a_body_cut_upstream_is_cut_downstream(backend: Any, proxy: ForwardProxy) -> None:
    backend.set("truncated_body", step="completion", chunked=False)

    async def scenario() -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{backend.url}/v1/chat/completions", proxy=proxy.url) as reply,
        ):
            await reply.read()

    with pytest.raises(aiohttp.ClientPayloadError):
        asyncio.run(scenario())


def test_httpx_through_the_proxy_and_502_when_nothing_listens(backend: Any, proxy: ForwardProxy) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1/chat/completions"

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(proxy=proxy.url) as client:
            ok = await client.post(f"{backend.url}/v1/chat/completions", json={"x": 1})
            down = await client.post(dead, json={})
            return ok, down

    ok, down = asyncio.run(scenario())
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == backend.answer
    assert down.status_code == 502 and down.text.startswith("Bad Gateway: ")
    assert [(e.method, e.target, e.status) for e in proxy.log] == [
        ("POST", f"{backend.url}/v1/chat/completions", 200),
        ("POST", dead, 502),
    ]
    assert backend.requests[0].body == b'{"x":1}'


def test_https_goes_through_a_connect_tunnel(certificate: tuple[Path, Path], proxy: ForwardProxy) -> None:
    cert_path, key_path = certificate
    backend = HostileBackend()
    trusting = ssl.create_default_context(cafile=str(cert_path))

    async def scenario(url: str) -> tuple[int, int, str]:
        async with (
            aiohttp.ClientSession() as session,
            session.post(url + "/v1/chat/completions", json={}, proxy=proxy.url, ssl=trusting) as reply,
        ):
            first = reply.status
        async with httpx.AsyncClient(proxy=proxy.url, verify=trusting) as client:
            second = await client.post(url + "/v1/chat/completions", json={})
        return first, second.status_code, second.json()["choices"][0]["message"]["content"]

    with LoopbackServer(backend.app, ssl_certfile=str(cert_path), ssl_keyfile=str(key_path)) as server:
        assert server.url.startswith("https://127.0.0.1:")
        first, second, answer = asyncio.run(scenario(server.url))
        authority = f"127.0.0.1:{server.port}"
    assert (first, second, answer) == (200, 200, backend.answer)
    # the proxy only ever saw CONNECTs: the requests themselves went through the tunnels, encrypted
    assert [(e.method, e.target, e.status) for e in proxy.log] == [("CONNECT", authority, 200)] * 2
    assert [(r.method, r.path) for r in backend.requests] == [("POST", "/v1/chat/completions")] * 2


def test_require_auth(backend: Any, certificate: tuple[Path, Path]) -> None:
    url = f"{backend.url}/v1/chat/completions"

    async def scenario(proxy: ForwardProxy) -> list[Any]:
        async with aiohttp.ClientSession() as session:
            async with session.post(url, json={}, proxy=proxy.url) as refused:
                outcome: list[Any] = [refused.status, refused.headers.get("Proxy-Authenticate")]
            with_auth = proxy.url.replace("http://", "http://user:pass@")  # aiohttp sends it as Basic
            async with session.post(url, json={}, proxy=with_auth) as allowed:
                outcome.append(allowed.status)
            with pytest.raises(aiohttp.ClientHttpProxyError) as tunnel:
                await session.get("https://127.0.0.1:9/", proxy=proxy.url)
            outcome.append(tunnel.value.status)
        async with httpx.AsyncClient(proxy=proxy.url.replace("http://", "http://user:pass@")) as client:
            outcome.append((await client.post(url, json={})).status_code)
        return outcome

    with ForwardProxy(require_auth=("user", "pass")) as proxy:
        outcome = asyncio.run(scenario(proxy))
    assert outcome == [407, 'Basic realm="fair-runners test proxy"', 200, 407, 200]
    assert [(e.method, e.proxy_authorization, e.status) for e in proxy.log] == [
        ("POST", None, 407),
        ("POST", BASIC, 200),
        ("CONNECT", None, 407),
        ("POST", BASIC, 200),
    ]
    assert all("proxy-authorization" not in r.headers for r in backend.requests)  # never passed on
    assert len(backend.requests) == 2


def test_stop_ends_open_tunnels_and_the_port() -> None:
    proxy = ForwardProxy().start()
    port = proxy.port

    async def scenario() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())  # a tunnel to itself
        head = await reader.readuntil(b"\r\n\r\n")
        await asyncio.get_running_loop().run_in_executor(None, proxy.stop)
        rest = await asyncio.wait_for(reader.read(), 5)  # EOF: the proxy closed the tunnel
        writer.close()
        return head + rest

    answer = asyncio.run(scenario())
    assert answer.startswith(b"HTTP/1.1 200 Connection established\r\n") and answer.endswith(b"\r\n\r\n")
    with pytest.raises(OSError):
        asyncio.run(asyncio.open_connection("127.0.0.1", port))
