"""The benchmark's hooks: the loopback servers' per-query latency, and the workload's deterministic delays."""

from __future__ import annotations

import http.client
import importlib.util
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

from fair_runners.testing import AlquimiaAgent, LoopbackServer, OpenAICompatServer

_KEY = "hook-key"
_AUTH = {"Authorization": f"Bearer {_KEY}", "Content-Type": "application/json"}
_SLOW_S = 0.3


def _post_get(url: str, method: str, path: str, body: dict[str, object] | None = None) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request(method, path, body=json.dumps(body).encode() if body else None, headers=_AUTH)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _delays(seen: list[str]) -> Callable[[str], float]:
    def latency(query: str) -> float:
        seen.append(query)
        return _SLOW_S if query.startswith("slow") else 0.0

    return latency


@pytest.fixture
def agent_url() -> Iterator[tuple[AlquimiaAgent, str, list[str]]]:
    seen: list[str] = []
    agent = AlquimiaAgent(api_key=_KEY, latency_s=5.0, latency=_delays(seen))  # the hook wins over latency_s
    with LoopbackServer(agent.app) as server:
        yield agent, server.url, seen


@pytest.fixture
def llm_url() -> Iterator[tuple[OpenAICompatServer, str, list[str]]]:
    seen: list[str] = []
    llm = OpenAICompatServer(api_key=_KEY, latency_s=5.0, latency=_delays(seen))
    with LoopbackServer(llm.app) as server:
        yield llm, server.url, seen


def _alquimia_turn(url: str, query: str) -> tuple[float, str]:
    started = time.perf_counter()
    status, body = _post_get(url, "POST", "/event/infer/chat/bot", {"query": query, "session_id": "s1"})
    assert status == 200, body
    stream_id = json.loads(body)["stream_id"]
    status, body = _post_get(url, "GET", f"/event/stream/{stream_id}")
    assert status == 200, body
    last = body.decode().strip().split("\n\n")[-1].removeprefix("data: ")
    return time.perf_counter() - started, json.loads(last)["response"]["data"]["content"]


def test_alquimia_agent_delays_each_stream_by_its_query(
    agent_url: tuple[AlquimiaAgent, str, list[str]],
) -> None:
    _, url, seen = agent_url
    fast, answer = _alquimia_turn(url, "fast one")
    slow, slow_answer = _alquimia_turn(url, "slow one")
    assert fast < _SLOW_S / 2, fast
    assert _SLOW_S <= slow < _SLOW_S + 1.0, slow
    assert (answer, slow_answer) == ("bot: turn 1 of s1: fast one", "bot: turn 2 of s1: slow one")
    assert seen == ["fast one", "slow one"]  # asked once per stream, with the infer call's query


def _completion(url: str, messages: list[dict[str, str]]) -> tuple[float, str]:
    started = time.perf_counter()
    status, body = _post_get(url, "POST", "/v1/chat/completions", {"model": "m", "messages": messages})
    assert status == 200, body
    return time.perf_counter() - started, json.loads(body)["choices"][0]["message"]["content"]


def test_openai_compat_delays_each_answer_by_the_last_user_message(
    llm_url: tuple[OpenAICompatServer, str, list[str]],
) -> None:
    _, url, seen = llm_url
    fast, answer = _completion(
        url, [{"role": "user", "content": "slow earlier"}, {"role": "user", "content": "quick"}]
    )
    slow, _ = _completion(
        url, [{"role": "system", "content": "be brief"}, {"role": "user", "content": "slow now"}]
    )
    assert fast < _SLOW_S / 2, fast
    assert _SLOW_S <= slow < _SLOW_S + 1.0, slow
    assert answer == "echo: quick (history=1, system=no)"
    assert seen == ["quick", "slow now"]


def test_without_the_hook_latency_s_still_applies() -> None:
    llm = OpenAICompatServer(api_key=_KEY, latency_s=0.2)
    with LoopbackServer(llm.app) as server:
        took, _ = _completion(server.url, [{"role": "user", "content": "hi"}])
    assert 0.2 <= took < 1.2, took


def _workload() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "bench" / "_workload.py"
    spec = importlib.util.spec_from_file_location("bench_workload", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_latency_is_lognormal_and_a_function_of_the_query() -> None:
    workload = _workload()
    latency = workload.Latency(0.8, 0.5)
    delays = [latency(workload.query(i, j)) for i in range(2000) for j in range(5)]
    logs = [math.log(d) for d in delays]
    assert statistics.median(delays) == pytest.approx(0.8, rel=0.03)
    assert statistics.pstdev(logs) == pytest.approx(0.5, rel=0.03)
    assert latency("question 1 of session 2") == latency("question 1 of session 2")
    assert workload.Latency.parse(latency.spec()) == latency
    assert workload.Latency(0.05)("anything") == 0.05


def test_the_critical_path_is_the_longest_sessions_summed_delays() -> None:
    workload = _workload()
    work = workload.Workload("t", 3, 2, workload.Latency(0.8, 0.5), 3)
    sums = [sum(work.latency(workload.query(i, j)) for j in range(2)) for i in range(3)]
    rounds = [max(work.latency(workload.query(i, j)) for i in range(3)) for j in range(2)]
    assert work.critical_path_s() == max(sums)
    assert work.sum_of_round_maxima_s() == sum(rounds) >= max(sums)
    assert [d["conversation"][1]["query"] for d in workload.datasets(3, 2)] == [
        workload.query(i, 1) for i in range(3)
    ]
