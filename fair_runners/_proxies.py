"""Forward proxies from the environment: `HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY` (either case).

One parser for every client: the standard library's `getproxies_environment` / `proxy_bypass_environment`
(what `requests`, botocore and pip read too). The runners pass the chosen proxy explicitly per request
(`proxy_for(url)`); the clients' own `trust_env` stays off, so aiohttp never reads `~/.netrc` and adds its
credentials to requests. `FAIR_RUNNERS_TRUST_ENV=0` turns proxies off for the runners and the AWS clients.

The network guard still vets every target host before a request goes out through a proxy (the proxy then
makes the connection: see the README's residual risks); the proxy host itself is the deployer's choice and
is exempt from the address checks.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from urllib import request as urllib_request
from urllib.parse import urlsplit

TRUST_ENV = "FAIR_RUNNERS_TRUST_ENV"
_NAMES = ("http_proxy", "https_proxy", "no_proxy", "all_proxy")


@dataclass(frozen=True)
class ProxySettings:
    """The proxies env variables name, and what they bypass."""

    proxies: tuple[tuple[str, str], ...] = ()  # (scheme, proxy URL)

    @property
    def enabled(self) -> bool:
        """True when some scheme goes through a proxy."""
        return any(scheme in ("http", "https") for scheme, _ in self.proxies)

    def proxy_for(self, url: str) -> str | None:
        """The proxy URL for a request to `url`, or None (direct: no proxy, or `NO_PROXY` matches)."""
        if not self.proxies:
            return None
        table = dict(self.proxies)
        parts = urlsplit(url)
        proxy = table.get(parts.scheme) or table.get("all")
        if not proxy:
            return None
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        bypass = urllib_request.proxy_bypass_environment  # type: ignore[attr-defined]  # not in typeshed
        if bypass(netloc, table) or bypass(host, table):
            return None
        return _with_scheme(proxy)

    def proxy_hosts(self) -> frozenset[tuple[str, int]]:
        """(host, port) of every configured proxy: the guard lets connections to them through."""
        hosts = set()
        for scheme, proxy in self.proxies:
            if scheme == "no":
                continue
            parts = urlsplit(_with_scheme(proxy))
            if parts.hostname:
                hosts.add((parts.hostname.lower(), parts.port or (443 if parts.scheme == "https" else 80)))
        return frozenset(hosts)

    def credentials(self) -> list[str]:
        """Passwords (and `user:password` pairs) inside proxy URLs: secrets for the redactor."""
        found = []
        for scheme, proxy in self.proxies:
            if scheme == "no":
                continue
            parts = urlsplit(_with_scheme(proxy))
            if parts.password:
                found += [parts.password, f"{parts.username}:{parts.password}"]
        return found


def _with_scheme(proxy: str) -> str:
    return proxy if "://" in proxy else f"http://{proxy}"


def proxy_settings() -> ProxySettings:
    """The proxies in effect now (read from the environment; none when `FAIR_RUNNERS_TRUST_ENV=0`)."""
    if os.environ.get(TRUST_ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return ProxySettings()
    snapshot = tuple(os.environ.get(name) or os.environ.get(name.upper()) or "" for name in _NAMES)
    return _parse(snapshot)


@functools.lru_cache(maxsize=8)
def _parse(snapshot: tuple[str, ...]) -> ProxySettings:
    del snapshot  # the cache key: the stdlib parser reads the same variables itself
    found = urllib_request.getproxies_environment()
    return ProxySettings(tuple(sorted((scheme, url) for scheme, url in found.items() if url)))


def botocore_proxies() -> dict[str, str] | None:
    """`botocore.config.Config(proxies=...)`: None lets botocore read the same variables with the same
    standard-library functions (and honour `NO_PROXY` per endpoint); `{}` turns proxies off."""
    return None if proxy_settings().enabled else {}
