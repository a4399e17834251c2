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
    start = draw(st.integers(min_value=0, max_value=max(0, len(secret) - size)))
    return draw(
        st.sampled_from(
            [
                filler,
                f"{filler}{secret}{filler}",
                f"{filler}{secret[:size]}",
                f"{secret[-size:]}{filler}",
                f"{filler}{secret[start : start + size]}{filler}",  # a run from the middle
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


_key = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=8, max_size=48
)


@settings(max_examples=400, deadline=None)
@given(key=_key, data=st.data())
def test_no_run_of_eight_characters_of_a_key_survives(key: str, data: st.DataObject) -> None:
    """Any run of 8+ consecutive characters of the key, anywhere in a text, in the usual encodings, and
    with suffixes added before redaction: none survives."""
    import base64
    from urllib.parse import quote

    size = data.draw(st.integers(min_value=8, max_value=len(key)))
    start = data.draw(st.integers(min_value=0, max_value=len(key) - size))
    run = key[start : start + size]
    form = data.draw(
        st.sampled_from(
            [run, quote(run, safe=""), json.dumps(run)[1:-1], base64.b64encode(key.encode()).decode()]
        )
    )
    before, after = data.draw(st.text(max_size=20)), data.draw(st.text(max_size=20))
    text = f"{before}{form}{after} (no time left to retry before the deadline)"
    redacted = Redactor([key]).redact(text, patterns=False)
    for i in range(len(key) - 7):
        assert key[i : i + 8] not in redacted, (key, text, redacted)
    assert REDACTED in redacted
