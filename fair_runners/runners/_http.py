"""HTTP for the runners: one guarded aiohttp session per run, bodies read within a size cap, and the provider
SDKs' httpx client on that same session (httpx-aiohttp, the transport the OpenAI SDK itself offers).

Every request goes through the network guard (`_session.guarded_session`), the env proxy is chosen per
request (`_proxies`), and every body is counted after decompression while it is read, yielding to the event
loop between chunks, so a gzip bomb or an endless body fails its turn as `too_large` in bounded memory and
the turn timeout can always fire.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import zlib
from collections.abc import AsyncIterator

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from .._errors import ProtocolError
from .._proxies import proxy_settings
from ._reading import too_large


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """httpx's default verifying context, built once per process (loading the CA bundle costs ~20 ms). The
    aiohttp session verifies with its own default; this only spares httpx-aiohttp building an unused one."""
    return httpx.create_ssl_context()


class ProviderTransport(httpx.AsyncBaseTransport):
    """The provider SDK's httpx transport: httpx-aiohttp over the run's guarded aiohttp session.

    Per request: the env proxy (or none), `Accept-Encoding: identity` (a completion gains nothing from
    compression), and a body stream that is decoded here within `max_body_bytes` (a server that compresses
    anyway is decompressed in bounded steps; an encoding other than gzip/deflate is refused).
    """

    def __init__(self, session: aiohttp.ClientSession, max_body_bytes: int) -> None:
        self._session = session
        self._max = max_body_bytes
        self._by_proxy: dict[str | None, AiohttpTransport] = {}
        self._proxies = proxy_settings()  # read once per run, not per request
        self._proxy_of: dict[tuple[str, str, int | None], str | None] = {}

    def _transport(self, proxy: str | None) -> AiohttpTransport:
        transport = self._by_proxy.get(proxy)
        if transport is None:
            transport = AiohttpTransport(
                client=self._session,
                verify=_tls_context(),
                trust_env=False,
                proxy=httpx.Proxy(proxy) if proxy else None,
            )
            self._by_proxy[proxy] = transport
        return transport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send through the session (the proxy chosen for this URL); return a size-capped response."""
        request.headers["Accept-Encoding"] = "identity"
        url = request.url
        where = (url.scheme, url.host, url.port)
        if where not in self._proxy_of:
            self._proxy_of[where] = self._proxies.proxy_for(str(url))
        proxy = self._proxy_of[where]
        response = await self._transport(proxy).handle_async_request(request)
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity", "gzip", "x-gzip", "deflate"):
            await response.aclose()
            raise ProtocolError(
                f"the provider answered in content-encoding {encoding!r} (identity was asked)"
            )
        headers = [
            (name, value)
            for name, value in response.headers.multi_items()
            if name.lower() not in ("content-encoding", "content-length")
        ]
        return httpx.Response(
            status_code=response.status_code,
            headers=headers,
            stream=_CappedStream(response, self._max, encoding),
            request=request,
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        """Nothing to close: the session belongs to the runner that opened it."""


class _CappedStream(httpx.AsyncByteStream):
    """A response body decoded here (gzip/deflate) in steps of at most the bytes still allowed."""

    def __init__(self, response: httpx.Response, limit: int, encoding: str) -> None:
        self._response = response
        self._limit = limit
        self._encoding = encoding

    async def __aiter__(self) -> AsyncIterator[bytes]:
        decoder = _decoder(self._encoding)
        size = 0
        async for raw in self._response.aiter_raw():
            data = raw
            if decoder is not None:
                data = decoder.decompress(raw, self._limit - size + 1)
                if decoder.unconsumed_tail:  # more output than the cap allows is waiting
                    raise too_large("the provider's reply", self._limit)
            size += len(data)
            if size > self._limit:
                raise too_large("the provider's reply", self._limit)
            if data:
                yield data
            await asyncio.sleep(0)
        if decoder is not None and not decoder.eof:
            rest = decoder.flush()
            if size + len(rest) > self._limit:
                raise too_large("the provider's reply", self._limit)
            if rest:
                yield rest

    async def aclose(self) -> None:
        await self._response.aclose()


def _decoder(encoding: str) -> zlib._Decompress | None:
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj(zlib.MAX_WBITS | 32)  # zlib-wrapped (what RFC 9110 calls deflate)
    return None
