"""End-to-end through `lambda_handler`: both runners against the real loopback servers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fair_runners import InvalidRequest
from fair_runners.testing import Fault
from handler.app import lambda_handler

from .conftest import FakeLambdaContext, alquimia_request, llm_request, make_datasets
from .helpers import http_event


def test_alquimia_turns_in_order_with_session_ids(agent: Any, lambda_context: FakeLambdaContext) -> None:
    datasets = make_datasets(sessions=3, turns=4)
    datasets[0]["conversation"][1]["agentic"] = {"tool": "search"}
    result = lambda_handler(alquimia_request(agent, datasets), lambda_context)
    assert result["success"] and result["complete"]
    for dataset in result["datasets"]:
        sid = dataset["session_id"]
        answers = [b["assistant"] for b in dataset["conversation"]]
        assert answers == [f"bot: turn {j + 1} of {sid}: question {j} of {sid}" for j in range(4)]
        seen = [r["query"] for r in agent.infer_requests() if r["session_id"] == sid]
        assert seen == [f"question {j} of {sid}" for j in range(4)]
    sent = next(r for r in agent.infer_requests() if r["query"] == "question 1 of s0")
    assert sent["extra_data"] == {"tool": "search"}
    assert sent["authorization"] == "Bearer demo-alq-key-7Hq2v9XrL4mN"
    assert sent["query_params"] == {"chat_history": "50", "agentspace": "_default"}


@pytest.mark.parametrize("provider", ["openai", "groq"])
def test_llm_history_context_and_tokens(llm: Any, provider: str, lambda_context: FakeLambdaContext) -> None:
    datasets = make_datasets(sessions=2, turns=3, context="Be brief.")
    result = lambda_handler(llm_request(llm, datasets, provider=provider), lambda_context)
    assert result["success"] and result["mode"] == "llm"
    answers = [b["assistant"] for b in result["datasets"][1]["conversation"]]
    assert answers == [f"echo: question {j} of s1 (history={j}, system=yes)" for j in range(3)]
    last = next(r for r in llm.requests if r["query"] == "question 2 of s1")
    assert [m["role"] for m in last["messages"]] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    summary = result["summaries"][1]
    assert summary["input_tokens"] > 0 and summary["output_tokens"] > 0


def test_unknown_fields_round_trip(agent: Any, lambda_context: FakeLambdaContext) -> None:
    datasets = make_datasets(sessions=1, turns=2, custom={"nested": [1, 2]})
    datasets[0]["conversation"][0]["my_label"] = "keep me"
    result = lambda_handler(alquimia_request(agent, datasets), lambda_context)
    assert result["datasets"][0]["custom"] == {"nested": [1, 2]}
    assert result["datasets"][0]["conversation"][0]["my_label"] == "keep me"


def test_http_bad_json_is_400(lambda_context: FakeLambdaContext) -> None:
    response = lambda_handler(http_event("{not json"), lambda_context)
    assert response["statusCode"] == 400
    assert "not valid JSON" in json.loads(response["body"])["error"]


def test_direct_invalid_request_raises_typed_error(lambda_context: FakeLambdaContext) -> None:
    with pytest.raises(InvalidRequest) as info:
        lambda_handler({"datasets": []}, lambda_context)
    assert info.value.details[0]["loc"] == "datasets"


@pytest.mark.parametrize("empty", [{}, None, "", [], 0, False], ids=repr)
def test_an_empty_connector_means_alquimia_as_in_fair_forge(
    agent: Any, lambda_context: FakeLambdaContext, empty: Any
) -> None:
    request = alquimia_request(agent, make_datasets(sessions=1, turns=1))
    request["connector"] = empty
    result = lambda_handler(request, lambda_context)
    assert result["mode"] == "alquimia" and result["totals"]["successes"] == 1


def test_emf_metrics_carry_every_latency_and_the_run_totals(
    agent: Any, lambda_context: FakeLambdaContext, capsys: pytest.CaptureFixture[str]
) -> None:
    agent.add_fault(Fault("status", status=400, query="question 2 of s3"))  # a failed turn is measured too
    capsys.readouterr()
    result = lambda_handler(alquimia_request(agent, make_datasets(sessions=70, turns=3)), lambda_context)
    documents = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    emf = [d for d in documents if "_aws" in d]
    assert all(d["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "FairRunners" for d in emf)
    assert all(d["service"] == "fair-runners" for d in emf)
    latency_docs = [d for d in emf if "TurnLatency" in d]
    latencies = [v for d in latency_docs for v in d["TurnLatency"]]
    # 210 turns, one value each, at most 100 values a document, in milliseconds
    assert [len(d["TurnLatency"]) for d in latency_docs] == [100, 100, 10]
    assert all(
        d["_aws"]["CloudWatchMetrics"][0]["Metrics"] == [{"Name": "TurnLatency", "Unit": "Milliseconds"}]
        for d in latency_docs
    )
    recorded = [t["latency_ms"] for summary in result["summaries"] for t in summary["turns"]]
    assert sorted(latencies) == sorted(recorded)
    totals = next(d for d in emf if "TurnsOk" in d)
    assert totals["TurnsOk"] == [209.0] and totals["TurnsFailed"] == [1.0] and totals["TurnsSkipped"] == [0.0]
    assert totals["RunWallTime"][0] == pytest.approx(result["totals"]["wall_time_ms"])
