"""Keep secrets out of responses, error messages and logs.

Every key the run uses (payload, env, secret stores) is registered with a `Redactor`; every string that
leaves the engine (turn errors, warnings, log messages) goes through `Redactor.redact`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "***"
_MIN_SECRET_LEN = 4

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
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str | None) -> None:
        """Register a secret value (ignored when empty or too short to be a key)."""
        if secret and len(secret) >= _MIN_SECRET_LEN:
            self._secrets.add(secret)

    def redact(self, text: str) -> str:
        """Return `text` with every registered secret and credential-shaped token masked."""
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, REDACTED)
        return _PATTERNS.sub(_mask, text)


def _mask(match: re.Match[str]) -> str:
    prefix = match.group(1) or match.group(3)
    if prefix:
        return prefix + REDACTED
    return REDACTED
