"""The response redaction's shortcut: a value with no trace of a secret comes back as it is, and it never
skips a value the full walk would change (whole keys, truncated heads and tails, JSON-escaped forms)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fair_runners._redact import REDACTED, Redactor

# Keys with what JSON escapes (quotes, backslashes, control and non-ASCII characters) as well as plain ones.
_secret = st.text(alphabet=st.sampled_from('abcXYZ019-_."\\\n\té€😀'), min_size=4, max_size=24) | st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=4, max_size=40
)


@st.composite
def _texts(draw: st.DrawFn, secrets: list[str]) -> str:
    """Text around a whole secret, its head at the end, its tail at the start, or none of it."""
    secret = draw(st.sampled_from(secrets))
    filler = draw(st.text(max_size=12))
    size = draw(st.integers(min_value=1, max_value=len(secret)))
    return draw(
        st.sampled_from(
            [
                filler,
                f"{filler}{secret}{filler}",
                f"{filler}{secret[:size]}",
                f"{secret[-size:]}{filler}",
                secret,
            ]
        )
    )


@st.composite
def _cases(draw: st.DrawFn) -> tuple[list[str], Any]:
    secrets = draw(st.lists(_secret, min_size=1, max_size=3))
    text = _texts(secrets)
    value = draw(
        st.recursive(
            text | st.integers() | st.none(),
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
            max_leaves=12,
        )
    )
    return secrets, value


@settings(max_examples=400, deadline=None)
@given(_cases())
def test_the_shortcut_gives_what_the_full_walk_gives(case: tuple[list[str], Any]) -> None:
    secrets, value = case
    redactor = Redactor(secrets)
    walked = redactor._redact_walk(value, patterns=False)
    assert redactor.redact_obj(value, patterns=False) == walked
    if walked != value:
        assert redactor._traces_in(value)  # whatever the walk changes, the check saw


def test_a_clean_response_is_returned_as_is_and_a_dirty_one_is_masked() -> None:
    key = "sk-live-0123456789abcdef"
    redactor = Redactor([key])
    clean = {"datasets": [{"conversation": [{"assistant": "fine", "n": 1}]}]}
    assert redactor.redact_obj(clean, patterns=False) is clean
    for dirty in (f"echo {key}", f"...Bearer {key[:9]}", f"{key[-7:]} rest", json.dumps({"k": key + '"'})):
        body = {"datasets": [{"conversation": [{"assistant": dirty}]}]}
        masked = redactor.redact_obj(body, patterns=False)
        assert REDACTED in masked["datasets"][0]["conversation"][0]["assistant"], dirty
        assert key[:6] not in json.dumps(masked) and key[-6:] not in json.dumps(masked)
