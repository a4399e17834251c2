"""`parse_rate_headers`: every header family, case-insensitive names, garbage ignored, never an exception."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from fair_runners.pacing import RateSignals, parse_rate_headers
from fair_runners.testing.ratelimit import go_duration

NOW = 1_700_000_000.0


def test_openai_family_reads_every_field_and_the_minute_window() -> None:
    signals = parse_rate_headers(
        {
            "x-ratelimit-limit-requests": "1200",
            "x-ratelimit-remaining-requests": "1187",
            "x-ratelimit-reset-requests": "650ms",
            "x-ratelimit-limit-tokens": "60000",
            "x-ratelimit-remaining-tokens": "58950",
            "x-ratelimit-reset-tokens": "1.05s",
        }
    )
    assert signals == RateSignals(1200, 1187, 0.65, 60000, 58950, 1.05, None, 60.0)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("0.5s", 0.5),
        ("1h2m3.5s", 3723.5),
        ("2m59.56s", 179.56),
        ("7.66s", 7.66),
        ("0s", 0.0),
        ("1.5", 1.5),  # a bare number is seconds
        ("250us", 0.00025),
    ],
)
def test_openai_reset_durations(text: str, seconds: float) -> None:
    signals = parse_rate_headers({"x-ratelimit-reset-requests": text})
    assert signals is not None and signals.reset_requests_s == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["1x", "s", "1s2", "-1s", "1 s", "ms", "1h-2m", "nan", "inf", "1e400", "\u0661s"]
)
def test_bad_durations_are_ignored(text: str) -> None:
    signals = parse_rate_headers({"x-ratelimit-reset-requests": text, "x-ratelimit-limit-requests": "60"})
    assert signals is not None and signals.reset_requests_s is None and signals.limit_requests == 60


def test_names_are_case_insensitive_in_plain_dicts_and_client_header_types() -> None:
    raw = {"X-RateLimit-Limit-Requests": "100", "X-RATELIMIT-REMAINING-REQUESTS": "99", "Retry-After": "3"}
    expected = RateSignals(limit_requests=100, remaining_requests=99, retry_after_s=3.0, window_s=60.0)
    assert parse_rate_headers(raw) == expected
    assert parse_rate_headers(httpx.Headers(raw)) == expected
    assert parse_rate_headers(CIMultiDict(raw)) == expected


def test_anthropic_family_reset_is_an_rfc3339_time() -> None:
    reset = datetime.fromtimestamp(NOW + 12.5, UTC).isoformat().replace("+00:00", "Z")
    signals = parse_rate_headers(
        {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "49",
            "anthropic-ratelimit-requests-reset": reset,
            "anthropic-ratelimit-tokens-limit": "40000",
            "anthropic-ratelimit-tokens-remaining": "39000",
            "anthropic-ratelimit-tokens-reset": "2023-11-14T22:13:19+00:00",  # 1 s before NOW: 0
        },
        now=NOW,
    )
    assert signals is not None
    assert (signals.limit_requests, signals.remaining_requests) == (50, 49)
    assert signals.reset_requests_s == pytest.approx(12.5)
    assert (signals.limit_tokens, signals.remaining_tokens, signals.reset_tokens_s) == (40000, 39000, 0.0)
    assert signals.window_s == 60.0


def test_anthropic_split_token_limits_take_the_tighter_one() -> None:
    signals = parse_rate_headers(
        {
            "anthropic-ratelimit-input-tokens-limit": "40000",
            "anthropic-ratelimit-input-tokens-remaining": "30000",  # 75% left
            "anthropic-ratelimit-output-tokens-limit": "8000",
            "anthropic-ratelimit-output-tokens-remaining": "2000",  # 25% left: the tighter
        },
        now=NOW,
    )
    assert signals is not None and (signals.limit_tokens, signals.remaining_tokens) == (8000, 2000)


def test_ietf_draft_headers_with_and_without_a_policy_window() -> None:
    signals = parse_rate_headers(
        {"RateLimit-Limit": "100", "RateLimit-Remaining": "40", "RateLimit-Reset": "7"}
    )
    assert signals == RateSignals(limit_requests=100, remaining_requests=40, reset_requests_s=7.0)
    with_policy = parse_rate_headers({"ratelimit-limit": "100", "ratelimit-policy": "100;w=30"})
    assert with_policy is not None and with_policy.window_s == 30.0
    old_form = parse_rate_headers({"ratelimit-limit": "100, 100;w=60", "ratelimit-remaining": "5"})
    assert old_form is not None and (old_form.limit_requests, old_form.window_s) == (100, 60.0)


def test_retry_after_seconds_http_date_and_milliseconds() -> None:
    assert parse_rate_headers({"retry-after": "2"}) == RateSignals(retry_after_s=2.0)
    when = datetime.now(UTC) + timedelta(seconds=30)
    dated = parse_rate_headers({"retry-after": format_datetime(when, usegmt=True)})
    assert dated is not None and dated.retry_after_s is not None and 25 < dated.retry_after_s <= 30
    both = parse_rate_headers({"retry-after": "1", "retry-after-ms": "50"})
    assert both is not None and both.retry_after_s == pytest.approx(0.05)
    assert parse_rate_headers({"retry-after-ms": "99999999"}) == RateSignals(retry_after_s=3600.0)


def test_no_known_header_or_only_garbage_gives_none() -> None:
    assert parse_rate_headers({}) is None
    assert parse_rate_headers({"content-type": "application/json", "x-request-id": "1"}) is None
    assert parse_rate_headers({"x-ratelimit-limit-requests": "lots", "retry-after": "soon"}) is None


def test_garbage_in_one_field_does_not_hide_the_others() -> None:
    signals = parse_rate_headers(
        {
            "x-ratelimit-limit-requests": "-5",
            "x-ratelimit-remaining-requests": "nan",
            "x-ratelimit-reset-requests": "1s",
            "x-ratelimit-limit-tokens": "1e999",
            "x-ratelimit-remaining-tokens": "500",
        }
    )
    assert signals is not None
    assert (signals.limit_requests, signals.remaining_requests, signals.reset_requests_s) == (None, None, 1.0)
    assert (signals.limit_tokens, signals.remaining_tokens) == (None, 500)


def test_long_values_are_ignored_before_any_parsing() -> None:
    huge = "9" * 5000
    assert parse_rate_headers({"x-ratelimit-limit-requests": huge, "retry-after": huge}) is None
    assert parse_rate_headers({"x-ratelimit-reset-requests": "1h" * 100}) is None


def test_a_hostile_mapping_gives_none() -> None:
    class Broken(dict[str, str]):
        def items(self):  # type: ignore[no-untyped-def]
            raise RuntimeError("boom")

    assert parse_rate_headers(Broken()) is None


def test_the_gates_reset_format_round_trips() -> None:
    for seconds in (0.0, 0.02, 0.05, 0.999, 1.0, 1.5, 59.5, 60.0, 360.0, 3723.5):
        signals = parse_rate_headers({"x-ratelimit-reset-requests": go_duration(seconds)})
        assert signals is not None and signals.reset_requests_s == pytest.approx(seconds, abs=0.0011)


_NAMES = [
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-limit",
    "anthropic-ratelimit-input-tokens-remaining",
    "anthropic-ratelimit-output-tokens-reset",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "ratelimit-policy",
    "retry-after",
    "retry-after-ms",
]
_VALUES = st.one_of(
    st.text(max_size=60),
    st.from_regex(r"-?[0-9]{0,30}(\.[0-9]{0,10})?(e-?[0-9]{1,4})?", fullmatch=True),
    st.from_regex(r"([0-9.]{0,6}(h|m|s|ms|us|ns)){0,5}", fullmatch=True),
    st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()),
    st.sampled_from(["nan", "inf", "-inf", "1e308", "9" * 5000, "Mon, 01 Jan 99999 00:00:00 GMT"]),
)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.one_of(st.sampled_from(_NAMES), st.text(max_size=70)), _VALUES, max_size=12))
def test_never_raises_and_every_value_is_bounded(headers: dict[str, str]) -> None:
    mixed = {name.upper() if i % 2 else name: value for i, (name, value) in enumerate(headers.items())}
    signals = parse_rate_headers(mixed, now=NOW)
    if signals is None:
        return
    for value in (
        signals.limit_requests,
        signals.remaining_requests,
        signals.limit_tokens,
        signals.remaining_tokens,
    ):
        assert value is None or (math.isfinite(value) and 0 <= value <= 1e15)
    for seconds in (signals.reset_requests_s, signals.reset_tokens_s):
        assert seconds is None or 0 <= seconds <= 2 * 86_400
    assert signals.retry_after_s is None or 0 <= signals.retry_after_s <= 3600
    assert signals.window_s is None or 0 < signals.window_s <= 2 * 86_400


@settings(max_examples=100, deadline=None)
@given(
    st.integers(0, 30),
    st.integers(0, 59),
    st.floats(0, 59.999, allow_nan=False).map(lambda f: round(f, 3)),
    st.booleans(),
)
def test_composed_go_durations_sum_up(hours: int, minutes: int, seconds: float, millis: bool) -> None:
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes or hours else "") + f"{seconds}s"
    if millis:
        text = f"{int(seconds * 1000)}ms"
        expected = int(seconds * 1000) / 1000
    else:
        expected = hours * 3600 + minutes * 60 + seconds
    signals = parse_rate_headers({"x-ratelimit-reset-tokens": text})
    assert signals is not None and signals.reset_tokens_s == pytest.approx(min(expected, 2 * 86_400))
