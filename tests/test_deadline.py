"""The deadline through `lambda_handler`: partial results before the context ends, then re-post to finish."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from fair_runners.testing import Fault
from handler.app import lambda_handler

from .conftest import FakeLambdaContext, alquimia_request, llm_request, make_datasets
from .helpers import http_event

# A 2.5 s context leaves a 2.0 s run budget (the safety margin is 20% of what is left when that is < 3 s).
SHORT_CONTEXT_S = 2.5


def _check_partial(result: dict[str, Any], datasets: list[dict[str, Any]]) -> dict[str, int]:
    """Every turn is back, in order, as ok/error/skipped; returns the count per status."""
    assert result["success"] is True and result["complete"] is False
    assert [d["session_id"] for d in result["datasets"]] == [d["session_id"] for d in datasets]
    counts: dict[str, int] = {}
    for sent, got, summary in zip(datasets, result["datasets"], result["summaries"], strict=True):
        assert [b["qa_id"] for b in got["conversation"]] == [b["qa_id"] for b in sent["conversation"]]
        assert [t["qa_id"] for t in summary["turns"]] == [b["qa_id"] for b in sent["conversation"]]
        statuses = [t["status"] for t in summary["turns"]]
        # Within a session, turns run in order: once one is skipped, all later ones are.
        if "skipped" in statuses:
            first = statuses.index("skipped")
            assert set(statuses[first:]) == {"skipped"}
        for turn, record in zip(got["conversation"], summary["turns"], strict=True):
            counts[record["status"]] = counts.get(record["status"], 0) + 1
            if record["status"] == "skipped":
                assert turn["assistant"] == ""  # returned unchanged
                assert record["attempts"] == 0 and record["latency_ms"] is None
        assert summary["skipped"] == statuses.count("skipped")
    assert counts.get("skipped", 0) > 0 and counts.get("ok", 0) > 0
    assert result["totals"]["skipped"] == counts["skipped"]
    assert any("skip_answered" in w for w in result["warnings"])
    return counts


def _repost(result: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    again = {
        **request,
        "datasets": result["datasets"],
        "options": {**request["options"], "skip_answered": True},
    }
    return lambda_handler(again, FakeLambdaContext(60))  # type: ignore[no-any-return]


def test_alquimia_deadline_then_repost_finishes_exactly_the_rest(agent: Any) -> None:
    agent.latency_s = 0.25
    datasets = make_datasets(sessions=4, turns=8)
    request = alquimia_request(agent, datasets, max_concurrency=2)
    context = FakeLambdaContext(SHORT_CONTEXT_S)
    result = lambda_handler(request, context)
    assert context.get_remaining_time_in_millis() > 0  # returned before the invocation's own deadline
    counts = _check_partial(result, datasets)
    # Sessions never started come back untouched.
    assert result["summaries"][3]["skipped"] == 8

    agent.requests.clear()
    agent.latency_s = 0.0
    final = _repost(result, request)
    assert final["complete"] is True
    sent = agent.infer_requests()
    assert len(sent) == counts["skipped"] + counts.get("error", 0)  # exactly the missing turns
    answered = {b["qa_id"] for d in result["datasets"] for b in d["conversation"] if b["assistant"]}
    assert not {f"{r['session_id']}-q{r['query'].split()[1]}" for r in sent} & answered
    for sent_ds, summary in zip(result["summaries"], final["summaries"], strict=True):
        before = [t["status"] for t in sent_ds["turns"]]
        after = [t["status"] for t in summary["turns"]]
        assert after == ["kept" if s == "ok" else "ok" for s in before]
    for dataset in final["datasets"]:
        for j, batch in enumerate(dataset["conversation"]):
            assert batch["assistant"].endswith(f"question {j} of {dataset['session_id']}")


def test_llm_deadline_then_repost_rebuilds_history(llm: Any) -> None:
    llm.latency_s = 0.25
    datasets = make_datasets(sessions=3, turns=8)
    request = llm_request(llm, datasets, max_concurrency=2)
    context = FakeLambdaContext(SHORT_CONTEXT_S)
    result = lambda_handler(request, context)
    assert context.get_remaining_time_in_millis() > 0
    counts = _check_partial(result, datasets)
    first_answers = {b["qa_id"]: b["assistant"] for d in result["datasets"] for b in d["conversation"]}

    llm.requests.clear()
    llm.latency_s = 0.0
    final = _repost(result, request)
    assert final["complete"] is True
    assert len(llm.requests) == counts["skipped"] + counts.get("error", 0)
    # History came from the answers already in the re-posted datasets: every turn saw all earlier ones.
    for dataset in final["datasets"]:
        sid = dataset["session_id"]
        assert [b["assistant"] for b in dataset["conversation"]] == [
            f"echo: question {j} of {sid} (history={j}, system=no)" for j in range(8)
        ]
    # ... and each request carried exactly those answers, the kept ones from the first run included.
    final_answers = {b["qa_id"]: b["assistant"] for d in final["datasets"] for b in d["conversation"]}
    kept = [qa for qa, status in _status_map(result).items() if status == "ok"]
    assert kept and all(final_answers[qa] == first_answers[qa] for qa in kept)
    for sent in llm.requests:
        _, j, _, sid = sent["query"].split()
        history = [m["content"] for m in sent["messages"] if m["role"] == "assistant"]
        assert history == [final_answers[f"{sid}-q{k}"] for k in range(int(j))]


def _status_map(result: dict[str, Any]) -> dict[str, str]:
    return {t["qa_id"]: t["status"] for s in result["summaries"] for t in s["turns"]}


def test_a_hang_at_the_deadline_is_cancelled_and_skipped(agent: Any) -> None:
    agent.add_fault(Fault("hang", query="question 1 of s0", phase="stream", times=None))
    datasets = make_datasets(sessions=2, turns=3)
    context = FakeLambdaContext(SHORT_CONTEXT_S)
    result = lambda_handler(alquimia_request(agent, datasets, turn_timeout_s=300), context)
    assert context.get_remaining_time_in_millis() > 0
    assert result["complete"] is False
    assert [t["status"] for t in result["summaries"][0]["turns"]] == ["ok", "skipped", "skipped"]
    assert [t["status"] for t in result["summaries"][1]["turns"]] == ["ok", "ok", "ok"]


def test_retry_after_beyond_the_deadline_is_not_waited_for(agent: Any) -> None:
    agent.add_fault(Fault("status", status=429, retry_after=600, query="question 0 of s0"))
    context = FakeLambdaContext(SHORT_CONTEXT_S)
    started = time.monotonic()
    result = lambda_handler(alquimia_request(agent, make_datasets(sessions=1, turns=2)), context)
    assert time.monotonic() - started < SHORT_CONTEXT_S
    record = result["summaries"][0]["turns"][0]
    assert record["status"] == "error" and record["error_type"] == "rate_limited"
    assert record["retry_wait_ms"] == 0
    assert (
        "no time left to retry before the deadline" in result["datasets"][0]["conversation"][0]["assistant"]
    )
    assert result["complete"] is False  # re-posting with skip_answered retries it


def test_api_gateway_events_are_capped_below_its_timeout(agent: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIR_RUNNERS_HTTP_DEADLINE_S", "1.5")
    agent.latency_s = 0.2
    datasets = make_datasets(sessions=2, turns=20)
    started = time.monotonic()
    response = lambda_handler(http_event(alquimia_request(agent, datasets)), FakeLambdaContext(900))
    assert time.monotonic() - started < 3.0
    assert response["statusCode"] == 200
    body = json.loads(response["body"])
    assert body["complete"] is False and body["totals"]["skipped"] > 0
    assert body["totals"]["successes"] + body["totals"]["skipped"] + body["totals"]["failures"] == 40


def test_api_gateway_budget_counts_from_the_events_arrival(
    agent: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Work before the run (S3 reads, secrets, validation) comes out of API Gateway's budget too."""
    from fair_runners import aws

    monkeypatch.setenv("FAIR_RUNNERS_HTTP_DEADLINE_S", "1.5")
    load_request = aws.load_request

    def slow_load(*args: Any, **kwargs: Any) -> Any:
        time.sleep(1.0)  # e.g. a slow S3 read of datasets_uri
        return load_request(*args, **kwargs)

    monkeypatch.setattr(aws, "load_request", slow_load)
    agent.latency_s = 0.2
    started = time.monotonic()
    response = lambda_handler(
        http_event(alquimia_request(agent, make_datasets(sessions=1, turns=20))), FakeLambdaContext(900)
    )
    elapsed = time.monotonic() - started
    body = json.loads(response["body"])
    assert response["statusCode"] == 200 and body["complete"] is False
    assert elapsed < 2.2  # 1.5 s from arrival plus shaping, not 1.0 s + a fresh 1.5 s
    assert body["totals"]["successes"] <= 3  # ~0.5 s of run time at 0.2 s a turn
