"""The guarded HTTP session: the network guard's rules (`_netguard`) applied at connect time.

`guarded_session()` is the one aiohttp session each runner uses (the LLM runner's provider SDK reaches it
through httpx-aiohttp). Its resolver resolves a name itself, re-checks every address and returns only the
addresses it checked (so a DNS answer that changes between the check and the connection, "DNS rebinding",
cannot reach a private address); IP-literal hosts are checked before connecting. Through an env proxy
(`_proxies`) the target host is vetted the same way before the request is sent, and the proxy, which the
deployer chose, is exempt. Redirects are never followed (each request says so).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import aiohttp
import aiohttp.abc
import aiohttp.connector
import aiohttp.tracing

from .._netguard import (
    BlockedAddress,
    LookupFailed,
    check_addresses,
    check_ip,
    is_allowlisted,
    is_ip_literal,
    lookup,
    resolve_checked,
)
from .._proxies import proxy_settings


def _refused(host: str, why: str) -> OSError:
    return OSError(f"refused by the network guard: {host} ({why})")


class GuardedResolver(aiohttp.abc.AbstractResolver):
    """Resolves a name itself (bounded by `FAIR_RUNNERS_DNS_TIMEOUT_S`) and returns only checked addresses.

    aiohttp connects to exactly the addresses a resolver returns, so a DNS answer that changed since
    `prepare()` checked the name ("DNS rebinding") cannot reach a private address.
    """

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[aiohttp.abc.ResolveResult]:
        try:
            raw = await lookup(host, port)
        except LookupFailed:
            raise _refused(host, "it does not resolve") from None
        try:
            if is_allowlisted(host, port) or (host.lower(), port) in proxy_settings().proxy_hosts():
                addresses = [ipaddress.ip_address(text.split("%", 1)[0]) for text in raw]
            else:
                addresses = check_addresses(raw)
        except (BlockedAddress, ValueError) as exc:
            raise _refused(host, str(exc)) from None
        return [
            {
                "hostname": host,
                "host": str(address),
                "port": port,
                "family": socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            }
            for address in addresses
        ]

    async def close(self) -> None:
        """Nothing to release (lookups run in a shared thread pool)."""


def _literal_refusal(host: str, port: int) -> str | None:
    """Why an IP-literal host may not be connected to (None: not a literal, allowlisted, or public)."""
    try:
        literal = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if is_allowlisted(host, port):
        return None
    try:
        check_ip(literal)
    except BlockedAddress as exc:
        return str(_refused(host, str(exc)))
    return None


class GuardedConnector(aiohttp.TCPConnector):
    """A `TCPConnector` that checks IP-literal hosts too (aiohttp does not resolve those), and the target
    host of a request sent through a proxy (the proxy resolves and connects, so the name is vetted here)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # One verdict per (host, port, proxied) for the session's life (a run): the same few hosts come back
        # on every request, and the allowlist is read when the session opens.
        self._verdicts: dict[tuple[str, int, bool], str | None] = {}

    async def connect(
        self,
        req: aiohttp.ClientRequest,
        traces: list[aiohttp.tracing.Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 (aiohttp's interface)
    ) -> aiohttp.connector.Connection:
        host = (req.url.raw_host or "").strip("[]")
        port = req.url.port or 0
        proxied = req.proxy is not None
        key = (host, port, proxied)
        refusal = self._verdicts.get(key, "")
        if refusal == "":  # not seen yet
            refusal = _literal_refusal(host, port)
            if refusal is None and proxied:
                refusal = await _name_refusal(host, port)
            self._verdicts[key] = refusal
        if refusal is not None:
            raise aiohttp.ClientConnectionError(refusal)
        return await super().connect(req, traces, timeout)


async def _name_refusal(host: str, port: int) -> str | None:
    """Why a DNS name may not be sent to through a proxy (None: allowlisted, a literal, or all public)."""
    if is_ip_literal(host) or is_allowlisted(host, port):
        return None
    try:
        await resolve_checked(host, port)
    except BlockedAddress as exc:
        return str(_refused(host, str(exc)))
    return None


def guarded_session(
    max_connections: int, timeout: aiohttp.ClientTimeout | None = None
) -> aiohttp.ClientSession:
    """The HTTP session every runner uses: one keep-alive pool, every address checked. Proxies are passed
    per request (`_proxies.proxy_for`), never read by aiohttp itself (`trust_env=False`: no `~/.netrc`).

    Create it inside the running event loop (it binds to it).
    """
    connector = GuardedConnector(
        limit=max_connections, limit_per_host=0, keepalive_timeout=30, resolver=GuardedResolver()
    )
    return aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False)
