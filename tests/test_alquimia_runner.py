"""The Alquimia runner against the real loopback agent: protocol, order, connection reuse, failures."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from fair_runners import run_sync
from fair_runners.testing import AlquimiaAgent, Fault, LoopbackServer

from .conftest import ALQUIMIA_KEY, alquimia_request, make_datasets
from .helpers import Counting, turns


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[AlquimiaAgent, Counting]]:
    """A fresh agent behind a connection-counting wrapper, on its own port."""
    agent = AlquimiaAgent(api_key=ALQUIMIA_KEY)
    counting = Counting(agent.app)
    with LoopbackServer(counting) as server:
        agent.url = server.url  # type: ignore[attr-defined]
        monkeypatch.setenv("FAIR_RUNNERS_ALLOWED_HOSTS", f"{server.host}:{server.port}")
        yield agent, counting


def test_turns_reach_the_agent_in_order_per_session(agent: Any) -> None:
    result = run_sync(alquimia_request(agent, make_datasets(sessions=5, turns=4), max_concurrency=5))
    assert result.complete and result.totals.successes == 20
    for dataset in result.datasets:
        sid = dataset.session_id
        sent = [r["query"] for r in agent.infer_requests() if r["session_id"] == sid]
        assert sent == [f"question {j} of {sid}" for j in range(4)]
        # The agent numbers turns per session in arrival order: 1..4 means strictly sequential turns.
        assert [b.assistant for b in dataset.conversation] == [
            f"bot: turn {j + 1} of {sid}: question {j} of {sid}" for j in range(4)
        ]
    streams = [r for r in agent.requests if r["step"] == "stream"]
    assert len(streams) == 20
    assert all(r["accept"] == "text/event-stream" for r in streams)
    assert all(r["query_params"] == {"response_only": "true"} for r in streams)


def test_one_client_reused_across_every_turn(counted: tuple[AlquimiaAgent, Counting]) -> None:
    agent, counting = counted
    result = run_sync(alquimia_request(agent, make_datasets(sessions=1, turns=6), max_concurrency=1))
    assert result.totals.successes == 6
    assert len(agent.requests) == 12  # infer + stream per turn
    assert len(counting.clients) == 1  # ... all over one keep-alive TCP connection


def test_connections_bounded_by_concurrency(counted: tuple[AlquimiaAgent, Counting]) -> None:
    agent, counting = counted
    agent.latency_s = 0.02
    result = run_sync(alquimia_request(agent, make_datasets(sessions=12, turns=4), max_concurrency=3))
    assert result.totals.successes == 48
    assert 1 <= counting.peak <= 3
    assert len(counting.clients) <= 3 + 4  # the pool's headroom, never one connection per turn


def test_api_version_channel_and_agentic(agent: Any) -> None:
    datasets = make_datasets(sessions=1, turns=2)
    datasets[0]["conversation"][0]["agentic"] = {"tool": "search", "k": 3}
    request = alquimia_request(agent, datasets)
    request["config"].update(base_url=agent.url + "/", api_version="/v2/", channel_id="whatsapp")
    result = run_sync(request)
    assert result.totals.successes == 2
    first, second = agent.infer_requests()
    assert first["path"] == "/v2/event/infer/whatsapp/bot"
    assert first["channel"] == "whatsapp" and first["agent_id"] == "bot"
    assert first["extra_data"] == {"tool": "search", "k": 3}
    assert second["extra_data"] == {}
    assert first["attachments"] == []
    assert first["authorization"] == f"Bearer {ALQUIMIA_KEY}"
    assert all(r["path"].startswith("/v2/event/stream/") for r in agent.requests if r["step"] == "stream")


def test_url_pieces_are_percent_encoded(agent: Any) -> None:
    # Anything a segment may not hold literally is encoded; "%" too, so "%2e%2e" can never become "..".
    request = alquimia_request(agent, make_datasets(sessions=1, turns=1))
    request["config"].update(agent_id="support bot %2e%2e", channel_id="web:chat", api_version="v2/beta")
    result = run_sync(request)
    assert result.totals.successes == 1
    (infer,) = agent.infer_requests()
    assert infer["raw_path"] == "/v2/beta/event/infer/web:chat/support%20bot%20%252e%252e"
    assert infer["agent_id"] == "support bot %2e%2e"


@pytest.mark.parametrize(
    ("fault", "error_type"),
    [
        (Fault("empty", phase="stream"), "empty_answer"),
        (Fault("no_stream_id"), "protocol"),
        (Fault("malformed", phase="stream"), "protocol"),
    ],
)
def test_bad_replies_fail_only_their_turn(agent: Any, fault: Fault, error_type: str) -> None:
    fault.query = "question 1 of s0"
    agent.add_fault(fault)
    result = run_sync(alquimia_request(agent, make_datasets(sessions=2, turns=3)))
    assert result.complete
    bad = result.datasets[0].conversation[1]
    assert bad.assistant.startswith("[ERROR] ")
    assert bad.observation is not None and bad.observation.startswith("Error: ")
    record = turns(result.model_dump(), 0)[1]
    assert record["status"] == "error" and record["error_type"] == error_type
    assert record["attempts"] == 1  # not retryable: sent once
    assert [r["query"] for r in agent.infer_requests()].count("question 1 of s0") == 1
    # The rest of the session and the other session are untouched.
    assert [t["status"] for t in turns(result.model_dump(), 0)] == ["ok", "error", "ok"]
    assert [t["status"] for t in turns(result.model_dump(), 1)] == ["ok", "ok", "ok"]
    assert result.summaries[0].failures == 1 and result.summaries[0].successes == 2


def test_garbage_before_a_good_event_is_tolerated(agent: Any) -> None:
    agent.add_fault(Fault("garbage_then_ok", phase="stream", query="question 0 of s0"))
    result = run_sync(alquimia_request(agent, make_datasets(sessions=1, turns=1)))
    assert result.datasets[0].conversation[0].assistant == "bot: turn 1 of s0: question 0 of s0"


def test_unknown_fields_and_existing_observation_kept(agent: Any) -> None:
    datasets = make_datasets(sessions=1, turns=2, tenant="acme")
    datasets[0]["conversation"][0].update(observation="seen before", label={"x": 1})
    agent.add_fault(Fault("empty", phase="stream", query="question 0 of s0"))
    result = run_sync(alquimia_request(agent, datasets)).model_dump()
    dataset = result["datasets"][0]
    assert dataset["tenant"] == "acme"
    assert dataset["conversation"][0]["label"] == {"x": 1}
    assert dataset["conversation"][0]["observation"].startswith("seen before\nError: ")
