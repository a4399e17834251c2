"""The cache key of one turn: a SHA-256 over a canonical JSON of everything that decides its answer.

The canonical text is `json.dumps(..., sort_keys=True, separators=(",", ":"), ensure_ascii=True,
allow_nan=False)` of::

    {"v": KEY_FORMAT, "runner": "llm" | "alquimia", "origin": "scheme://host:port", "target": ...,
     "credential": HMAC-SHA256 hex of the credential, or "none", "params": {...}, "sent": [...]}

`origin` is normalised (`normalise_origin`): lower-case scheme and host, IPv6 compressed in brackets, a final
dot dropped, the port always written (80 for http, 443 for https); a path, query or fragment is dropped, and
a user name or password is refused. The credential is never part of the text: only its HMAC (a fixed,
public HMAC key; it separates credentials, which is all a key needs, and cannot be reversed for the
high-entropy API keys it is made for). `None` becomes the marker "none".

`params` leaves out, at every depth, the names below: they change how a turn is sent, not what it answers
(or they are credentials, which `credential` already covers). Names are compared lower-cased, "-" read as
"_". A name is left out when it

- is one of: `api_key`, `apikey`, `key`, `secret`, `password`, `token`, `authorization`, `credential`,
  `credentials`, `max_retries`, `max_attempts`, `session_id`;
- contains `api_key`, `apikey`, `secret`, `password` or `timeout` (`openai_api_key`, `request_timeout`,
  `connect_timeout_s`, `client_secret`, ...);
- ends with `_token` (`access_token`, `auth_token`, `session_token`; never `max_tokens`, which is kept);
- ends with `_session_id`.

Every other param, `base_url` included (its path picks the endpoint), changes the key.

`sent` is the request(s) as sent for this turn: LLM mode, the messages as `{"role", "content"}` pairs
(system, then each earlier query and answer, then the query); Alquimia mode, the infer bodies of this turn
and of every earlier turn of the session, oldest first (the agent keeps the conversation, so turn k's
answer depends on turns 1..k). `sent` is taken as it is: nothing is left out of it.

Only JSON data is accepted: `str`, `int`, finite `float`, `bool`, `None`, lists (tuples are read as lists)
and mappings with `str` keys. Anything else raises `ValueError` naming where it is.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

KEY_FORMAT = 1
RUNNERS = frozenset({"llm", "alquimia"})
DENIED_NAMES = frozenset(
    {
        "api_key",
        "apikey",
        "key",
        "secret",
        "password",
        "token",
        "authorization",
        "credential",
        "credentials",
        "max_retries",
        "max_attempts",
        "session_id",
    }
)
DENIED_PARTS = ("api_key", "apikey", "secret", "password", "timeout")
DENIED_SUFFIXES = ("_token", "_session_id")
NO_CREDENTIAL = "none"
_HMAC_KEY = b"fair-runners/cache/credential/v1"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def is_denied(name: str) -> bool:
    """True when a param called `name` is left out of the key (see the module docstring)."""
    norm = name.lower().replace("-", "_")
    return (
        norm in DENIED_NAMES or any(part in norm for part in DENIED_PARTS) or norm.endswith(DENIED_SUFFIXES)
    )


def normalise_origin(url: str) -> str:
    """`scheme://host:port` of a URL or origin; raise `ValueError` for anything that has none."""
    if not isinstance(url, str):
        raise ValueError(f"origin must be a string like 'https://host:443', got {type(url).__name__}")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"origin {url!r} is not a URL: {exc}") from None
    scheme = parts.scheme.lower()
    if not scheme or not parts.netloc:
        raise ValueError(f"origin {url!r} must look like 'https://host' or 'http://host:port'")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"origin {url!r} must not carry a user name or password")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise ValueError(f"origin {url!r} has no host")
    if port is None:
        if scheme not in _DEFAULT_PORTS:
            raise ValueError(f"origin {url!r}: scheme {scheme!r} has no default port, write one")
        port = _DEFAULT_PORTS[scheme]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        host = f"[{address.compressed}]" if address.version == 6 else address.compressed
    return f"{scheme}://{host}:{port}"


def credential_digest(credential: str | None) -> str:
    """The HMAC-SHA256 hex standing for `credential` in the key ("none" for `None`)."""
    if credential is None:
        return NO_CREDENTIAL
    if not isinstance(credential, str):
        raise ValueError(f"credential must be a string or None, got {type(credential).__name__}")
    return hmac.new(_HMAC_KEY, credential.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def _plain(value: Any, loc: str, *, deny: bool) -> Any:
    """`value` as JSON data (tuples as lists), denied names dropped when `deny`; `ValueError` otherwise."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{loc} is {value!r}: JSON has no NaN or infinity")
        return value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for name, item in value.items():
            if not isinstance(name, str):
                raise ValueError(f"{loc} has a key {name!r} of type {type(name).__name__}: keys must be str")
            if deny and is_denied(name):
                continue
            out[name] = _plain(item, f"{loc}.{name}", deny=deny)
        return out
    if isinstance(value, list | tuple):
        return [_plain(item, f"{loc}[{index}]", deny=deny) for index, item in enumerate(value)]
    raise ValueError(
        f"{loc} is a {type(value).__name__}: only str, int, float, bool, None, lists and "
        "str-keyed mappings can be part of a cache key"
    )


def key_material(
    *,
    runner: str,
    origin: str,
    target: str,
    credential: str | None,
    params: Mapping[str, Any],
    sent: Sequence[Any],
) -> str:
    """The canonical JSON text `turn_key` hashes (never holds the credential or a denied param)."""
    if runner not in RUNNERS:
        raise ValueError(f"runner must be one of {sorted(RUNNERS)}, got {runner!r}")
    if not isinstance(target, str):
        raise ValueError(
            f"target must be a string (connector class or agent path), got {type(target).__name__}"
        )
    if not isinstance(params, Mapping):
        raise ValueError(f"params must be a mapping, got {type(params).__name__}")
    if isinstance(sent, str | bytes) or not isinstance(sent, Sequence):
        raise ValueError(f"sent must be a list of messages or infer bodies, got {type(sent).__name__}")
    document = {
        "v": KEY_FORMAT,
        "runner": runner,
        "origin": normalise_origin(origin),
        "target": target,
        "credential": credential_digest(credential),
        "params": _plain(params, "params", deny=True),
        "sent": _plain(list(sent), "sent", deny=False),
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def turn_key(
    *,
    runner: str,
    origin: str,
    target: str,
    credential: str | None,
    params: Mapping[str, Any],
    sent: Sequence[Any],
) -> str:
    """The SHA-256 hex digest (64 characters) of `key_material` for one turn."""
    text = key_material(
        runner=runner, origin=origin, target=target, credential=credential, params=params, sent=sent
    )
    return hashlib.sha256(text.encode("ascii")).hexdigest()
