"""The LLM runner's HTTP/1.1 transport, against scripted raw servers on 127.0.0.1: framing, keep-alive,
limits, timeouts, broken responses, cancellation, TLS and the network guard at connect time."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from fair_runners.runners._http1 import Http1Transport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'


class Server:
    """A raw TCP server on 127.0.0.1 that runs `handler` for every connection and counts them."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.open = 0
        self.most_open = 0
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            self.open += 1
            self.most_open = max(self.most_open, self.open)
            try:
                await self.handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                self.open -= 1
                writer.close()

        self._server = await asyncio.start_server(serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        """One request (head and Content-Length body); b"" when the client closed the connection."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return b""
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        return request


def keep_answering(*responses: bytes, delay: float = 0.0) -> Callable[[Server], Handler]:
    """A handler answering each request on a connection with the next of `responses` (the last repeats)."""

    def build(server: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            index = 0
            while await server.read_request(reader):
                await asyncio.sleep(delay)
                writer.write(responses[min(index, len(responses) - 1)])
                await writer.drain()
                index += 1

        return handler

    return build


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(scenario())


def client(max_connections: int = 4, timeout: float = 5.0, context: ssl.SSLContext | None = None) -> Any:
    transport = Http1Transport(
        ssl_context=context or ssl.create_default_context(), max_connections=max_connections
    )
    return httpx.AsyncClient(transport=transport, timeout=timeout, trust_env=False)


@pytest.fixture(autouse=True)
def _allow_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIR_RUNNERS_ALLOWED_HOSTS", "127.0.0.1,localhost")


def serving(build: Callable[[Server], Handler]) -> Server:
    server = Server(lambda r, w: asyncio.sleep(0))
    server.handler = build(server)
    return server


def test_keep_alive_reuses_one_connection_and_sends_the_request_as_given() -> None:
    async def scenario() -> tuple[Server, list[Any]]:
        async with serving(keep_answering(OK)) as server, client() as http:
            url = f"http://127.0.0.1:{server.port}/openai/v1/chat/completions?x=1"
            answers = [(await http.post(url, json={"n": n}, headers={"X-Key": "v"})).json() for n in range(3)]
        return server, answers

    server, answers = run(scenario)
    assert answers == [{"ok": True}] * 3
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /openai/v1/chat/completions?x=1 HTTP/1.1\r\n")
    assert b"\r\nhost: 127.0.0.1:" in first.lower() and b"\r\nx-key: v\r\n" in first.lower()
    assert first.endswith(b'{"n":0}')


def test_a_chunked_body_in_pieces_with_extensions_and_trailers() -> None:
    async def handler_for(server: Server) -> Handler:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while await server.read_request(reader):
                for piece in (
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhel",
                    b"lo\r\n",
                    b"6\r\n world\r\n0\r\nX-Trailer: t\r\n",
                    b"\r\n",
                ):
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.01)

        return handler

    async def scenario() -> tuple[Server, list[str]]:
        server = Server(lambda r, w: asyncio.sleep(0))
        server.handler = await handler_for(server)
        async with server, client() as http:
            texts = [(await http.get(f"http://127.0.0.1:{server.port}/")).text for _ in range(2)]
        return server, texts

    server, texts = run(scenario)
    assert texts == ["hello world", "hello world"]
    assert server.connections == 1  # read to its end: the connection was reused


def test_a_streamed_response_arrives_as_it_is_sent() -> None:
    gate = asyncio.Event

    async def scenario() -> list[bytes]:
        release = gate()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n7\r\ndata: 1\r\n")
            await writer.drain()
            await release.wait()
            writer.write(b"7\r\ndata: 2\r\n0\r\n\r\n")
            await writer.drain()

        parts = []
        async with (
            Server(handler) as server,
            client() as http,
            http.stream("GET", f"http://127.0.0.1:{server.port}/") as response,
        ):
            async for part in response.aiter_raw():
                parts.append(part)
                release.set()  # the second part is only sent once the first was received
        return parts

    assert run(scenario) == [b"data: 1", b"data: 2"]


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\n\r\nuntil close",  # no length: the body ends with the connection
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 11\r\n\r\nuntil close",
        b"HTTP/1.0 200 OK\r\nContent-Length: 11\r\n\r\nuntil close",
    ],
)
def test_a_connection_the_server_closes_is_never_reused(response: bytes) -> None:
    async def scenario() -> tuple[Server, list[str]]:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(response)
            await writer.drain()

        server = Server(handler)
        async with server, client() as http:
            texts = [(await http.get(f"http://127.0.0.1:{server.port}/")).text for _ in range(2)]
        return server, texts

    server, texts = run(scenario)
    assert texts == ["until close"] * 2 and server.connections == 2


def test_a_head_response_with_chunked_framing_has_no_body_and_keeps_the_connection() -> None:
    async def scenario() -> tuple[Server, int, bytes, str]:
        head_answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        async with serving(keep_answering(head_answer, OK)) as server, client(timeout=2.0) as http:
            head = await http.head(f"http://127.0.0.1:{server.port}/")
            after = (await http.get(f"http://127.0.0.1:{server.port}/")).text
        return server, head.status_code, head.content, after

    server, status, content, after = run(scenario)
    assert (status, content, after) == (200, b"", '{"ok":true}') and server.connections == 1


def test_interim_responses_are_skipped_and_head_has_no_body() -> None:
    async def scenario() -> tuple[int, str, int]:
        interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        async with (
            serving(keep_answering(interim + OK, b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n")) as server,
            client() as http,
        ):
            first = await http.get(f"http://127.0.0.1:{server.port}/")
            head = await http.head(f"http://127.0.0.1:{server.port}/")
        return first.status_code, first.text, head.status_code + len(head.content)

    assert run(scenario) == (200, '{"ok":true}', 200)


@pytest.mark.parametrize(
    ("response", "error"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\ntoo short", httpx.RemoteProtocolError),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc", httpx.RemoteProtocolError),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n", httpx.RemoteProtocolError),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", httpx.RemoteProtocolError),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", httpx.RemoteProtocolError),
        (b"SSH-2.0-OpenSSH\r\n\r\n", httpx.RemoteProtocolError),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", httpx.RemoteProtocolError),
        (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", httpx.RemoteProtocolError),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", httpx.RemoteProtocolError),  # then it closes
        (b"", httpx.RemoteProtocolError),  # closed without a byte
    ],
)
def test_a_broken_response_is_an_httpx_error_and_the_connection_is_dropped(
    response: bytes, error: type[Exception]
) -> None:
    async def scenario() -> tuple[Server, str]:
        calls = 0

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal calls
            while await server.read_request(reader):
                calls += 1
                writer.write(response if calls == 1 else OK)
                await writer.drain()
                if calls == 1:
                    return  # and close

        server = Server(handler)
        async with server, client() as http:
            with pytest.raises(error):
                await http.get(f"http://127.0.0.1:{server.port}/")
            after = (await http.get(f"http://127.0.0.1:{server.port}/")).text  # a fresh connection works
        return server, after

    server, after = run(scenario)
    assert after == '{"ok":true}' and server.connections == 2


@pytest.mark.parametrize("phase", ["before the head", "inside the body"])
def test_a_server_that_hangs_is_a_read_timeout(phase: str) -> None:
    async def scenario() -> float:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            if phase == "inside the body":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
                await writer.drain()
            await asyncio.sleep(30)

        async with Server(handler) as server, client(timeout=0.3) as http:
            started = asyncio.get_running_loop().time()
            with pytest.raises(httpx.ReadTimeout):
                await http.get(f"http://127.0.0.1:{server.port}/")
            return asyncio.get_running_loop().time() - started

    assert 0.25 < run(scenario) < 2.0


def test_an_idle_connection_the_server_dropped_is_replaced() -> None:
    async def scenario() -> tuple[Server, list[str]]:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await server.read_request(reader)
            writer.write(OK)  # keep-alive offered, then the server closes the idle connection anyway
            await writer.drain()

        server = Server(handler)
        async with server, client() as http:
            first = (await http.get(f"http://127.0.0.1:{server.port}/")).text
            await asyncio.sleep(0.1)
            second = (await http.get(f"http://127.0.0.1:{server.port}/")).text
        return server, [first, second]

    server, texts = run(scenario)
    assert texts == ['{"ok":true}'] * 2 and server.connections == 2


def test_no_more_than_max_connections_are_open_at_once() -> None:
    async def scenario() -> tuple[Server, list[int]]:
        async with serving(keep_answering(OK, delay=0.05)) as server, client(max_connections=2) as http:
            url = f"http://127.0.0.1:{server.port}/"
            responses = await asyncio.gather(*(http.get(url) for _ in range(7)))
        return server, [r.status_code for r in responses]

    server, statuses = run(scenario)
    assert statuses == [200] * 7
    assert server.most_open == 2 and server.connections == 2


def test_waiting_for_a_connection_is_bounded_by_the_pool_timeout() -> None:
    async def scenario() -> None:
        async with serving(keep_answering(OK, delay=1.0)) as server:
            timeout = httpx.Timeout(5.0, pool=0.1)
            transport = Http1Transport(ssl_context=ssl.create_default_context(), max_connections=1)
            async with httpx.AsyncClient(transport=transport, timeout=timeout) as http:
                url = f"http://127.0.0.1:{server.port}/"
                slow = asyncio.create_task(http.get(url))
                await asyncio.sleep(0.05)
                with pytest.raises(httpx.PoolTimeout):
                    await http.get(url)
                assert (await slow).status_code == 200

    run(scenario)


def test_a_cancelled_request_closes_its_connection_and_frees_its_slot() -> None:
    async def scenario() -> tuple[Server, int]:
        calls = 0

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal calls
            while await server.read_request(reader):
                calls += 1
                if calls == 1:
                    await asyncio.sleep(30)  # the first request hangs until the client gives up on it
                writer.write(OK)
                await writer.drain()

        server = Server(handler)
        async with server, client(max_connections=1) as http:
            url = f"http://127.0.0.1:{server.port}/"
            task = asyncio.create_task(http.get(url))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            status = (await asyncio.wait_for(http.get(url), 2)).status_code
        return server, status

    server, status = run(scenario)
    assert status == 200 and server.connections == 2


def test_a_streamed_request_body_is_sent_chunked() -> None:
    async def scenario() -> bytes:
        received = bytearray()

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            assert b"transfer-encoding: chunked" in head.lower()
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                data = await reader.readexactly(size + 2)
                if size == 0:
                    break
                received.extend(data[:-2])
            writer.write(OK)
            await writer.drain()

        async def body() -> Any:
            for part in (b"first ", b"", b"second"):
                yield part

        async with Server(handler) as server, client() as http:
            response = await http.post(f"http://127.0.0.1:{server.port}/", content=body())
            assert response.status_code == 200
        return bytes(received)

    assert run(scenario) == b"first second"


# ---------------------------------------------------------------------------------------- network guard


@pytest.mark.parametrize("host", ["169.254.169.254", "[fd00:ec2::254]", "10.0.0.1", "127.0.0.1"])
def test_a_non_public_ip_literal_is_refused_without_connecting(
    host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FAIR_RUNNERS_ALLOWED_HOSTS")
    attempts: list[Any] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        original = loop.create_connection

        async def recording(*args: Any, **kwargs: Any) -> Any:
            attempts.append(kwargs.get("host"))
            return await original(*args, **kwargs)

        monkeypatch.setattr(loop, "create_connection", recording)
        async with client() as http:
            with pytest.raises(httpx.ConnectError, match="network guard"):
                await http.get(f"https://{host}/v1/chat/completions")

    run(scenario)
    assert attempts == []


def test_a_name_is_connected_to_only_at_the_addresses_the_guard_checked(
    monkeypatch: pytest.MonkeyPatch, _no_real_dns: dict[str, list[str]]
) -> None:
    """DNS rebinding: the name now answers with a loopback address; an allowlisted name goes through."""

    async def scenario() -> tuple[Server, int]:
        async with serving(keep_answering(OK)) as server, client() as http:
            _no_real_dns["rebound.test"] = ["127.0.0.1"]
            with pytest.raises(httpx.ConnectError, match=r"network guard.*loopback"):
                await http.get(f"http://rebound.test:{server.port}/")
            assert server.connections == 0
            monkeypatch.setenv("FAIR_RUNNERS_ALLOWED_HOSTS", f"rebound.test:{server.port}")
            status = (await http.get(f"http://rebound.test:{server.port}/")).status_code
        return server, status

    server, status = run(scenario)
    assert status == 200 and server.connections == 1


def test_a_name_that_does_not_resolve_is_a_connect_error() -> None:
    async def scenario() -> None:
        async with client() as http:
            with pytest.raises(httpx.ConnectError, match="does not resolve"):
                await http.get("https://nowhere.invalid/")

    run(scenario)


def test_a_refused_port_is_a_connect_error() -> None:
    async def scenario() -> None:
        async with Server(lambda r, w: asyncio.sleep(0)) as server:
            port = server.port
        async with client() as http:
            with pytest.raises(httpx.ConnectError):
                await http.get(f"http://127.0.0.1:{port}/")

    run(scenario)


# ------------------------------------------------------------------------------------------------------ TLS


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_https_verifies_the_certificate_and_the_name(
    certificate: tuple[Path, Path], _no_real_dns: dict[str, list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    cert_path, key_path = certificate
    _no_real_dns["localhost"] = ["127.0.0.1"]
    _no_real_dns["other.test"] = ["127.0.0.1"]

    async def scenario() -> list[Any]:
        server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_side.load_cert_chain(cert_path, key_path)
        trusting = ssl.create_default_context(cafile=str(cert_path))
        outcomes: list[Any] = []
        answer = keep_answering(OK)
        server = Server(lambda r, w: asyncio.sleep(0))
        server.handler = answer(server)
        started = await asyncio.start_server(server.handler, "127.0.0.1", 0, ssl=server_side)
        port = started.sockets[0].getsockname()[1]
        try:
            async with client(context=trusting) as http:
                for _ in range(2):
                    outcomes.append((await http.get(f"https://localhost:{port}/")).json())
                with pytest.raises(httpx.ConnectError, match=r"certificate|hostname|match"):
                    await http.get(f"https://other.test:{port}/")  # the certificate is not for this name
            async with client() as http:  # the default trust store does not know this certificate
                with pytest.raises(httpx.ConnectError, match="certificate"):
                    await http.get(f"https://localhost:{port}/")
        finally:
            started.close()
        outcomes.append(len(server.requests))
        return outcomes

    monkeypatch.setenv("FAIR_RUNNERS_ALLOWED_HOSTS", "127.0.0.1,localhost,other.test")
    assert run(scenario) == [{"ok": True}, {"ok": True}, 2]


@pytest.mark.parametrize(
    ("name", "value"),
    [("X-Key", "v\r\nX-Injected: 1"), ("X-Key", "v\nGET / HTTP/1.1"), ("X-Key", "v\x00"), ("X-Key", "v\rw")],
)
def test_a_header_that_would_write_its_own_lines_is_refused_before_sending(name: str, value: str) -> None:
    async def scenario() -> Server:
        async with serving(keep_answering(OK)) as server, client() as http:
            with pytest.raises(httpx.LocalProtocolError, match="CR, LF or NUL"):
                await http.get(f"http://127.0.0.1:{server.port}/", headers={name: value})
            assert (await http.get(f"http://127.0.0.1:{server.port}/")).status_code == 200
        return server

    server = run(scenario)
    assert len(server.requests) == 1 and b"injected" not in server.requests[0].lower()
