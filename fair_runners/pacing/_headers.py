"""Rate-limit signals from a provider's response headers (header families, not providers).

- `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (OpenAI, Groq, Azure): per-minute quotas; reset is a
  Go-style duration (`1s`, `6m0s`, `20ms`, `0.5s`, `1h2m3.5s`).
- `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}`: per-minute;
  reset is an RFC 3339 time. Without the combined `tokens-*`, the tighter of input/output is taken.
- IETF draft `ratelimit-{limit,remaining,reset}` (reset in seconds), counted as requests; the window comes
  from `ratelimit-policy: 100;w=60` (or the old `ratelimit-limit: 100, 100;w=60`), else is unknown.
- `retry-after` (seconds or an HTTP date) and `retry-after-ms` (preferred when both are sent).

Names are matched in any case. Values are parsed defensively: a value longer than a few dozen characters is
ignored (no 5,000-digit numbers), numbers must be finite and in range, anything else is dropped.
`parse_rate_headers` never raises.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from .._errors import parse_retry_after

_MAX_TEXT = 40  # characters of a value looked at; longer values are ignored, not truncated
_MAX_COUNT = 1e15  # a limit or remaining count above this is garbage
_MAX_RESET_S = 2 * 86_400.0  # resets are clamped to two days (a per-day quota resets within one)
_MAX_RETRY_S = 3_600.0
_MINUTE = 60.0

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|us|µs|ns|m|s)", re.ASCII)
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_WINDOW = re.compile(r"(?:^|;)\s*w\s*=\s*(\d+(?:\.\d+)?)", re.ASCII)


@dataclass(frozen=True)
class RateSignals:
    """What one response said about the provider's limits; every field is None when not sent.

    `limit_*` is the quota per `window_s`; `remaining_*` what is left of it now; `reset_*_s` seconds until the
    quota is whole again; `retry_after_s` how long the provider asked to wait. `window_s` is 60 for the
    per-minute families (`x-ratelimit-*`, `anthropic-ratelimit-*`), the policy's `w=` for IETF headers, and
    None when no header says (it describes `limit_requests` when set, else `limit_tokens`).
    """

    limit_requests: float | None = None
    remaining_requests: float | None = None
    reset_requests_s: float | None = None
    limit_tokens: float | None = None
    remaining_tokens: float | None = None
    reset_tokens_s: float | None = None
    retry_after_s: float | None = None
    window_s: float | None = None


def parse_rate_headers(headers: Mapping[str, str], *, now: float | None = None) -> RateSignals | None:
    """The rate signals in `headers`, or None when no known header carries a usable value.

    `now` (epoch seconds, default the clock) is the reference for RFC 3339 reset times. Never raises.
    """
    try:
        known = _known(headers)
    except Exception:  # a hostile Mapping: no signals rather than an error in the turn
        return None
    if not known:
        return None
    at = time.time() if now is None else now
    requests, req_window = _requests(known, at)
    tokens, tok_window = _tokens(known, at)
    retry = _duration_ms(known.get("retry-after-ms"))
    if retry is None:
        text = known.get("retry-after")
        retry = parse_retry_after(text) if text is not None else None
    signals = RateSignals(*requests, *tokens, retry, req_window if requests[0] is not None else tok_window)
    if all(value is None for value in (*requests, *tokens, retry)):
        return None
    return signals


Triple = tuple[float | None, float | None, float | None]


def _known(headers: Mapping[str, str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for raw_key, raw_value in headers.items():
        key, value = _text(raw_key), _text(raw_value)
        if key is None or value is None or len(key) > 64:
            continue
        name = key.strip().lower()
        if name.startswith(("x-ratelimit-", "anthropic-ratelimit-", "ratelimit-", "retry-after")):
            value = value.strip()
            if len(value) <= _MAX_TEXT:
                found.setdefault(name, value)
    return found


def _text(raw: object) -> str | None:
    if isinstance(raw, bytes):
        return raw.decode("latin-1")
    return raw if isinstance(raw, str) else None


def _requests(known: dict[str, str], now: float) -> tuple[Triple, float | None]:
    openai = _triple(known, "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests")
    openai = (*openai[:2], _duration(known.get("x-ratelimit-reset-requests")))
    if _any(openai):
        return openai, _MINUTE
    anthropic = _anthropic(known, "requests", now)
    if _any(anthropic):
        return anthropic, _MINUTE
    ietf = _triple(known, "ratelimit-limit", "ratelimit-remaining")
    ietf = (*ietf[:2], _seconds(known.get("ratelimit-reset")))
    return ietf, _ietf_window(known)


def _tokens(known: dict[str, str], now: float) -> tuple[Triple, float | None]:
    openai = _triple(known, "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens")
    openai = (*openai[:2], _duration(known.get("x-ratelimit-reset-tokens")))
    if _any(openai):
        return openai, _MINUTE
    combined = _anthropic(known, "tokens", now)
    if _any(combined):
        return combined, _MINUTE
    # Only the split limits: the tighter one (smallest remaining share) bounds what may be sent.
    split = [_anthropic(known, "input-tokens", now), _anthropic(known, "output-tokens", now)]
    split = [triple for triple in split if _any(triple)]
    if not split:
        return (None, None, None), None
    return min(split, key=_used_share), _MINUTE


def _used_share(triple: Triple) -> float:
    limit, remaining, _ = triple
    if limit and remaining is not None:
        return remaining / limit
    return 1.0


def _anthropic(known: dict[str, str], kind: str, now: float) -> Triple:
    prefix = f"anthropic-ratelimit-{kind}-"
    limit, remaining = _triple(known, prefix + "limit", prefix + "remaining")[:2]
    return limit, remaining, _instant(known.get(prefix + "reset"), now)


def _any(triple: Triple) -> bool:
    return any(value is not None for value in triple)


def _triple(known: dict[str, str], limit: str, remaining: str) -> Triple:
    return _count(known.get(limit)), _count(known.get(remaining)), None


def _number(text: str | None) -> float | None:
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _count(text: str | None) -> float | None:
    """A non-negative count; IETF's old `100, 100;w=60` form gives its first number."""
    if text is None:
        return None
    value = _number(text.split(",", 1)[0].split(";", 1)[0].strip())
    if value is None or value < 0 or value > _MAX_COUNT:
        return None
    return value


