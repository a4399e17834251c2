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
plain `http` is then accepted for it too. `parse_url` runs in `prepare()` (no DNS); `vet_url` resolves
the name off the event loop before the run sends anything.

The same rules hold at connect time in `runners._session.guarded_session()`, the one aiohttp session each
runner uses. This module imports no HTTP client (the merge step's Lambda uses it without one).
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


# Lookups run here, never on the event loop (getaddrinfo blocks).
_DNS_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="fair-runners-dns")


def _dns_timeout() -> float:
    try:
        return max(0.1, float(os.environ.get(DNS_TIMEOUT_ENV, "") or _DEFAULT_DNS_TIMEOUT_S))
    except ValueError:
        return _DEFAULT_DNS_TIMEOUT_S


async def lookup(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to, looked up on the DNS threads (bounded by the DNS timeout)."""
    loop = asyncio.get_running_loop()
    try:
        return await asyncio.wait_for(loop.run_in_executor(_DNS_POOL, _resolve, host, port), _dns_timeout())
    except TimeoutError:
        raise LookupFailed("its DNS lookup timed out") from None
    except (OSError, UnicodeError):
        raise LookupFailed("it does not resolve") from None


async def resolve_checked(host: str, port: int) -> list[IPAddress]:
    """Resolve `host` off the event loop (bounded by env `FAIR_RUNNERS_DNS_TIMEOUT_S`); check each address."""
    return check_addresses(await lookup(host, port))


def check_addresses(raw: Iterable[str]) -> list[IPAddress]:
    """Parse and check every address a lookup returned; `LookupFailed` when none, `BlockedAddress` on one."""
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


async def vet_url(url: Any, loc: str) -> Target:
    """`parse_url`, then resolve a DNS name (off the event loop) and check every address; raise
    `InvalidRequest` naming `loc`."""
    target = parse_url(url, loc)
    if target.allowlisted or is_ip_literal(target.host):
        return target
    try:
        await resolve_checked(target.host, target.port)
    except BlockedAddress as exc:
        reason = f"{exc}" if isinstance(exc, LookupFailed) else f"it resolves to {exc}"
        why = f"host {target.host}: {reason} (allow it in env {ALLOWED_HOSTS_ENV})"
        raise InvalidRequest(f"{loc} is not an allowed URL: {why}", [{"loc": loc, "msg": why}]) from None
    return target


def is_ip_literal(host: str) -> bool:
    """True when `host` is an IP address (v4 or v6, zone id ignored), not a DNS name."""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True
