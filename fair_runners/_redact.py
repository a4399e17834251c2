"""Keep secrets out of responses, error messages and logs.

Every key the run uses (payload, env, secret stores) is registered with a `Redactor`; every string that
leaves the engine (turn errors, warnings, log messages) goes through `Redactor.redact`. What is masked:

- a registered key, whole, and in its usual encodings (JSON-escaped, URL-encoded, base64 of the whole key);
- any run of 8 or more consecutive characters of one of those forms, anywhere in a text (a backend that
  echoes `Invalid credentials sk-live-0123...`, an error cut in the middle of a key);
- 6 or more characters of a key's head at the very end of a text, or of its tail at the very start;
- credential-shaped strings that were never registered (`Bearer ...`, `sk-...`, `api_key=...`).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import Any
from urllib.parse import quote

REDACTED = "***"
_MIN_SECRET_LEN = 4
# A secret cut short by a truncated message still leaks its first characters: mask any fragment this long
# at either end of the text.
_MIN_FRAGMENT = 6
# Any run of a secret this long is masked wherever it stands in a text.
_MIN_RUN = 8
# Every run of _MIN_RUN characters holds one of a secret's _GRAM-character pieces that start at a multiple of
# _GRAM: looking for those pieces (a fast substring test) finds every place a run may start.
_GRAM = 4
# Env variables whose values are always secrets.
SECRET_ENV = (
    "ALQUIMIA_API_KEY",
    "LLM_API_KEY",
    "OPENAI_API_KEY",
    "GROQ_API_KEY",
    "GOOGLE_API_KEY",
    "ANTHROPIC_API_KEY",
    "AZURE_OPENAI_API_KEY",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_BEARER_TOKEN_BEDROCK",
)

# Shapes of credentials worth hiding even when they were never registered (a backend echoing another key).
_PATTERNS = re.compile(
    r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"
    r"|\b(sk|gsk|pk|rk|xai|AIza)[-_][A-Za-z0-9_-]{8,}"
    r"|((?:api[_-]?key|authorization|x-api-key|token|secret)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]{4,}"
)


class Redactor:
    """Replaces registered secrets, and credential-shaped strings, with `***`."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        self._secrets: set[str] = set()
        self._ordered: tuple[str, ...] | None = None
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        """Register a secret value (ignored when empty or too short to be a key).

        Its JSON-escaped form is registered too, so it is found inside serialised output.
        """
        if secret and len(secret) >= _MIN_SECRET_LEN:
            self._ordered = None
            self._secrets.add(secret)
            raw = secret.encode("utf-8", "surrogatepass")
            for form in (
                json.dumps(secret)[1:-1],
                quote(secret, safe=""),
                base64.b64encode(raw).decode("ascii"),
                base64.urlsafe_b64encode(raw).decode("ascii").rstrip("="),
            ):
                self._secrets.add(form)

    def add_env(self) -> None:
        """Register the secrets held in env (`SECRET_ENV`)."""
        for name in SECRET_ENV:
            self.add(os.environ.get(name))

    def merged(self, other: Redactor) -> Redactor:
        """A redactor that knows both sets of secrets."""
        both = Redactor()
        both._secrets = self._secrets | other._secrets
        return both

    def redact(self, text: str, *, patterns: bool = True) -> str:
        """Return `text` with every registered secret masked, and credential-shaped tokens (`patterns`)."""
        if self._ordered is None:  # longest first, so a key that contains another is masked whole
            self._ordered = tuple(sorted(self._secrets, key=len, reverse=True))
        for secret in self._ordered:
            if secret in text:
                text = text.replace(secret, REDACTED)
            text = _mask_runs(_mask_fragments(text, secret), secret)
        return _PATTERNS.sub(_mask, text) if patterns else text

    def redact_obj(self, value: Any, *, patterns: bool = True) -> Any:
        """A copy of a JSON-like value with every string (keys too) redacted.

        Without `patterns`, a value whose JSON text holds no trace of a registered secret comes back as it
        is: one serialisation and a few substring scans instead of a walk over every string (~3x faster on
        a 300-turn response).
        """
        if not patterns and not self._traces_in(value):
            return value
        return self._redact_walk(value, patterns=patterns)

    def _traces_in(self, value: Any) -> bool:
        """Whether `value` may hold something `redact` masks: a secret, its first or its last
        `_MIN_FRAGMENT` characters (every masked end fragment holds one of those), or one of its aligned
        `_GRAM`-character pieces (every masked run holds one), in any registered form. JSON text escapes
        what JSON escapes: the escaped form of each secret is registered too."""
        try:
            text = json.dumps(value)
        except (TypeError, ValueError):
            return True
        for secret in self._secrets:
            if len(secret) <= _MIN_FRAGMENT:
                if secret in text:
                    return True
                continue
            if secret[:_MIN_FRAGMENT] in text or secret[-_MIN_FRAGMENT:] in text:
                return True
            if len(secret) >= _MIN_RUN and next(_run_spans(text, secret), None) is not None:
                return True
        return False

    def _redact_walk(self, value: Any, *, patterns: bool) -> Any:
        if isinstance(value, str):
            return self.redact(value, patterns=patterns)
        if isinstance(value, dict):
            return {
                self.redact(str(k), patterns=patterns) if isinstance(k, str) else k: self._redact_walk(
                    v, patterns=patterns
                )
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self._redact_walk(v, patterns=patterns) for v in value]
        return value


