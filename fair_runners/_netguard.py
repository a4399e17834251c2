"""The network guard: which URLs a request may make this service call (server-side request forgery).

A URL from a request (`config.base_url`, a connector's `base_url`) is accepted only when

- it is plain ASCII with no whitespace, control characters, backslashes, userinfo (`user@host`),
  percent-encoded or non-canonical numeric hosts (`2130706433`, `0x7f.1`, `0177.0.0.1`, `127.1`) or IPv6
  zone ids, and its scheme is `https`; and
- its host, an IP literal or every address its DNS name resolves to, is a public unicast address: not
  loopback, link-local (cloud metadata 169.254.169.254, fd00:ec2::254), private, CGNAT (100.64/10),
  reserved, documentation, benchmarking, multicast or unspecified, and not an IPv6 form that embeds an IPv4
  address (IPv4-mapped, IPv4-compatible, NAT64, 6to4, Teredo);

unless the deployer lists the host (`host`, any port) or `host:port` in env `FAIR_RUNNERS_ALLOWED_HOSTS`;
plain `http` is then accepted for it too. `check_url` runs in `prepare()`, before any connection.

The same rules hold at connect time: `guarded_session()` builds the Alquimia runner's aiohttp session, and
the LLM runner's transport (`runners/_http1.py`) uses the same resolver and IP-literal check. The resolver
resolves the name itself, re-checks every address and returns only the addresses it checked (so a DNS
answer that changes between the check and the connection, "DNS rebinding", cannot reach a private address);
IP-literal hosts are checked before connecting.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import ipaddress
import os
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aiohttp
import aiohttp.abc
import aiohttp.connector
import aiohttp.tracing

from ._errors import InvalidRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOWED_HOSTS_ENV = "FAIR_RUNNERS_ALLOWED_HOSTS"
DNS_TIMEOUT_ENV = "FAIR_RUNNERS_DNS_TIMEOUT_S"
_DEFAULT_DNS_TIMEOUT_S = 5.0
_MAX_URL_LEN = 2048

_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
# WHATWG URL: a host whose last label "ends in a number" is an IPv4 address, in any of its odd forms.
_NUMERIC_LABEL = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$")
_CANONICAL_OCTET = re.compile(r"^(?:0|[1-9][0-9]{0,2})$")

_BLOCKED_V4 = tuple(
    ipaddress.IPv4Network(net)
    for net in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
    )
)
_EMBEDS_V4 = tuple(
    (ipaddress.IPv6Network(net), name)
    for net, name in (
        ("::ffff:0:0/96", "an IPv4-mapped IPv6 address"),
        ("::/96", "an IPv4-compatible IPv6 address"),
        ("::ffff:0:0:0/96", "an IPv4-translated IPv6 address"),
        ("64:ff9b::/96", "a NAT64 address"),
        ("64:ff9b:1::/48", "a NAT64 address"),
        ("2002::/16", "a 6to4 address"),
        ("2001::/32", "a Teredo address"),
    )
)
_BLOCKED_V6 = tuple(
    ipaddress.IPv6Network(net)
    for net in (
        "::/128",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
        "100::/64",
        "2001:db8::/32",
    )
)


class BlockedAddress(Exception):
    """An address the guard refuses; the message names its kind ("a loopback address")."""


class LookupFailed(BlockedAddress):
    """A DNS name that does not resolve (in time): refused, fail closed."""


@dataclass(frozen=True)
class Target:
    """A URL that passed the guard."""

    scheme: str
    host: str
    port: int
    allowlisted: bool


def allowed_hosts() -> frozenset[str]:
    """The deployer's allowlist (env `FAIR_RUNNERS_ALLOWED_HOSTS`), lower case, without a final dot."""
    return _parse_allowed(os.environ.get(ALLOWED_HOSTS_ENV, ""))


@functools.lru_cache(maxsize=16)
def _parse_allowed(value: str) -> frozenset[str]:
    entries: set[str] = set()
    for raw in value.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry.startswith("["):  # [v6] or [v6]:port
            close = entry.find("]")
            host, rest = entry[1:close], entry[close + 1 :]
            entries.add(_norm_host(host) + rest)
            continue
        host, sep, port = entry.rpartition(":")
        if sep and port.isdigit() and ":" not in host:
            entries.add(f"{_norm_host(host)}:{int(port)}")
        else:
            entries.add(_norm_host(entry))
    return frozenset(entries)


def _norm_host(host: str) -> str:
    host = host.strip().lower().rstrip(".") if host.endswith(".") else host.strip().lower()
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host


