"""Fault injection on the real loopback servers: retries, Retry-After, timeouts, dropped streams, bad keys."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from fair_runners import TurnRetrying, run_sync
from fair_runners._progress import ProgressEvent
from fair_runners.testing import Fault
from handler.app import lambda_handler

from .conftest import FakeLambdaContext, alquimia_request, llm_request, make_datasets
from .helpers import http_event, turns


def _statuses(result: Any, session: int) -> list[str]:
    return [t["status"] for t in turns(result.model_dump(), session)]


def test_429_retry_after_pauses_the_whole_backend(llm: Any) -> None:
    llm.latency_s = 0.01
    llm.add_fault(Fault("status", status=429, retry_after=1.0, query="question 1 of s0"))
    events: list[ProgressEvent] = []
    request = llm_request(llm, make_datasets(sessions=4, turns=4), max_concurrency=4)
    result = run_sync(request, on_progress=events.append)
    assert result.complete and result.totals.successes == 16
    record = turns(result.model_dump(), 0)[1]
    assert record["status"] == "ok" and record["attempts"] == 2
    assert record["retry_wait_ms"] >= 1000  # Retry-After honoured ...
    assert record["latency_ms"] < 1000  # ... and not counted as latency
    assert result.summaries[0].retries == 1 and result.totals.retries == 1
    retrying = [e for e in events if isinstance(e, TurnRetrying)]
    assert [(e.qa_id, e.error_type) for e in retrying] == [("s0-q1", "rate_limited")]
    # Adaptive concurrency: the limit was cut, and the response says so.
    assert any("concurrency was reduced to 2 (from 4)" in w for w in result.warnings)
    # Backend-wide pause: nothing new reached the server for the Retry-After window (requests already
    # on the wire when the 429 arrived may land in the first moments, hence the margin).
    rate_limited_at = next(r["time"] for r in llm.requests if r["query"] == "question 1 of s0")
    window = [r for r in llm.requests if rate_limited_at + 0.25 < r["time"] < rate_limited_at + 0.95]
    assert window == []


def test_429_on_alquimia_is_retried_after_retry_after(agent: Any) -> None:
    agent.add_fault(Fault("status", status=429, retry_after=0.3, query="question 0 of s1"))
    result = run_sync(alquimia_request(agent, make_datasets(sessions=2, turns=2), max_concurrency=2))
    assert result.totals.successes == 4
    record = turns(result.model_dump(), 1)[0]
    assert record["attempts"] == 2 and record["retry_wait_ms"] >= 300
    assert any("concurrency was reduced to 1 (from 2)" in w for w in result.warnings)


@pytest.mark.parametrize("mode", ["alquimia", "llm"])
def test_500_twice_then_success(agent: Any, llm: Any, mode: str) -> None:
    server = agent if mode == "alquimia" else llm
    server.add_fault(Fault("status", status=500, query="question 1 of s0", times=2))
    datasets = make_datasets(sessions=2, turns=3)
    request = alquimia_request(agent, datasets) if mode == "alquimia" else llm_request(llm, datasets)
    result = run_sync(request)
    assert result.complete and result.totals.successes == 6
    record = turns(result.model_dump(), 0)[1]
    assert record["status"] == "ok" and record["attempts"] == 3 and record["retry_wait_ms"] > 0
    sent = agent.infer_requests() if mode == "alquimia" else llm.requests
    assert [r["query"] for r in sent].count("question 1 of s0") == 3
    assert "question 1 of s0" in result.datasets[0].conversation[1].assistant
    assert result.summaries[0].retries == 2 and result.summaries[1].retries == 0
    assert result.warnings == []  # a 5xx is not a rate limit: concurrency untouched


@pytest.mark.parametrize("status", [400, 404, 409, 422])
@pytest.mark.parametrize("mode", ["alquimia", "llm"])
def test_other_4xx_are_not_retried(agent: Any, llm: Any, mode: str, status: int) -> None:
    server = agent if mode == "alquimia" else llm
    server.add_fault(Fault("status", status=status, query="question 0 of s0", times=None))
    datasets = make_datasets(sessions=1, turns=2)
    request = alquimia_request(agent, datasets) if mode == "alquimia" else llm_request(llm, datasets)
    result = run_sync(request)
    record = turns(result.model_dump(), 0)[0]
    assert record["status"] == "error" and record["attempts"] == 1 and record["error_type"] == "permanent"
    assert str(status) in result.datasets[0].conversation[0].assistant
    sent = agent.infer_requests() if mode == "alquimia" else llm.requests
    assert [r["query"] for r in sent].count("question 0 of s0") == 1
    assert _statuses(result, 0) == ["error", "ok"]


@pytest.mark.parametrize(("mode", "phase"), [("alquimia", "infer"), ("alquimia", "stream"), ("llm", "infer")])
def test_a_hang_times_out_and_the_run_returns(agent: Any, llm: Any, mode: str, phase: str) -> None:
    server = agent if mode == "alquimia" else llm
    server.add_fault(Fault("hang", query="question 1 of s0", phase=phase, times=None))  # type: ignore[arg-type]
    datasets = make_datasets(sessions=3, turns=3)
    options = {"turn_timeout_s": 0.5, "max_attempts": 2}
    request = (
        alquimia_request(agent, datasets, **options)
        if mode == "alquimia"
        else llm_request(llm, datasets, **options)
    )
    started = time.monotonic()
    result = run_sync(request)
    assert time.monotonic() - started < 10  # two 0.5 s attempts plus a short backoff, generously bounded
    record = turns(result.model_dump(), 0)[1]
    assert record["status"] == "error" and record["error_type"] == "timeout" and record["attempts"] == 2
    assert record["latency_ms"] >= 500
    assert "turn_timeout_s=0.5" in result.datasets[0].conversation[1].assistant
    assert _statuses(result, 0) == ["ok", "error", "ok"]
    assert _statuses(result, 1) == _statuses(result, 2) == ["ok", "ok", "ok"]
    assert result.complete


def test_a_stream_dropped_mid_event_is_retried(agent: Any) -> None:
    agent.add_fault(Fault("drop", phase="stream", query="question 0 of s1"))
    result = run_sync(alquimia_request(agent, make_datasets(sessions=2, turns=2)))
    record = turns(result.model_dump(), 1)[0]
    assert record["status"] == "ok" and record["attempts"] == 2
    assert result.datasets[1].conversation[0].assistant.endswith("question 0 of s1")
    assert result.totals.successes == 4


def test_malformed_stream_fails_the_turn_without_retry(agent: Any) -> None:
    agent.add_fault(Fault("malformed", phase="stream", query="question 0 of s0", times=None))
    result = run_sync(alquimia_request(agent, make_datasets(sessions=2, turns=2)))
    record = turns(result.model_dump(), 0)[0]
    assert record["error_type"] == "protocol" and record["attempts"] == 1
    assert "malformed" in result.datasets[0].conversation[0].assistant
    assert _statuses(result, 0) == ["error", "ok"] and _statuses(result, 1) == ["ok", "ok"]


@pytest.mark.parametrize("concurrency", [1, 3])
def test_alquimia_invalid_key_stops_the_backend(agent: Any, concurrency: int) -> None:
    agent.api_key = "the-real-key"  # the request's key is now wrong
    request = alquimia_request(agent, make_datasets(sessions=6, turns=3), max_concurrency=concurrency)
    result = run_sync(request)
    records = [t for s in result.model_dump()["summaries"] for t in s["turns"]]
    assert len(records) == 18 and all(t["status"] == "error" for t in records)
    assert all(t["error_type"] == "authentication" for t in records)
    # Only the attempts already in flight when the first 401 came back reached the server.
    assert 1 <= len(agent.infer_requests()) <= concurrency
    not_sent = [b.assistant for d in result.datasets for b in d.conversation if "not sent" in b.assistant]
    assert len(not_sent) >= 18 - concurrency
    assert all("401" in a for a in not_sent)
    assert any("authentication failed; remaining turns were not sent" in w for w in result.warnings)
    assert "demo-alq-key-7Hq2v9XrL4mN" not in result.model_dump_json()  # the key is redacted everywhere


@pytest.mark.parametrize("provider", ["openai", "groq"])
def test_llm_invalid_key_stops_the_backend(llm: Any, provider: str) -> None:
    llm.api_key = "the-real-key"
    request = llm_request(llm, make_datasets(sessions=4, turns=3), provider=provider, max_concurrency=1)
    result = run_sync(request)
    assert len(llm.requests) == 1
    assert result.totals.failures == 12
    first = turns(result.model_dump(), 0)[0]
    assert first["error_type"] == "authentication" and first["attempts"] == 1
    later = turns(result.model_dump(), 3)[2]
    assert later["error_type"] == "authentication" and later["attempts"] == 0


@pytest.mark.parametrize("mode", ["alquimia", "llm"])
def test_an_answer_that_is_not_unicode_is_repaired_not_fatal(agent: Any, llm: Any, mode: str) -> None:
    # Half an emoji (an unpaired UTF-16 surrogate, as a backend slicing UTF-16 strings sends it) cannot be
    # written as UTF-8: it becomes U+FFFD in that answer, and every other answer is still returned.
    server = agent if mode == "alquimia" else llm
    phase = "stream" if mode == "alquimia" else "infer"
    server.add_fault(Fault("answer", text="Sure! \ud83d", query="question 0 of s1", phase=phase))
    datasets = make_datasets(sessions=3, turns=2)
    request = alquimia_request(agent, datasets) if mode == "alquimia" else llm_request(llm, datasets)
    response = lambda_handler(http_event(request), FakeLambdaContext())
    assert response["statusCode"] == 200, response["body"]
    body = json.loads(response["body"])
    assert body["totals"]["successes"] == 6
    assert body["datasets"][1]["conversation"][0]["assistant"] == "Sure! \ufffd"
    response["body"].encode("utf-8")  # the body is real UTF-8 text
