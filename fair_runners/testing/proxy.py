"""A forward HTTP proxy on 127.0.0.1 for tests: absolute-form requests and CONNECT tunnels, keep-alive,
bodies streamed both ways as they come, optional Basic proxy auth, and a log of what went through.

    with ForwardProxy(require_auth=("user", "pass")) as proxy:
        ...  # aiohttp: session.get(url, proxy=proxy.url, proxy_auth=aiohttp.BasicAuth("user", "pass"))
        proxy.log  # [ProxyLogEntry(method="GET", target="http://127.0.0.1:PORT/x", ..., status=200)]

It runs its own event loop in a background thread and speaks HTTP/1.1 through h11 on both sides, so framing
(Content-Length, chunked, a cut body) is handled as a real proxy does; a body cut short upstream is cut
short downstream. Plain `http://` targets only (https goes through CONNECT).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
from dataclasses import dataclass
from types import TracebackType

import h11

from ._proxy_http import Peer, authority, end_to_end, header, origin, pump


@dataclass(frozen=True)
class ProxyLogEntry:
    """One request the proxy answered: `target` is the absolute-form URL, or `host:port` for CONNECT;
    `status` the status the proxy sent back (the upstream's, or its own 400/407/502)."""

    method: str
    target: str
    proxy_authorization: str | None
    status: int


class ForwardProxy:
    """A forward proxy on `host` (an ephemeral port unless `port`); `start()`/`stop()` or `with`.

    `require_auth=(user, password)` answers 407 (with `Proxy-Authenticate: Basic`) to any request, CONNECT
    included, without that `Proxy-Authorization: Basic`, and closes the connection. `connections` counts the
    client connections accepted (keep-alive reuses one).
    """

    def __init__(
        self, require_auth: tuple[str, str] | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.host = host
        self.port = port
        self.connections = 0  # client connections accepted
        self._expected = None
        if require_auth is not None:
            user, password = require_auth
            self._expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self._log: list[ProxyLogEntry] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """`http://HOST:PORT` of the running proxy."""
        return f"http://{self.host}:{self.port}"

    @property
    def log(self) -> list[ProxyLogEntry]:
        """What went through so far, in the order the proxy answered."""
        with self._lock:
            return list(self._log)

    def start(self) -> ForwardProxy:
        """Start the proxy's thread and wait until it listens."""
        self._thread = threading.Thread(target=self._run, name="forward-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._error is not None:
            raise RuntimeError(f"forward proxy did not start on {self.host}:{self.port}: {self._error!r}")
        return self

    def stop(self) -> None:
        """Close the listening socket and every connection, and wait for the thread (again: no-op)."""
        if self._thread is None or not self._thread.is_alive():
            return
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout=5)

    def __enter__(self) -> ForwardProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by start(); a thread has nowhere else to say it
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        tasks: set[asyncio.Task[None]] = set()

        async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            tasks.add(task)
            self.connections += 1
            try:
                await self._client(Peer(h11.SERVER, reader, writer))
            except (ConnectionError, OSError, h11.ProtocolError):
                pass  # the client or the upstream broke the exchange: the connection just ends
            except asyncio.CancelledError:
                pass  # stop() ends every connection (asyncio would log a cancelled handler as an error)
            finally:
                tasks.discard(task)
                writer.close()

        server = await asyncio.start_server(client, self.host, self.port)
        self.port = int(server.sockets[0].getsockname()[1])
        self._ready.set()
        await self._stopping.wait()
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    def _record(self, request: h11.Request, status: int) -> None:
        auth = header(request.headers, b"proxy-authorization")
        entry = ProxyLogEntry(
            method=request.method.decode("latin-1"),
            target=request.target.decode("latin-1"),
            proxy_authorization=auth.decode("latin-1") if auth is not None else None,
            status=status,
        )
        with self._lock:
            self._log.append(entry)

    async def _refuse(
        self, client: Peer, request: h11.Request, status: int, reason: str, detail: str = "", **extra: str
    ) -> None:
        """Answer the proxy's own error (`extra` headers: `proxy_authenticate=` ...) and close after it."""
        body = f"{reason}: {detail}\n".encode() if detail else f"{reason}\n".encode()
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")]
        headers += [(name.replace("_", "-").encode(), value.encode()) for name, value in extra.items()]
        self._record(request, status)
        await client.send(h11.Response(status_code=status, headers=headers, reason=reason.encode()))
        await client.send(h11.Data(data=body))
        await client.send(h11.EndOfMessage())

    async def _client(self, client: Peer) -> None:
        upstream: tuple[str, int, Peer] | None = None
        try:  # until the client closes (ConnectionClosed) or the exchange rules out another one
            while isinstance(request := await client.next_event(), h11.Request):
                auth = header(request.headers, b"proxy-authorization")
                if self._expected is not None and (auth or b"").decode("latin-1") != self._expected:
                    realm = 'Basic realm="fair-runners test proxy"'
                    await self._refuse(
                        client, request, 407, "Proxy Authentication Required", proxy_authenticate=realm
                    )
                    return
                if request.method == b"CONNECT":
                    await self._tunnel(client, request)
                    return
                upstream = await self._forward(client, request, upstream)
                if not client.reusable():
                    return
        finally:
            if upstream is not None:
                upstream[2].close()

    async def _forward(
        self, client: Peer, request: h11.Request, upstream: tuple[str, int, Peer] | None
    ) -> tuple[str, int, Peer] | None:
        """Relay one absolute-form request and its response; the upstream connection kept for reuse."""
        try:
            host, port, path = origin(request.target.decode("latin-1"))
        except ValueError as exc:
            await self._refuse(client, request, 400, "Bad Request", str(exc))
            return upstream
        if upstream is None or upstream[:2] != (host, port):
            if upstream is not None:
                upstream[2].close()
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError as exc:
                await self._refuse(client, request, 502, "Bad Gateway", str(exc))
                return None
            upstream = (host, port, Peer(h11.CLIENT, reader, writer))
        peer = upstream[2]
        try:
            await self._exchange(client, request, peer, host, port, path)
        except BaseException:
            peer.close()  # never half-used again
            raise
        if peer.reusable():
            return upstream
        peer.close()
        return None

    async def _exchange(
        self, client: Peer, request: h11.Request, peer: Peer, host: str, port: int, path: str
    ) -> None:
        headers = end_to_end(request.headers)
        if header(headers, b"host") is None:
            headers.append((b"host", f"{host}:{port}".encode()))
        await peer.send(h11.Request(method=request.method, target=path.encode(), headers=headers))
        await _relay_body(client, peer)
        while isinstance(response := await peer.next_event(), h11.InformationalResponse):
            await client.send(response)
        if not isinstance(response, h11.Response):
            raise h11.RemoteProtocolError(f"upstream {host}:{port} closed without answering")
        self._record(request, response.status_code)
        head = h11.Response(
            status_code=response.status_code, headers=end_to_end(response.headers), reason=response.reason
        )
        await client.send(head)
        await _relay_body(peer, client)

    async def _tunnel(self, client: Peer, request: h11.Request) -> None:
        """Answer CONNECT with 200 and pump bytes both ways until both sides are done."""
        try:
            host, port = authority(request.target.decode("latin-1"))
            reader, writer = await asyncio.open_connection(host, port)
        except ValueError as exc:
            await self._refuse(client, request, 400, "Bad Request", str(exc))
            return
        except OSError as exc:
            await self._refuse(client, request, 502, "Bad Gateway", str(exc))
            return
        try:
            self._record(request, 200)
            await client.send(h11.Response(status_code=200, headers=[], reason=b"Connection established"))
            leftover, _ = client.conn.trailing_data
            await asyncio.gather(
                pump(client.reader, writer, leftover), pump(reader, client.writer), return_exceptions=True
            )
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()


async def _relay_body(source: Peer, sink: Peer) -> None:
    """Pass a message body on, part by part as it comes (a stream is never held back), with its end."""
    while True:
        event = await source.next_event()
        if isinstance(event, h11.Data):
            await sink.send(h11.Data(data=event.data))
        elif isinstance(event, h11.EndOfMessage):
            await sink.send(h11.EndOfMessage())
            return
        else:
            raise h11.RemoteProtocolError(f"a message body ended with {event!r}")
