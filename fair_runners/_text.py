"""Unicode text hygiene: a Python `str` may hold an unpaired UTF-16 surrogate (JSON's `"\\ud800"` parses to
one), which is not Unicode text and makes every UTF-8 encoder fail. Requests holding one are refused (see
`_limits`); text from a backend is repaired instead, so one bad answer cannot sink a whole run. Text bound for
a URL or a header may not hold control characters either (`control_problem`)."""

from __future__ import annotations

import re

_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def is_text(value: str) -> bool:
    """False when `value` holds an unpaired surrogate (the only `str` that cannot be encoded as UTF-8)."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def to_text(value: str) -> str:
    """`value` with each unpaired surrogate replaced by U+FFFD (the replacement character)."""
    return value if is_text(value) else _SURROGATE.sub("\ufffd", value)


def control_problem(value: str) -> str | None:
    """Why `value` cannot go into a URL or an HTTP header (control characters); None when it can."""
    return "must not contain control characters (line breaks, tabs, NUL)" if _CONTROL.search(value) else None


MAX_WARNINGS = 100
MAX_WARNINGS_BYTES = 32 * 1024


def cap_warnings(
    warnings: list[str], *, count: int = MAX_WARNINGS, size: int = MAX_WARNINGS_BYTES
) -> list[str]:
    """At most `count` warnings of `size` UTF-8 bytes in all (each cut to fit), then "and N more warnings":
    so a response always fits its channel, whatever a request or a backend makes us say."""
    kept: list[str] = []
    used = 0
    for index, warning in enumerate(warnings):
        room = size - used
        if len(kept) >= count or room <= 64:
            kept.append(f"and {len(warnings) - index} more warnings")
            break
        text = warning if len(warning.encode("utf-8")) <= room else _cut(warning, room - 3) + "..."
        kept.append(text)
        used += len(text.encode("utf-8"))
    return kept


def _cut(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes, on a character boundary."""
    return text.encode("utf-8")[: max(0, limit)].decode("utf-8", "ignore")
