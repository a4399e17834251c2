"""Generated garbage at `lambda_handler` through every event shape.

Never a 500, never an exception other than the typed `InvalidRequest` / `PayloadTooLarge` (direct and Map
invokes); every HTTP rejection is a 4xx with a message. No network: no host is allowlisted, DNS is the fake
resolver, and the connect-time guard refuses every connection in this module.

Example counts: `FAIR_RUNNERS_FUZZ_SCALE` (default 1.0) multiplies each test's `max_examples`; the total at
scale 1 is `TOTAL_EXAMPLES`.
"""

from __future__ import annotations

import base64
import json
import os
import string
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fair_runners.runners import _session

from .security_support import (
    SHAPES,
    Outcome,
    assert_clean,
    event_for,
    function_url,
    http_v2,
    invoke,
    rest_v1,
)

_SCALE = float(os.environ.get("FAIR_RUNNERS_FUZZ_SCALE", "1"))
_COUNTS = {"json": 600, "requests": 900, "bodies": 600, "http_events": 400, "batch": 300, "base64": 200}
TOTAL_EXAMPLES = sum(_COUNTS.values())


def _settings(name: str) -> Any:
    return settings(
        max_examples=max(1, int(_COUNTS[name] * _SCALE)),
        deadline=None,
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )


@pytest.fixture(autouse=True)
def _sealed(monkeypatch: pytest.MonkeyPatch) -> None:
    """No host allowlisted, one attempt per turn, and every connection refused at connect time."""
    monkeypatch.delenv("FAIR_RUNNERS_ALLOWED_HOSTS", raising=False)
    monkeypatch.setenv("FAIR_RUNNERS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("LLM_API_KEY", "fuzz-llm-key-123456")

    async def refuse(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise aiohttp.ClientConnectionError("fuzz: no connections")

    monkeypatch.setattr(_session.GuardedConnector, "connect", refuse)


# ------------------------------------------------------------------------------------------- strategies

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from(["", " ", "\x00", "\u202e", "\ud7ff", "😀" * 3, "a" * 5000, "null", "[]", "{}"])
)
json_values = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)

_urls = st.sampled_from(
    [
        "https://169.254.169.254",
        "http://127.0.0.1:1",
        "https://2130706433",
        "https://[::ffff:127.0.0.1]",
        "https://loopback.test",
        "https://x@127.0.0.1",
        "file:///etc/passwd",
        "https://no-such.test",
        "not a url",
        "",
    ]
) | st.text(max_size=30)
_class_paths = st.sampled_from(
    [
        "langchain_openai.ChatOpenAI",
        "langchain_groq.ChatGroq",
        "os.system",
        "builtins.eval",
        "langchain_openai",
    ]
) | st.text(max_size=30)


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return strategy | json_values


_batch = st.fixed_dictionaries(
    {"qa_id": _maybe(st.text(max_size=8)), "query": _maybe(st.text(max_size=60))},
    optional={
        "assistant": _maybe(st.text(max_size=10)),
        "agentic": json_values,
        "weight": _maybe(st.floats(allow_nan=False)),
        "observation": json_values,
        "extra": json_values,
    },
)
_dataset = st.fixed_dictionaries(
    {"session_id": _maybe(st.text(max_size=8)), "assistant_id": _maybe(st.text(max_size=8))},
    optional={
        "conversation": st.lists(_batch, max_size=3) | json_values,
        "context": _maybe(st.text(max_size=30)),
        "language": json_values,
    },
)
_config = st.fixed_dictionaries(
    {},
    optional={
        "base_url": _maybe(_urls),
        "api_key": _maybe(st.text(max_size=20)),
        "agent_id": _maybe(st.text(max_size=8)),
        "channel_id": json_values,
        "api_version": json_values,
    },
)
_connector = st.fixed_dictionaries(
    {"class_path": _maybe(_class_paths)},
    optional={
        "params": st.dictionaries(
            st.sampled_from(["model", "api_key", "base_url", "temperature", "http_client", "default_headers"])
            | st.text(max_size=10),
            json_values | _urls,
            max_size=4,
        )
        | json_values
    },
)
requests = st.fixed_dictionaries(
    {},
    optional={
        "datasets": st.lists(_dataset, max_size=3) | json_values,
        "config": _config | json_values,
        "connector": _connector | json_values,
        "options": st.dictionaries(
            st.sampled_from(["max_concurrency", "turn_timeout_s", "max_attempts", "history", "skip_answered"])
            | st.text(max_size=6),
            json_values,
            max_size=3,
        )
        | json_values,
        "run_id": json_values,
    },
)

