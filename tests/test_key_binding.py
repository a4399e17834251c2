"""Deployment keys go only where they are bound: a caller who names another host or class brings a key.

Two loopback backends of each kind: the deployment's own, and one a caller picks. The caller's server logs
every request it receives (Authorization included), and the tests assert the deployment key never arrives.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fair_runners import InvalidRequest, prepare
from fair_runners.testing import AlquimiaAgent, LoopbackServer, OpenAICompatServer

from ._cli import cli
from .conftest import FakeLambdaContext, _allow, make_datasets
from .helpers import api_event
from .security_support import invoke

DEPLOYMENT_ALQUIMIA_KEY = "dep-alq-Zk42Lq9Vx0Pw7Rt3"
DEPLOYMENT_LLM_KEY = "dep-llm-Hs81Mn4Qb6Yc2Jd9"
OPENAI_ENV_KEY = "sk-env-Fq03Wt7Ke5Gh1Ua8"


@pytest.fixture
def caller_agent(monkeypatch: pytest.MonkeyPatch) -> Iterator[AlquimiaAgent]:
    """An Alquimia-protocol server a caller points the request at (it accepts any key)."""
    agent = AlquimiaAgent(api_key=None)
    with LoopbackServer(agent.app) as server:
        agent.url = server.url  # type: ignore[attr-defined]
        _allow(monkeypatch, server)
        yield agent


@pytest.fixture
def caller_llm(monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenAICompatServer]:
    """An OpenAI-compatible server a caller points the request at (it accepts any key)."""
    llm = OpenAICompatServer(api_key=None)
    with LoopbackServer(llm.app) as server:
        llm.url = server.url  # type: ignore[attr-defined]
        _allow(monkeypatch, server)
        yield llm


@pytest.fixture
def deployment_alquimia(agent: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    agent.api_key = DEPLOYMENT_ALQUIMIA_KEY
    monkeypatch.setenv("ALQUIMIA_API_KEY", DEPLOYMENT_ALQUIMIA_KEY)
    monkeypatch.setenv("ALQUIMIA_BASE_URL", agent.url)
    return agent


@pytest.fixture
def deployment_llm(llm: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    llm.api_key = DEPLOYMENT_LLM_KEY
    monkeypatch.setenv("LLM_API_KEY", DEPLOYMENT_LLM_KEY)
    monkeypatch.setenv("LLM_BASE_URL", f"{llm.url}/v1")
    return llm


def _alquimia(base_url: str | None) -> dict[str, Any]:
    config: dict[str, Any] = {"agent_id": "bot"}
    if base_url is not None:
        config["base_url"] = base_url
    return {"datasets": make_datasets(1, 2), "config": config}


def _llm(class_path: str, base_url: str | None, **params: Any) -> dict[str, Any]:
    if base_url is not None:
        params["base_url"] = base_url
    return {
        "datasets": make_datasets(1, 2),
        "connector": {"class_path": class_path, "params": {"model": "m", **params}},
    }


def _no_key_reached(*servers: Any) -> None:
    for server in servers:
        assert server.requests == [] or all(
            DEPLOYMENT_ALQUIMIA_KEY not in json.dumps(r) and DEPLOYMENT_LLM_KEY not in json.dumps(r)
            for r in server.requests
        )


# ------------------------------------------------------------------------------------------- Alquimia


def test_the_deployment_agent_gets_the_deployment_key(deployment_alquimia: Any) -> None:
    for base_url in (None, deployment_alquimia.url, deployment_alquimia.url + "/"):
        deployment_alquimia.requests.clear()
        outcome = invoke(api_event("POST", "/run", _alquimia(base_url)))
        assert outcome.status == 200 and outcome.body["totals"]["successes"] == 2, base_url
        auth = {r["authorization"] for r in deployment_alquimia.infer_requests()}
        assert auth == {f"Bearer {DEPLOYMENT_ALQUIMIA_KEY}"}


@pytest.mark.parametrize("shape", ["http", "direct", "map_batch"])
def test_another_agent_host_must_bring_its_own_key(
    deployment_alquimia: Any, caller_agent: AlquimiaAgent, shape: str
) -> None:
    request = _alquimia(caller_agent.url)  # type: ignore[attr-defined]
    if shape == "http":
        outcome = invoke(api_event("POST", "/run", request))
        assert outcome.status == 400
        detail = outcome.body["details"][0]
        assert detail["loc"] == "config.api_key" and "its own key" in detail["msg"]
    else:
        from handler.app import lambda_handler

        event = request if shape == "direct" else {"Items": request["datasets"], "BatchInput": request}
        with pytest.raises(InvalidRequest) as info:
            lambda_handler(event, FakeLambdaContext())
        assert info.value.details[0]["loc"] == "config.api_key"
    assert caller_agent.requests == []
    _no_key_reached(caller_agent)
    assert DEPLOYMENT_ALQUIMIA_KEY not in json.dumps(outcome.body if shape == "http" else str(info.value))


def test_the_caller_may_use_another_agent_with_its_own_key(
    deployment_alquimia: Any, caller_agent: AlquimiaAgent
) -> None:
    request = _alquimia(caller_agent.url)  # type: ignore[attr-defined]
    request["config"]["api_key"] = "caller-own-key-123456"
    outcome = invoke(api_event("POST", "/run", request))
    assert outcome.status == 200 and outcome.body["totals"]["successes"] == 2
    assert {r["authorization"] for r in caller_agent.infer_requests()} == {"Bearer caller-own-key-123456"}
    _no_key_reached(caller_agent)


def test_without_alquimia_base_url_the_deployment_key_is_never_used(
    agent: Any, caller_agent: AlquimiaAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALQUIMIA_API_KEY", DEPLOYMENT_ALQUIMIA_KEY)
    monkeypatch.delenv("ALQUIMIA_BASE_URL", raising=False)
    for base_url in (agent.url, caller_agent.url):  # type: ignore[attr-defined]
        outcome = invoke(api_event("POST", "/run", _alquimia(base_url)))
        assert outcome.status == 400 and outcome.body["details"][0]["loc"] == "config.api_key"
    assert agent.requests == [] and caller_agent.requests == []


# ------------------------------------------------------------------------------------------------ LLM


def test_the_deployment_endpoint_gets_the_llm_key(deployment_llm: Any) -> None:
    for class_path in ("langchain_openai.ChatOpenAI", "langchain_openai.chat_models.ChatOpenAI"):
        deployment_llm.requests.clear()
        outcome = invoke(api_event("POST", "/run", _llm(class_path, None)))
        assert outcome.status == 200 and outcome.body["totals"]["successes"] == 2
        assert {r["authorization"] for r in deployment_llm.requests} == {f"Bearer {DEPLOYMENT_LLM_KEY}"}


@pytest.mark.parametrize(
    "class_path, where",
    [
        ("langchain_openai.ChatOpenAI", "caller"),  # same class, another host
        ("langchain_groq.ChatGroq", "deployment"),  # another class, the deployment's own host
        ("langchain_groq.ChatGroq", "caller"),
    ],
)
def test_another_llm_host_or_class_must_bring_its_own_key(
    deployment_llm: Any, caller_llm: OpenAICompatServer, class_path: str, where: str
) -> None:
    server = caller_llm if where == "caller" else deployment_llm
    base = server.url + ("/v1" if class_path.endswith("ChatOpenAI") else "")  # type: ignore[attr-defined]
    outcome = invoke(api_event("POST", "/run", _llm(class_path, base)))
    assert outcome.status == 400
    assert outcome.body["details"][0]["loc"] == "connector.params.api_key"
    assert DEPLOYMENT_LLM_KEY not in json.dumps(outcome.raw)
    assert caller_llm.requests == [] and deployment_llm.requests == []


def test_a_provider_variable_only_goes_to_its_own_built_in_endpoint(
    caller_llm: OpenAICompatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_ENV_KEY)
    # Pointed elsewhere, the caller must bring a key (the variable is for api.openai.com only).
    outcome = invoke(api_event("POST", "/run", _llm("langchain_openai.ChatOpenAI", f"{caller_llm.url}/v1")))  # type: ignore[attr-defined]
    assert outcome.status == 400 and outcome.body["details"][0]["loc"] == "connector.params.api_key"
    assert caller_llm.requests == []
    # With no base_url, the model gets the built-in endpoint explicitly, and the variable.
    prepared = prepare(_llm("langchain_openai.ChatOpenAI", None))
    params = prepared._runner_args["params"]
    assert params["base_url"] == "https://api.openai.com/v1" and params["api_key"] == OPENAI_ENV_KEY
    # A class added by the deployer gets no deployment key at all.
    monkeypatch.setenv("FAIR_RUNNERS_ALLOWED_CONNECTORS", "langchain_openai.chat_models.base.ChatOpenAI")
    with pytest.raises(InvalidRequest) as info:
        prepare(_llm("langchain_openai.chat_models.base.ChatOpenAI", None))
    assert info.value.details[0]["loc"] == "connector.params.api_key"


def test_sdk_env_variables_change_nothing_behind_our_back(
    caller_llm: OpenAICompatServer, llm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # OPENAI_BASE_URL and OPENAI_API_KEY point the SDK at the caller's server; the request names the
    # deployment's loopback endpoint with its own key: that is where it goes, with that key.
    monkeypatch.setenv("OPENAI_BASE_URL", f"{caller_llm.url}/v1")  # type: ignore[attr-defined]
    monkeypatch.setenv("GROQ_BASE_URL", caller_llm.url)  # type: ignore[attr-defined]
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_ENV_KEY)
    for class_path, suffix in (("langchain_openai.ChatOpenAI", "/v1"), ("langchain_groq.ChatGroq", "")):
        request = _llm(class_path, f"{llm.url}{suffix}", api_key=llm.api_key)
        outcome = invoke(api_event("POST", "/run", request))
        assert outcome.status == 200 and outcome.body["totals"]["successes"] == 2
    assert caller_llm.requests == []
    assert {r["authorization"] for r in llm.requests} == {f"Bearer {llm.api_key}"}


def test_post_runs_refuses_the_same(deployment_alquimia: Any, caller_agent: AlquimiaAgent) -> None:
    outcome = invoke(api_event("POST", "/runs", _alquimia(caller_agent.url)))  # type: ignore[attr-defined]
    assert outcome.status == 400 and outcome.body["details"][0]["loc"] == "config.api_key"
    assert caller_agent.requests == []


# ------------------------------------------------------------------------------------------------ CLI


def test_the_cli_binds_env_keys_to_its_base_url_flag_not_to_a_file(
    agent: Any, caller_agent: AlquimiaAgent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent.api_key = DEPLOYMENT_ALQUIMIA_KEY
    monkeypatch.setenv("ALQUIMIA_API_KEY", DEPLOYMENT_ALQUIMIA_KEY)
    monkeypatch.delenv("ALQUIMIA_BASE_URL", raising=False)
    request = tmp_path / "request.json"
    request.write_text(json.dumps(_alquimia(caller_agent.url)))  # type: ignore[attr-defined]
    refused = cli("run", str(request), "-q")
    assert refused.returncode == 2 and "config.api_key" in refused.stderr
    assert caller_agent.requests == []
    answered = cli("run", str(request), "-q", "--base-url", agent.url, "-o", str(tmp_path / "o.json"))
    assert answered.returncode == 0, answered.stderr
    assert {r["authorization"] for r in agent.infer_requests()} == {f"Bearer {DEPLOYMENT_ALQUIMIA_KEY}"}
    assert caller_agent.requests == []