def _clamp_reset(seconds: float | None) -> float | None:
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, _MAX_RESET_S)


def _seconds(text: str | None) -> float | None:
    return _clamp_reset(_number(text))


def _duration(text: str | None) -> float | None:
    """A Go-style duration (`6m0s`, `20ms`, `1h2m3.5s`) or a bare number of seconds."""
    if not text:
        return None
    plain = _number(text)
    if plain is not None:
        return _clamp_reset(plain)
    total, at = 0.0, 0
    for match in _DURATION.finditer(text):
        if match.start() != at:
            return None
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        at = match.end()
    return _clamp_reset(total) if at == len(text) and at > 0 else None


def _duration_ms(text: str | None) -> float | None:
    value = _number(text)
    if value is None or value < 0:
        return None
    return min(value / 1000.0, _MAX_RETRY_S)


def _instant(text: str | None, now: float) -> float | None:
    """Seconds from `now` until an RFC 3339 time (past times are 0)."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text.replace("z", "Z"))
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    except (ValueError, OverflowError, OSError):
        return None
    return _clamp_reset(max(0.0, seconds))


def _ietf_window(known: dict[str, str]) -> float | None:
    for name in ("ratelimit-policy", "ratelimit-limit"):
        match = _WINDOW.search(known.get(name, ""))
        if match:
            window = float(match.group(1))
            if 0 < window <= _MAX_RESET_S:
                return window
    return None