_deep = st.integers(min_value=1, max_value=3000).map(lambda n: "[" * n + "]" * n) | st.integers(
    min_value=1, max_value=3000
).map(lambda n: '{"a":' * n + "1" + "}" * n)
bodies = (
    st.text(max_size=200)
    | json_values.map(json.dumps)
    | requests.map(json.dumps)
    | _deep
    | st.binary(max_size=100).map(lambda b: b.decode("latin-1"))
    | st.sampled_from(["", " ", "null", "[]", "{}", "NaN", '{"datasets": NaN}', "\ufeff{}", "{" * 10])
)


# ---------------------------------------------------------------------------------------------- checks


def _check(outcome: Outcome) -> None:
    assert outcome.status != 500, outcome.body
    assert outcome.status in (200, 400, 404, 405, 413), outcome
    if outcome.status >= 400:
        if outcome.error is not None:
            assert outcome.error.message.strip()
        else:
            assert outcome.body["success"] is False
            assert isinstance(outcome.body["error"], str) and outcome.body["error"].strip()
    else:
        assert outcome.body["success"] is True
    assert_clean(outcome.raw, keys=("fuzz-llm-key-123456",))


@_settings("json")
@given(shape=st.sampled_from(SHAPES), payload=json_values)
def test_random_json_through_every_shape(shape: str, payload: Any) -> None:
    _check(invoke(event_for(shape, payload)))


@_settings("requests")
@given(shape=st.sampled_from(SHAPES), payload=requests)
def test_request_shaped_garbage_through_every_shape(shape: str, payload: Any) -> None:
    _check(invoke(event_for(shape, payload)))


@_settings("bodies")
@given(builder=st.sampled_from([http_v2, function_url, rest_v1]), body=bodies)
def test_http_bodies_that_are_not_json(builder: Any, body: str) -> None:
    _check(invoke(builder(body)))


@_settings("base64")
@given(
    builder=st.sampled_from([http_v2, function_url, rest_v1]),
    body=st.text(alphabet=string.ascii_letters + string.digits + "+/=!-_ ", max_size=80)
    | st.binary(max_size=60).map(lambda b: base64.b64encode(b).decode())
    | bodies.map(lambda s: base64.b64encode(s.encode("utf-8", "surrogatepass")).decode()),
)
def test_base64_bodies_that_are_not(builder: Any, body: str) -> None:
    _check(invoke(builder(body, b64=True)))


_http_event = st.fixed_dictionaries(
    {},
    optional={
        "version": st.sampled_from(["2.0", "1.0", 2]) | json_values,
        "rawPath": st.sampled_from(["/run", "/", "/runs", "/../run", "//run"]) | json_values,
        "httpMethod": st.sampled_from(["POST", "GET", "post", ""]) | json_values,
        "resource": json_values,
        "path": json_values,
        "headers": st.dictionaries(st.text(max_size=10), json_values, max_size=4) | json_values,
        "requestContext": st.fixed_dictionaries(
            {},
            optional={
                "http": st.fixed_dictionaries(
                    {}, optional={"method": st.sampled_from(["POST", "GET", "DELETE"]) | json_values}
                )
                | json_values,
                "domainName": st.sampled_from(["a.lambda-url.x.on.aws", "x.execute-api.aws"]) | json_values,
            },
        )
        | json_values,
        "body": bodies | json_values,
        "isBase64Encoded": st.booleans() | json_values,
    },
)


@_settings("http_events")
@given(event=_http_event)
def test_malformed_http_events(event: dict[str, Any]) -> None:
    _check(invoke(event))


@_settings("batch")
@given(
    items=st.lists(_dataset, max_size=3) | json_values,
    batch_input=_config.map(lambda c: {"config": c}) | json_values,
)
def test_map_batches(items: Any, batch_input: Any) -> None:
    _check(invoke({"Items": items, "BatchInput": batch_input}))


def test_total_examples_is_in_the_thousands() -> None:
    assert TOTAL_EXAMPLES >= 2000
