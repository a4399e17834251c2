"""HTTP/1.1 plumbing of the test forward proxy: h11 connections over asyncio streams, hop-by-hop headers,
byte pumps for CONNECT tunnels."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from urllib.parse import urlsplit

import h11

Headers = Sequence[tuple[bytes, bytes]]
_READ = 1 << 16
_MAX_HEAD = 1 << 16  # request or response head (h11 defaults to 16 KiB)
# RFC 9110 7.6.1 hop-by-hop fields, minus Transfer-Encoding: h11 frames each side itself and needs it kept.
_HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"upgrade",
}


class Peer:
    """One side of a proxied exchange: an h11 connection on an asyncio stream."""

    def __init__(
        self,
        role: type[h11.CLIENT] | type[h11.SERVER],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.conn = h11.Connection(role, max_incomplete_event_size=_MAX_HEAD)
        self.reader = reader
        self.writer = writer

    async def next_event(self) -> h11.Event | None:
        """The next event, reading as needed; None when paused (after a CONNECT). Raises h11's
        RemoteProtocolError for a broken message, or one cut short by the peer closing."""
        while True:
            event = self.conn.next_event()
            if isinstance(event, h11.Event):
                return event
            if event is h11.PAUSED:
                return None
            self.conn.receive_data(await self.reader.read(_READ))

    async def send(self, event: h11.Event) -> None:
        """Send `event` and wait until the socket took it (so a body streams, part by part)."""
        data = self.conn.send(event)
        if data:
            self.writer.write(data)
            await self.writer.drain()

    def reusable(self) -> bool:
        """True when the exchange ended cleanly and the connection may carry another one (then reset)."""
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
            return True
        return False

    def close(self) -> None:
        self.writer.close()


def end_to_end(headers: Headers) -> list[tuple[bytes, bytes]]:
    """`headers` without the hop-by-hop ones (and those the Connection header names)."""
    named = {
        token.strip().lower()
        for name, value in headers
        if name == b"connection"
        for token in value.split(b",")
    }
    return [(name, value) for name, value in headers if name not in _HOP_BY_HOP and name not in named]


def header(headers: Headers, name: bytes) -> bytes | None:
    """The first value of header `name` (lower case), if any."""
    return next((value for key, value in headers if key == name), None)


def origin(target: str) -> tuple[str, int, str]:
    """Host, port and origin-form (path and query) of an absolute-form `http://` request target."""
    parts = urlsplit(target)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"absolute-form http:// URL expected as request target, got {target!r}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.hostname, parts.port or 80, path


def authority(target: str) -> tuple[str, int]:
    """Host and port of a CONNECT target `host:port` (`[v6]:port` too)."""
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"CONNECT target must be host:port, got {target!r}")
    return host.strip("[]"), int(port)


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes = b"") -> None:
    """Copy bytes from `reader` to `writer` until EOF, then half-close `writer`."""
    try:
        if first:
            writer.write(first)
        while data := await reader.read(_READ):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()