def is_allowlisted(host: str, port: int, allowed: frozenset[str] | None = None) -> bool:
    """True when the deployer allowed `host` (any port) or `host:port`."""
    allowed = allowed_hosts() if allowed is None else allowed
    host = _norm_host(host)
    return host in allowed or f"{host}:{port}" in allowed


def check_ip(address: IPAddress) -> None:
    """Raise `BlockedAddress` unless `address` is a public unicast address."""
    if isinstance(address, ipaddress.IPv6Address):
        for net, name in _EMBEDS_V4:
            if address in net and not (net.prefixlen == 96 and int(address) <= 1):
                raise BlockedAddress(f"{name} (it embeds an IPv4 address)")
        if address.scope_id:
            raise BlockedAddress("an IPv6 address with a zone id")
        if any(address in net for net in _BLOCKED_V6):
            raise BlockedAddress(_describe(address))
    elif any(address in net for net in _BLOCKED_V4) or address == ipaddress.IPv4Address("255.255.255.255"):
        raise BlockedAddress(_describe(address))
    if not address.is_global or address.is_multicast or address.is_reserved:
        raise BlockedAddress(_describe(address))


def _describe(address: IPAddress) -> str:
    if str(address) in ("169.254.169.254", "fd00:ec2::254"):
        return "the cloud instance metadata address"
    if address in ipaddress.IPv4Network("100.64.0.0/10"):
        return "a carrier-grade NAT address (100.64.0.0/10)"
    for attr, name in (
        ("is_unspecified", "an unspecified address"),
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"),
        ("is_multicast", "a multicast address"),
        ("is_private", "a private address"),
        ("is_reserved", "a reserved address"),
    ):
        if getattr(address, attr):
            return name
    return "a non-public address"


def _resolve(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to (the one place that asks DNS; tests replace it)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _new_dns_pool() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="fair-runners-dns")


_DNS_POOL = _new_dns_pool()


def _reset_dns_pool_in_child() -> None:
    # A forked worker (LLM mode) inherits the pool object but not its threads: work handed to it would wait
    # for a thread that does not exist. Start the child with a pool of its own.
    global _DNS_POOL
    _DNS_POOL = _new_dns_pool()


os.register_at_fork(after_in_child=_reset_dns_pool_in_child)


def _dns_timeout() -> float:
    try:
        return max(0.1, float(os.environ.get(DNS_TIMEOUT_ENV, "") or _DEFAULT_DNS_TIMEOUT_S))
    except ValueError:
        return _DEFAULT_DNS_TIMEOUT_S


def resolve_checked(host: str, port: int) -> list[IPAddress]:
    """Resolve `host` (bounded by env `FAIR_RUNNERS_DNS_TIMEOUT_S`) and check every address."""
    future = _DNS_POOL.submit(_resolve, host, port)
    try:
        raw = future.result(timeout=_dns_timeout())
    except concurrent.futures.TimeoutError:
        raise LookupFailed("its DNS lookup timed out") from None
    except (OSError, UnicodeError):
        raise LookupFailed("it does not resolve") from None
    return _checked(raw)


def _checked(raw: Iterable[str]) -> list[IPAddress]:
    addresses: list[IPAddress] = []
    for text in raw:
        try:
            address = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            raise LookupFailed("it resolves to something that is not an IP address") from None
        check_ip(address)
        addresses.append(address)
    if not addresses:
        raise LookupFailed("it does not resolve")
    return addresses


def _parse_ipv4_like(host: str) -> bool:
    """True when the WHATWG URL parser would read `host` as an IPv4 address."""
    labels = host.split(".")
    if labels and labels[-1] == "":
        labels = labels[:-1]
    return bool(labels) and _NUMERIC_LABEL.match(labels[-1]) is not None


