"""Request limits: each is a 413 / `PayloadTooLarge` naming the limit, its value and its env var."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fair_runners import ConfigurationError, PayloadTooLarge
from fair_runners.testing import AlquimiaAgent

from .conftest import alquimia_request, make_datasets
from .security_support import assert_rejected, b64, event_for, function_url, http_v2, invoke, rest_v1


def _check_named(outcome: Any, env: str, value: int) -> None:
    assert_rejected(outcome, status=413)
    text = outcome.body["error"] if outcome.body else outcome.error.message
    assert env in text and str(value) in text


@pytest.mark.parametrize("builder", [http_v2, function_url, rest_v1])
def test_body_over_the_limit_is_413_before_parsing(builder: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIR_RUNNERS_MAX_BODY_BYTES", "1000")
    _check_named(invoke(builder("{not json" + "x" * 2000)), "FAIR_RUNNERS_MAX_BODY_BYTES", 1000)
    _check_named(invoke(builder(b64("[" * 5000), b64=True)), "FAIR_RUNNERS_MAX_BODY_BYTES", 1000)
    # Multi-byte characters count as bytes, not characters.
    _check_named(invoke(builder('"' + "\u00e9" * 600 + '"')), "FAIR_RUNNERS_MAX_BODY_BYTES", 1000)
    assert invoke(builder("{not json")).status == 400


def test_dataset_count(agent: AlquimiaAgent, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIR_RUNNERS_MAX_DATASETS", "3")
    request = alquimia_request(agent, make_datasets(4, 1))
    for shape in ("http_v2", "map_batch"):
        _check_named(invoke(event_for(shape, request)), "FAIR_RUNNERS_MAX_DATASETS", 3)
    with pytest.raises(PayloadTooLarge, match="FAIR_RUNNERS_MAX_DATASETS"):
        from handler.app import lambda_handler

        lambda_handler(request, None)
    assert agent.requests == []


def test_turn_count(agent: AlquimiaAgent, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIR_RUNNERS_MAX_TURNS", "5")
    outcome = invoke(event_for("direct", alquimia_request(agent, make_datasets(2, 3))))
    _check_named(outcome, "FAIR_RUNNERS_MAX_TURNS", 5)
    assert invoke(event_for("direct", alquimia_request(agent, make_datasets(1, 5)))).status == 200


def test_query_and_context_length(agent: AlquimiaAgent, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIR_RUNNERS_MAX_QUERY_CHARS", "50")
    monkeypatch.setenv("FAIR_RUNNERS_MAX_CONTEXT_CHARS", "20")
    datasets = make_datasets(1, 2)
    datasets[0]["conversation"][1]["query"] = "q" * 51
    outcome = invoke(event_for("http_v2", alquimia_request(agent, datasets)))
    _check_named(outcome, "FAIR_RUNNERS_MAX_QUERY_CHARS", 50)
    assert outcome.body["details"][0]["loc"] == "datasets.0.conversation.1.query"
    datasets = make_datasets(1, 1, context="c" * 21)
    outcome = invoke(event_for("http_v2", alquimia_request(agent, datasets)))
    _check_named(outcome, "FAIR_RUNNERS_MAX_CONTEXT_CHARS", 20)
    assert agent.requests == []


@pytest.mark.parametrize("shape", ["http_v2", "rest_v1", "map_batch", "direct"])
def test_nesting_depth(shape: str, agent: AlquimiaAgent) -> None:
    datasets = make_datasets(1, 1)
    deep: Any = "leaf"
    for _ in range(40):
        deep = {"d": deep}
    datasets[0]["conversation"][0]["agentic"] = deep
    _check_named(
        invoke(event_for(shape, alquimia_request(agent, datasets))), "FAIR_RUNNERS_MAX_JSON_DEPTH", 32
    )
    assert agent.requests == []


def test_extreme_nesting_in_a_body_is_a_4xx() -> None:
    for body in ("[" * 200_000, "[" * 100_000 + "]" * 100_000, '{"a":' * 50_000 + "1" + "}" * 50_000):
        outcome = invoke(http_v2(body))
        assert outcome.status in (400, 413)


def test_concurrency_cap_names_env(agent: AlquimiaAgent, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIR_RUNNERS_MAX_CONCURRENCY_CAP", "4")
    outcome = invoke(event_for("http_v2", alquimia_request(agent, make_datasets(1, 1), max_concurrency=5)))
    assert_rejected(outcome, "options.max_concurrency")
    assert "FAIR_RUNNERS_MAX_CONCURRENCY_CAP" in json.dumps(outcome.body)


def test_bad_limit_env_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIR_RUNNERS_MAX_TURNS", "lots")
    with pytest.raises(ConfigurationError, match="FAIR_RUNNERS_MAX_TURNS"):
        from handler.app import lambda_handler

        lambda_handler({"datasets": make_datasets(1, 1)}, None)


def test_nan_and_infinity_are_not_json() -> None:
    for constant in ("NaN", "Infinity", "-Infinity", "1e400", "-1e999"):
        outcome = invoke(http_v2('{"datasets": [], "x": [1, ' + constant + "]}"))
        assert_rejected(outcome, "x.1")
