"""The response cache through whole runs, with the loopback servers' request logs asserted: replay, partial
re-runs, `only` and `refresh`, expiry, poisoned entries that are never replayed, the Lambda's DynamoDB table
(and its refusal without one), and two processes sharing one local cache."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fair_runners import run_sync
from fair_runners.testing import AlquimiaAgent, LoopbackServer, OpenAICompatServer

from ._aws import Aws, moto_aws
from ._cli import ROOT, cli_env
from .conftest import LLM_KEY, FakeLambdaContext, _allow, alquimia_request, llm_request, make_datasets
from .helpers import api_event
from .security_support import invoke


def _answers(result: Any) -> list[list[str]]:
    return [[turn.assistant for turn in d.conversation] for d in result.datasets]


def _cached(result: Any) -> list[list[bool]]:
    return [[record.cached for record in s.turns] for s in result.summaries]


def test_an_identical_llm_run_is_replayed_without_a_request(llm: Any) -> None:
    request = llm_request(llm, make_datasets(2, 3), cache="use")
    first = run_sync(request)
    assert len(llm.requests) == 6 and first.totals.cache_hits == 0
    llm.requests.clear()
    second = run_sync(request)
    assert llm.requests == []  # nothing sent
    assert _answers(second) == _answers(first)
    assert _cached(second) == [[True] * 3] * 2
    assert second.totals.cache_hits == 6 and second.totals.successes == 6
    assert all(s.p50_batch_time_ms == 0.0 for s in second.summaries)  # hits are not latencies
    assert [t.input_tokens for t in second.summaries[0].turns] == [
        t.input_tokens for t in first.summaries[0].turns
    ]


def test_changing_one_query_resends_that_turn_and_the_later_ones_of_its_session(llm: Any) -> None:
    datasets = make_datasets(2, 4)
    run_sync(llm_request(llm, datasets, cache="use"))
    llm.requests.clear()
    datasets[1]["conversation"][1]["query"] = "a new question"
    result = run_sync(llm_request(llm, datasets, cache="use"))
    assert [r["query"] for r in llm.requests] == ["a new question", "question 2 of s1", "question 3 of s1"]
    assert _cached(result) == [[True] * 4, [True, False, False, False]]


def test_an_alquimia_session_is_replayed_only_as_a_whole(agent: Any) -> None:
    datasets = make_datasets(2, 3)
    run_sync(alquimia_request(agent, datasets, cache="use"))
    agent.requests.clear()
    datasets[1]["conversation"][2]["query"] = "changed last question"
    result = run_sync(alquimia_request(agent, datasets, cache="use"))
    sent = [r["query"] for r in agent.infer_requests()]
    assert sent == ["question 0 of s1", "question 1 of s1", "changed last question"]  # live from its start
    assert _cached(result) == [[True] * 3, [False] * 3]


def test_only_with_an_empty_cache_sends_nothing(llm: Any, agent: Any) -> None:
    for request, server in (
        (llm_request(llm, make_datasets(2, 2), cache="only"), llm),
        (alquimia_request(agent, make_datasets(2, 2), cache="only"), agent),
    ):
        result = run_sync(request)
        assert server.requests == []
        records = [r for s in result.summaries for r in s.turns]
        assert {(r.status, r.error_type) for r in records} == {("error", "not_cached")}


def test_refresh_calls_again_and_overwrites(llm: Any) -> None:
    request = llm_request(llm, make_datasets(1, 2), cache="use")
    run_sync(request)
    llm.requests.clear()
    refreshed = run_sync({**request, "options": {"cache": "refresh"}})
    assert len(llm.requests) == 2 and refreshed.totals.cache_hits == 0
    llm.requests.clear()
    assert run_sync(request).totals.cache_hits == 2 and llm.requests == []


def test_an_entry_expires_after_its_ttl(llm: Any) -> None:
    request = llm_request(llm, make_datasets(1, 1), cache="use", cache_ttl_s=1)
    run_sync(request)
    llm.requests.clear()
    assert run_sync(request).totals.cache_hits == 1
    time.sleep(1.2)
    assert run_sync(request).totals.cache_hits == 0 and len(llm.requests) == 1


def test_errors_and_empty_answers_are_never_recorded(llm: Any) -> None:
    from fair_runners.testing import Fault

    llm.add_fault(
        Fault("status", status=400, query="question 0 of s0"), Fault("empty", query="question 0 of s1")
    )
    request = llm_request(llm, make_datasets(2, 1), cache="use")
    run_sync(request)
    llm.requests.clear()
    again = run_sync(request)
    assert sorted(r["query"] for r in llm.requests) == ["question 0 of s0", "question 0 of s1"]
    assert again.totals.cache_hits == 0


@pytest.fixture
def other_llm(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenAICompatServer]:
    server = OpenAICompatServer(api_key=None)
    with LoopbackServer(server.app) as running:
        _allow(monkeypatch, running)
        server.url = running.url  # type: ignore[attr-defined]
        yield server


def test_a_poisoned_entry_is_never_replayed(llm: Any, other_llm: OpenAICompatServer) -> None:
    # The caller's own server answers "poison" under the same model name: neither another origin nor
    # another key can seed what the real endpoint's callers replay.
    from fair_runners.testing import Fault

    other_llm.add_fault(Fault("answer", text="poison", times=None))
    poisoner = llm_request(other_llm, make_datasets(1, 2), cache="use")  # same model, another origin
    run_sync(poisoner)
    other_key = llm_request(llm, make_datasets(1, 2), cache="use")
    other_key["connector"]["params"]["api_key"] = "someone-elses-key-9Xq"
    llm.api_key = None  # the real endpoint accepts any key here
    run_sync(other_key)
    llm.api_key = LLM_KEY
    llm.requests.clear()
    victim = run_sync(llm_request(llm, make_datasets(1, 2), cache="use"))
    assert len(llm.requests) == 2 and victim.totals.cache_hits == 0
    assert "poison" not in json.dumps(victim.model_dump(mode="json"))


def test_the_temperature_warning(llm: Any) -> None:
    warm = run_sync(llm_request(llm, make_datasets(1, 1), cache="use"))
    assert any("replayed, not resampled" in w for w in warm.warnings)
    request = llm_request(llm, make_datasets(1, 1), cache="use")
    request["connector"]["params"]["temperature"] = 0
    assert not any("replayed" in w for w in run_sync(request).warnings)


# ---------------------------------------------------------------------------------------------- Lambda


def test_the_lambda_refuses_a_cache_without_its_table(agent: Any) -> None:
    outcome = invoke(api_event("POST", "/run", alquimia_request(agent, make_datasets(1, 1), cache="use")))
    assert outcome.status == 400 and outcome.body["details"][0]["loc"] == "options.cache"
    assert agent.requests == []


@pytest.fixture
def cache_table(monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    for aws in moto_aws(monkeypatch):  # one pass: moto runs until the fixture ends
        aws.dynamodb.create_table(
            TableName="cache",
            AttributeDefinitions=[{"AttributeName": "cache_key", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "cache_key", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
        monkeypatch.setenv("FAIR_RUNNERS_CACHE_TABLE", "cache")
        yield aws


def test_the_lambda_replays_from_its_dynamodb_table(llm: Any, cache_table: Aws) -> None:
    from handler.app import lambda_handler

    request = llm_request(llm, make_datasets(2, 2), cache="use")
    first = lambda_handler(request, FakeLambdaContext())
    llm.requests.clear()
    second = lambda_handler(request, FakeLambdaContext())
    assert llm.requests == [] and second["totals"]["cache_hits"] == 4
    assert [d["conversation"] for d in second["datasets"]] == [d["conversation"] for d in first["datasets"]]
    items = cache_table.dynamodb.scan(TableName="cache")["Items"]
    assert len(items) == 4 and LLM_KEY not in json.dumps(items)


# --------------------------------------------------------------------------------------- two processes

_WRITER = r"""
import json, sys
from fair_runners import run_sync
result = run_sync(json.loads(sys.stdin.read()))
print(json.dumps({"hits": result.totals.cache_hits, "ok": result.totals.successes}))
"""


def test_two_processes_share_one_local_cache(agent: AlquimiaAgent, tmp_path: Path) -> None:
    env = cli_env(FAIR_RUNNERS_CACHE_DIR=str(tmp_path / "shared"))
    first = alquimia_request(agent, make_datasets(6, 2, prefix="a"), cache="use")
    second = alquimia_request(agent, make_datasets(6, 2, prefix="b"), cache="use")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env=env,
            text=True,
        )
        for _ in (first, second)
    ]
    outs = [p.communicate(json.dumps(r), timeout=60)[0] for p, r in zip(procs, (first, second), strict=True)]
    assert [json.loads(o.strip().splitlines()[-1]) for o in outs] == [{"hits": 0, "ok": 12}] * 2
    agent.requests.clear()
    both = {**first, "datasets": first["datasets"] + second["datasets"]}
    done = subprocess.run(
        [sys.executable, "-c", _WRITER],
        input=json.dumps(both),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"hits": 24, "ok": 24}
    assert agent.requests == []