def parse_url(url: Any, loc: str) -> Target:
    """Parse and check `url` syntactically and against the allowlist (no DNS); raise `InvalidRequest`."""

    def refuse(why: str) -> InvalidRequest:
        return InvalidRequest(f"{loc} is not an allowed URL: {why}", [{"loc": loc, "msg": why}])

    if not isinstance(url, str):
        raise refuse("must be a string")
    if len(url) > _MAX_URL_LEN:
        raise refuse(f"longer than {_MAX_URL_LEN} characters")
    if not url.isascii():
        raise refuse("must be ASCII (write international domain names in punycode)")
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in url) or "\\" in url:
        raise refuse("must not contain whitespace, control characters or backslashes")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("http", "https"):
        raise refuse("must start with https://")
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if "@" in authority:
        raise refuse("must not contain a user name or password (`user@host`)")
    if "%" in authority:
        raise refuse("the host must not be percent-encoded or carry an IPv6 zone id")
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise refuse("unterminated IPv6 literal")
        host, port_text = authority[1:close], authority[close + 1 :]
        try:
            v6 = ipaddress.IPv6Address(host)
        except ValueError:
            raise refuse("not a valid IPv6 literal") from None
        if port_text and not port_text.startswith(":"):
            raise refuse("unexpected characters after the IPv6 literal")
        port_text = port_text[1:]
        host = v6.compressed
        address: IPAddress | None = v6
    else:
        host, _, port_text = authority.partition(":")
        if ":" in port_text:
            raise refuse("IPv6 addresses must be in brackets")
        host = host.lower()
        if host.endswith("."):
            host = host[:-1]
        if not host:
            raise refuse("has no host")
        if len(host) > 253 or not all(_LABEL.match(label) for label in host.split(".")):
            raise refuse("the host is not a valid DNS name or IPv4 address")
        address = None
        if _parse_ipv4_like(host):
            labels = host.split(".")
            if len(labels) != 4 or not all(_CANONICAL_OCTET.match(x) and int(x) <= 255 for x in labels):
                raise refuse("numeric hosts must be written as four decimal octets (a.b.c.d)")
            address = ipaddress.IPv4Address(host)
    if port_text == "":
        port = 443 if scheme == "https" else 80
    elif port_text.isdigit() and len(port_text) <= 5 and 0 < int(port_text) < 65536:
        port = int(port_text)
    else:
        raise refuse("the port must be a number from 1 to 65535")
    allowlisted = is_allowlisted(host, port)
    if not allowlisted:
        if scheme != "https":
            raise refuse(f"must use https (plain http only for hosts listed in env {ALLOWED_HOSTS_ENV})")
        if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
            raise refuse(f"host {host} is internal (allow it in env {ALLOWED_HOSTS_ENV})")
        if address is not None:
            try:
                check_ip(address)
            except BlockedAddress as exc:
                raise refuse(f"host {host} is {exc} (allow it in env {ALLOWED_HOSTS_ENV})") from None
    return Target(scheme, host, port, allowlisted)


def check_url(url: Any, loc: str) -> Target:
    """`parse_url`, then resolve a DNS name and check every address; raise `InvalidRequest` naming `loc`."""
    target = parse_url(url, loc)
    if target.allowlisted:
        return target
    try:
        ipaddress.ip_address(target.host)
    except ValueError:
        try:
            resolve_checked(target.host, target.port)
        except BlockedAddress as exc:
            reason = f"{exc}" if isinstance(exc, LookupFailed) else f"it resolves to {exc}"
            why = f"host {target.host}: {reason} (allow it in env {ALLOWED_HOSTS_ENV})"
            raise InvalidRequest(f"{loc} is not an allowed URL: {why}", [{"loc": loc, "msg": why}]) from None
    return target


# --------------------------------------------------------------------------------------------- connect time


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
        loop = asyncio.get_running_loop()
        try:
            raw = await asyncio.wait_for(
                loop.run_in_executor(_DNS_POOL, _resolve, host, port), _dns_timeout()
            )
        except (OSError, UnicodeError, TimeoutError):
            raise _refused(host, "it does not resolve") from None
        try:
            if is_allowlisted(host, port):
                addresses = [ipaddress.ip_address(text.split("%", 1)[0]) for text in raw]
            else:
                addresses = _checked(raw)
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
    """A `TCPConnector` that checks IP-literal hosts too (aiohttp does not resolve those)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._verdicts: dict[tuple[str, int, str], str | None] = {}

    async def connect(
        self,
        req: aiohttp.ClientRequest,
        traces: list[aiohttp.tracing.Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 (aiohttp's interface)
    ) -> aiohttp.connector.Connection:
        host = (req.url.raw_host or "").strip("[]")
        port = req.url.port or 0
        key = (host, port, os.environ.get(ALLOWED_HOSTS_ENV, ""))
        refusal = self._verdicts.get(key, "")
        if refusal == "":  # not seen yet (the same few hosts come back on every request of a run)
            refusal = self._verdicts[key] = _literal_refusal(host, port)
        if refusal is not None:
            raise aiohttp.ClientConnectionError(refusal)
        return await super().connect(req, traces, timeout)


def guarded_session(
    max_connections: int, timeout: aiohttp.ClientTimeout | None = None
) -> aiohttp.ClientSession:
    """The HTTP session every runner uses: one keep-alive pool, every address checked, no env proxies.

    Create it inside the running event loop (it binds to it).
    """
    connector = GuardedConnector(
        limit=max_connections, limit_per_host=0, keepalive_timeout=30, resolver=GuardedResolver()
    )
    return aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False)
