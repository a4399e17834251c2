"""Long runs of one byte as HTTP bodies, plain or gzipped, generated lazily and cheaply.

A gzip run is ONE gzip member whose deflate stream is cut into context-free pieces by full flushes: the
compressed form of 1 MiB of `a` is computed once (about 1 KB) and repeated, so a 1 GiB run costs the server
about 1 MB of copying, and its CRC-32 comes from CRC arithmetic (`crc32_combine`), not from hashing 1 GiB.
"""

from __future__ import annotations

import asyncio
import functools
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

FILL = b"a"
_UNIT = 1 << 20  # one deflate piece inflates to this many bytes of FILL
_BATCH = 64  # pieces per part sent: ~66 KB on the wire, 64 MiB inflated
_PLAIN_PART = FILL * (64 << 10)
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"  # deflate, no name, no mtime, best compression
_POLY = 0xEDB88320


def _multmodp(a: int, b: int) -> int:
    """a * b modulo the CRC-32 polynomial (bit-reflected, as zlib's `multmodp`)."""
    m, p = 1 << 31, 0
    while True:
        if a & m:
            p ^= b
            if not a & (m - 1):
                return p
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


def _x2n_table() -> list[int]:
    table, p = [], 1 << 30  # x^1
    for _ in range(32):
        table.append(p)
        p = _multmodp(p, p)
    return table


_X2N = _x2n_table()


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32 of `A + B` from `crc32(A)`, `crc32(B)` and `len(B)` (zlib's `crc32_combine`)."""
    p, k, n = 1 << 31, 3, len2  # x^0; a byte is 2^3 bits
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return _multmodp(p, crc1) ^ crc2


@functools.cache
def _crc_fill(size: int) -> int:
    """crc32(FILL * size), by doubling 1 MiB pieces."""
    count, rest = divmod(size, _UNIT)
    crc, power, power_len = 0, zlib.crc32(FILL * _UNIT), _UNIT
    while count:
        if count & 1:
            crc = crc32_combine(crc, power, power_len)
        power, power_len, count = crc32_combine(power, power, power_len), power_len * 2, count >> 1
    return crc32_combine(crc, zlib.crc32(FILL * rest), rest)


def _deflated(data: bytes, *, last: bool) -> bytes:
    """`data` as raw deflate that depends on nothing before it; full-flushed unless `last` (final block)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush(zlib.Z_FINISH if last else zlib.Z_FULL_FLUSH)


@functools.cache
def _piece() -> bytes:
    """1 MiB of FILL, deflated and full-flushed (~1 KB; built once, in ~15 ms)."""
    return _deflated(FILL * _UNIT, last=False)


@functools.cache
def _batch() -> bytes:
    return _piece() * _BATCH


@dataclass(frozen=True)
class Run:
    """`prefix + FILL * size + suffix` as a body; `size=None` never ends (and has no suffix).

    `gzip=True` makes it one gzip member (Content-Encoding: gzip) with a correct CRC-32 and length trailer.
    """

    prefix: bytes
    size: int | None
    suffix: bytes = b""
    gzip: bool = False

    def __post_init__(self) -> None:
        if self.size is not None and self.size < 0:
            raise ValueError(f"Run size={self.size}: give a byte count >= 0, or None for no end")

    def length(self) -> int | None:
        """Bytes on the wire (after compression), None when endless."""
        if self.size is None:
            return None
        if not self.gzip:
            return len(self.prefix) + self.size + len(self.suffix)
        return sum(len(part) for part in self._gzip_ends()) + (self.size // _UNIT) * len(_piece())

    def inflated_length(self) -> int | None:
        """Bytes after decompression, None when endless."""
        return None if self.size is None else len(self.prefix) + self.size + len(self.suffix)

    def start(self, count: int) -> bytes:
        """The first `count` bytes of the body (uncompressed), built without the rest."""
        fill = max(0, count - len(self.prefix))
        fill = fill if self.size is None else min(fill, self.size)
        return (self.prefix + FILL * fill + self.suffix)[:count]

    def parts(self) -> AsyncIterator[bytes]:
        """The body, part by part; yields control to the event loop between parts (so a client that went
        away gets noticed), never holding more than ~64 KB."""
        return self._gzip_parts() if self.gzip else self._plain_parts()

    async def _plain_parts(self) -> AsyncIterator[bytes]:
        yield self.prefix
        left = self.size
        while left is None or left > 0:
            part = _PLAIN_PART if left is None or left >= len(_PLAIN_PART) else _PLAIN_PART[:left]
            yield part
            if left is not None:
                left -= len(part)
            await asyncio.sleep(0)
        yield self.suffix

    def _gzip_ends(self) -> tuple[bytes, bytes]:
        """The member's head (gzip header, prefix) and, for a finite run, tail (rest, suffix, trailer)."""
        head = _GZIP_HEADER + _deflated(self.prefix, last=False)
        if self.size is None:
            return head, b""
        rest = FILL * (self.size % _UNIT) + self.suffix
        crc = crc32_combine(zlib.crc32(self.prefix), _crc_fill(self.size), self.size)
        crc = crc32_combine(crc, zlib.crc32(self.suffix), len(self.suffix))
        total = len(self.prefix) + self.size + len(self.suffix)
        return head, _deflated(rest, last=True) + struct.pack("<II", crc, total & 0xFFFFFFFF)

    async def _gzip_parts(self) -> AsyncIterator[bytes]:
        head, tail = self._gzip_ends()
        yield head
        pieces = None if self.size is None else self.size // _UNIT
        while pieces is None or pieces > 0:
            count = _BATCH if pieces is None else min(_BATCH, pieces)
            yield _batch() if count == _BATCH else _piece() * count
            if pieces is not None:
                pieces -= count
            await asyncio.sleep(0)
        yield tail