def _mask_fragments(text: str, secret: str) -> str:
    """Mask a secret's head at the end of `text` and its tail at the start (a truncated echo)."""
    if len(secret) <= _MIN_FRAGMENT or len(text) < _MIN_FRAGMENT:
        return text
    # Any fragment long enough to mask contains the text's last (first) _MIN_FRAGMENT characters: a cheap
    # substring test rules out almost every string before the loops.
    if text[-_MIN_FRAGMENT:] in secret:
        for size in range(len(secret) - 1, _MIN_FRAGMENT - 1, -1):
            if text.endswith(secret[:size]):
                text = text[: len(text) - size] + REDACTED
                break
    if text[:_MIN_FRAGMENT] in secret:
        for size in range(len(secret) - 1, _MIN_FRAGMENT - 1, -1):
            if text.startswith(secret[-size:]):
                text = REDACTED + text[size:]
                break
    return text


def _run_spans(text: str, secret: str) -> Iterator[tuple[int, int]]:
    """(start, end) of runs of `_MIN_RUN` or more consecutive characters of `secret` in `text` (maybe
    overlapping). Each is found from one of the secret's aligned pieces, then grown both ways."""
    if len(secret) < _MIN_RUN or len(text) < _MIN_RUN:
        return
    for at in range(0, len(secret) - _GRAM + 1, _GRAM):
        piece = secret[at : at + _GRAM]
        found = text.find(piece)
        while found >= 0:
            # Grow the match around this piece for each place the piece stands in the secret.
            start = secret.find(piece)
            while start >= 0:
                left = 0
                while (
                    found - left > 0
                    and start - left > 0
                    and text[found - left - 1] == secret[start - left - 1]
                ):
                    left += 1
                right = _GRAM
                while (
                    found + right < len(text)
                    and start + right < len(secret)
                    and text[found + right] == secret[start + right]
                ):
                    right += 1
                if left + right >= _MIN_RUN:
                    yield found - left, found + right
                start = secret.find(piece, start + 1)
            found = text.find(piece, found + 1)


def _mask_runs(text: str, secret: str) -> str:
    """Mask every run of `_MIN_RUN` or more consecutive characters of `secret` in `text`, wherever it is."""
    spans = list(_run_spans(text, secret))
    if not spans:
        return text
    spans.sort()
    merged = [spans[0]]
    for begin, end in spans[1:]:
        if begin <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((begin, end))
    parts: list[str] = []
    cursor = 0
    for begin, end in merged:
        parts += [text[cursor:begin], REDACTED]
        cursor = end
    parts.append(text[cursor:])
    return "".join(parts)


def _mask(match: re.Match[str]) -> str:
    prefix = match.group(1) or match.group(3)
    if prefix:
        return prefix + REDACTED
    return REDACTED


def secrets_in_payload(payload: Any) -> list[str]:
    """The keys a raw request carries (`config.api_key`, `connector.params.*key*`), before validation."""
    found: list[str] = []
    if not isinstance(payload, dict):
        return found
    config = payload.get("config")
    if isinstance(config, dict) and isinstance(config.get("api_key"), str):
        found.append(config["api_key"])
    connector = payload.get("connector")
    params = connector.get("params") if isinstance(connector, dict) else None
    if isinstance(params, dict):
        found += [
            v
            for k, v in params.items()
            if isinstance(v, str) and any(w in str(k).lower() for w in ("key", "token"))
        ]
    return found


_current: ContextVar[Redactor | None] = ContextVar("fair_runners_redactor", default=None)


def use_redactor(redactor: Redactor | None) -> None:
    """Make `redactor` the one log output and error envelopes use in this context (None: env keys only)."""
    _current.set(redactor)


def current_redactor() -> Redactor:
    """The redactor of the run in progress, always including the secrets in env."""
    env = Redactor()
    env.add_env()
    active = _current.get()
    return env if active is None else active.merged(env)


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in a record's message, arguments, extra fields and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        redactor = current_redactor()
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        record.msg = redactor.redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            # Standard formatters print `exc_text` when `exc_info` is gone: the redacted traceback.
            record.exc_text = redactor.redact(record.exc_text)
            record.exc_info = None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD_ATTRS and isinstance(value, str | dict | list | tuple):
                setattr(record, key, redactor.redact_obj(value))
        return True


_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def install_log_redaction(*handlers: logging.Handler) -> None:
    """Add `RedactingFilter` to `handlers` and to every handler of the root logger (idempotent)."""
    for handler in (*handlers, *logging.getLogger().handlers):
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


def powertools_formatter() -> Any:
    """A Powertools `LambdaPowertoolsFormatter` whose every output line is redacted (imported lazily)."""
    from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

    class RedactingPowertoolsFormatter(LambdaPowertoolsFormatter):
        def format(self, record: logging.LogRecord) -> str:
            return current_redactor().redact(super().format(record))

    return RedactingPowertoolsFormatter()
