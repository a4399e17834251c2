"""A lean HTTP/1.1 transport under the provider SDKs' `httpx.AsyncClient` (LLM mode).

The SDKs (openai, groq) only speak httpx, and a request through httpx's own pool or through aiohttp costs
~0.1 ms more CPU than this transport, over a call of ~1 ms: one `asyncio.Protocol` per keep-alive
connection, a byte buffer, and the framing the providers use (Content-Length, chunked, or until close).
httpx still does everything above the wire (headers, timeouts' values, content decoding, the SDK's hooks).

The network guard holds at connect time as in the aiohttp session: a DNS name is resolved by the guard's
resolver, which returns only checked addresses ("DNS rebinding" cannot reach a private one), and an IP
literal is checked before any connection; both honour `FAIR_RUNNERS_ALLOWED_HOSTS`. No env proxies.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import time
from collections.abc import AsyncIterator

import httpx

from .._netguard import GuardedResolver, _literal_refusal

_MAX_HEAD = 64 * 1024  # status line and headers
_MAX_CHUNK_LINE = 4096
_KEEPALIVE_S = 30.0
_DEFAULT_PORTS = {"http": 80, "https": 443}


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection: received bytes accumulate in `buffer`; `wait()` waits for more."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.closed = False  # the peer closed its side, or the connection was lost
        self.error: BaseException | None = None
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.error = exc
        self._wake()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self, seconds: float | None) -> None:
        """Wait for more bytes or the end of the connection; `httpx.ReadTimeout` after `seconds`."""
        if self.closed:
            if self.error is not None:
                raise httpx.ReadError(f"the connection was lost: {self.error}")
            raise httpx.RemoteProtocolError("the server closed the connection before the response ended")
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(seconds):
                await self._waiter
        except TimeoutError:
            raise httpx.ReadTimeout("timed out reading the response") from None
        finally:
            self._waiter = None

    async def write(self, data: bytes, seconds: float | None) -> None:
        """Send `data`, waiting (up to `seconds`) while the socket buffer is full."""
        if self.closed or self.transport is None:
            raise httpx.WriteError("the connection is closed")
        self.transport.write(data)
        if self._drained is not None:
            try:
                async with asyncio.timeout(seconds):
                    await self._drained
            except TimeoutError:
                raise httpx.WriteTimeout("timed out sending the request") from None
            if self.closed:
                raise httpx.WriteError("the connection was lost while sending the request")

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class Http1Transport(httpx.AsyncBaseTransport):
    """HTTP/1.1 with keep-alive, at most `max_connections` connections at once, through the network guard."""

    def __init__(self, *, ssl_context: ssl.SSLContext, max_connections: int) -> None:
        self._ssl = ssl_context
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._resolver = GuardedResolver()
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        url = request.url
        if url.scheme not in _DEFAULT_PORTS:
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}")
        if self._closed:
            raise httpx.ConnectError("the transport is closed")
        key = (url.scheme, url.host, url.port or _DEFAULT_PORTS[url.scheme])
        try:
            async with asyncio.timeout(timeouts.get("pool")):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout("timed out waiting for a free connection") from None
        connection: _Connection | None = None
        try:
            connection = self._reuse(key) or await self._connect(key, timeouts.get("connect"))
            await self._send(connection, request, timeouts.get("write"))
            status, reason, headers, persistent = await _read_head(connection, timeouts.get("read"))
            stream = _Body(self, key, connection, request, status, headers, persistent, timeouts.get("read"))
        except BaseException:
            if connection is not None:
                connection.close()
            self._slots.release()
            raise
        return httpx.Response(
            status,
            headers=headers,
            stream=stream,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason},
        )

    def _reuse(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if not connection.closed and not connection.buffer and now - connection.idle_since < _KEEPALIVE_S:
                return connection
            connection.close()
        return None

    def _release(self, key: tuple[str, str, int], connection: _Connection, reusable: bool) -> None:
        if reusable and not connection.closed and not self._closed:
            connection.idle_since = time.monotonic()
            self._idle.setdefault(key, []).append(connection)
        else:
            connection.close()
        self._slots.release()

    async def _connect(self, key: tuple[str, str, int], seconds: float | None) -> _Connection:
        scheme, host, port = key
        refusal = _literal_refusal(host, port)
        if refusal is not None:
            raise httpx.ConnectError(refusal)
        loop = asyncio.get_running_loop()
        tls = self._ssl if scheme == "https" else None
        last: BaseException | None = None
        try:
            async with asyncio.timeout(seconds):
                try:
                    addresses = [str(ipaddress.ip_address(host))]  # a literal: checked above
                except ValueError:
                    try:
                        addresses = [a["host"] for a in await self._resolver.resolve(host, port)]
                    except OSError as exc:
                        raise httpx.ConnectError(str(exc)) from None
                for address in addresses:
                    try:
                        _, connection = await loop.create_connection(
                            _Connection,
                            host=address,
                            port=port,
                            ssl=tls,
                            server_hostname=host if tls is not None else None,
                        )
                    except (OSError, ssl.SSLError) as exc:
                        last = exc
                        continue
                    return connection
        except TimeoutError:
            raise httpx.ConnectTimeout(f"timed out connecting to {host}:{port}") from None
        raise httpx.ConnectError(f"could not connect to {host}:{port}: {last}")

    async def _send(self, connection: _Connection, request: httpx.Request, seconds: float | None) -> None:
        head = [request.method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
        for name, value in request.headers.raw:
            head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n")
        data = b"".join(head)
        # One line per header, as h11 would insist: a CR, LF or NUL inside a name, value or the target would
        # let that text write headers (or a second request) of its own.
        lines = len(request.headers.raw) + 2
        if data.count(b"\n") != lines or data.count(b"\r") != lines or b"\0" in data:
            raise httpx.LocalProtocolError("a header or the request target holds a CR, LF or NUL character")
        chunked = request.headers.get("transfer-encoding", "").lower() == "chunked"
        stream = request.stream
        if isinstance(stream, httpx.ByteStream):  # the SDKs' JSON bodies: one write with the head
            await connection.write(data + request.content, seconds)
            return
        await connection.write(data, seconds)
        assert isinstance(stream, httpx.AsyncByteStream)
        async for part in stream:
            if part:
                await connection.write(b"%x\r\n%b\r\n" % (len(part), part) if chunked else part, seconds)
        if chunked:
            await connection.write(b"0\r\n\r\n", seconds)

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()


async def _read_head(
    connection: _Connection, seconds: float | None
) -> tuple[int, bytes, list[tuple[bytes, bytes]], bool]:
    """The status, reason and headers of the response (interim 1xx responses skipped), and whether its
    version keeps the connection open by default (HTTP/1.1, not 1.0)."""
    while True:
        head = await _read_until(connection, b"\r\n\r\n", _MAX_HEAD, "the response headers are", seconds)
        lines = head.split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        code, _, reason = rest.partition(b" ")
        if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
            raise httpx.RemoteProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        status = int(code)
        headers = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip() or line[:1] in b" \t":
                raise httpx.RemoteProtocolError(f"malformed response header line: {line[:80]!r}")
            headers.append((name, value.strip(b" \t")))
        if status == 101 or not 100 <= status < 200:
            return status, reason, headers, version != b"HTTP/1.0"


class _Body(httpx.AsyncByteStream):
    """The response body, read from the connection as the caller iterates; the connection goes back to the
    pool only when the body was read to its end and both sides allow keep-alive."""

    def __init__(
        self,
        transport: Http1Transport,
        key: tuple[str, str, int],
        connection: _Connection,
        request: httpx.Request,
        status: int,
        headers: list[tuple[bytes, bytes]],
        persistent: bool,
        seconds: float | None,
    ) -> None:
        self._transport = transport
        self._key = key
        self._connection: _Connection | None = connection
        self._timeout = seconds
        self._length: int | None = None
        self._chunked = False
        self._complete = False
        keep_alive = persistent and request.headers.get("connection", "").lower() != "close"
        lengths: set[bytes] = set()
        for name, value in headers:
            lower = name.lower()
            if lower == b"content-length":
                lengths.update(v.strip() for v in value.split(b","))
            elif lower == b"transfer-encoding":
                self._chunked = self._chunked or b"chunked" in value.lower()
            elif lower == b"connection" and b"close" in value.lower():
                keep_alive = False
        if request.method == "HEAD" or status in (204, 304):  # no body, whatever the framing headers say
            self._chunked, self._length = False, 0
        elif self._chunked:
            pass
        elif lengths:
            if len(lengths) > 1 or not all(v.isdigit() for v in lengths):
                raise httpx.RemoteProtocolError(f"invalid Content-Length: {sorted(lengths)!r}")
            self._length = int(lengths.pop())
        else:
            keep_alive = False  # the body ends when the server closes the connection
        self._keep_alive = keep_alive

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        if connection is None:
            raise httpx.StreamClosed()
        if self._chunked:
            async for part in self._read_chunked(connection):
                yield part
        elif self._length is not None:
            remaining = self._length
            while remaining:
                if not connection.buffer:
                    await connection.wait(self._timeout)
                part = bytes(connection.buffer[:remaining])
                del connection.buffer[: len(part)]
                remaining -= len(part)
                yield part
        else:
            while True:
                if connection.buffer:
                    part = bytes(connection.buffer)
                    connection.buffer.clear()
                    yield part
                elif connection.closed:
                    if connection.error is not None:
                        raise httpx.ReadError(f"the connection was lost: {connection.error}")
                    break
                else:
                    await connection.wait(self._timeout)
        self._complete = True

    async def _read_chunked(self, connection: _Connection) -> AsyncIterator[bytes]:
        buffer = connection.buffer
        while True:
            line = await _read_line(connection, self._timeout)
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise httpx.RemoteProtocolError(f"invalid chunk size: {line[:40]!r}") from None
            if size < 0:
                raise httpx.RemoteProtocolError(f"invalid chunk size: {line[:40]!r}")
            if size == 0:
                while await _read_line(connection, self._timeout):  # trailers, up to the empty line
                    pass
                return
            while size:
                if not buffer:
                    await connection.wait(self._timeout)
                part = bytes(buffer[:size])
                del buffer[: len(part)]
                size -= len(part)
                yield part
            if await _read_line(connection, self._timeout):
                raise httpx.RemoteProtocolError("a chunk is longer than its size")

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._transport._release(self._key, connection, self._complete and self._keep_alive)


async def _read_until(
    connection: _Connection, delimiter: bytes, limit: int, what: str, seconds: float | None
) -> bytes:
    """The bytes before the next `delimiter` (both consumed); `RemoteProtocolError` past `limit` bytes."""
    buffer = connection.buffer
    end = buffer.find(delimiter)
    while end < 0:
        if len(buffer) > limit:
            raise httpx.RemoteProtocolError(f"{what} over {limit // 1024} KiB")
        await connection.wait(seconds)
        end = buffer.find(delimiter)
    if end > limit:
        raise httpx.RemoteProtocolError(f"{what} over {limit // 1024} KiB")
    data = bytes(buffer[:end])
    del buffer[: end + len(delimiter)]
    return data


async def _read_line(connection: _Connection, seconds: float | None) -> bytes:
    return await _read_until(connection, b"\r\n", _MAX_CHUNK_LINE, "a chunk size line is", seconds)
