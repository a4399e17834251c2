"""Bedrock, Anthropic and Azure OpenAI end to end through `lambda_handler`, against their loopback emulators:
answers, history and system prompt in each provider's own format, token usage, faults classified (throttling,
5xx, 529, hangs, bad credentials that stop the backend), the `provider:model` spelling, refused endpoints,
and real concurrency for the sync-backed Bedrock model."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fair_runners.testing import (
    AnthropicEmulator,
    AzureOpenAIEmulator,
    BedrockEmulator,
    Fault,
    LoopbackServer,
)

from .conftest import FakeLambdaContext, _allow, make_datasets
from .helpers import api_event
from .providers_support import ANTHROPIC_KEY, AZURE_KEY, provider_env
from .security_support import invoke

MODEL = "anthropic.claude-3-5-haiku-20241022-v1:0"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    provider_env(monkeypatch, tmp_path)


@pytest.fixture
def bedrock(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[BedrockEmulator]:
    emulator = BedrockEmulator()
    with LoopbackServer(emulator.app) as server:
        monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", server.url)  # the deployer's override
        yield emulator
        emulator.reset()


@pytest.fixture
def anthropic(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[AnthropicEmulator]:
    emulator = AnthropicEmulator()
    with LoopbackServer(emulator.app) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)  # the deployer's endpoint
        yield emulator
        emulator.reset()


@pytest.fixture
def azure(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[AzureOpenAIEmulator]:
    emulator = AzureOpenAIEmulator()
    with LoopbackServer(emulator.app) as server:
        _allow(monkeypatch, server)
        emulator.url = server.url  # type: ignore[attr-defined]
        yield emulator
        emulator.reset()


def _request(connector: dict[str, Any], sessions: int = 2, turns: int = 2, **options: Any) -> dict[str, Any]:
    datasets = make_datasets(sessions, turns, context="You are terse.")
    return {"datasets": datasets, "connector": connector, "options": {"max_attempts": 2, **options}}


def _bedrock(**params: Any) -> dict[str, Any]:
    return {"model": f"bedrock_converse:{MODEL}", "params": {"region_name": "us-east-1", **params}}


def _anthropic(**params: Any) -> dict[str, Any]:
    return {"class_path": "langchain_anthropic.ChatAnthropic", "params": {"model": "claude-x", **params}}


def _azure(emulator: Any, **params: Any) -> dict[str, Any]:
    base = {
        "azure_endpoint": emulator.url,
        "azure_deployment": "gpt-4o-mini",
        "api_version": "2024-10-21",
        "api_key": AZURE_KEY,
    }
    return {"class_path": "langchain_openai.AzureChatOpenAI", "params": {**base, **params}}


def _answers(body: dict[str, Any]) -> list[list[str]]:
    return [[turn["assistant"] for turn in d["conversation"]] for d in body["datasets"]]


def _expected(sessions: int, turns: int) -> list[list[str]]:
    return [
        [f"echo: question {j} of s{i} (history={j}, system=yes)" for j in range(turns)]
        for i in range(sessions)
    ]


# ------------------------------------------------------------------------------------------- answers


def test_bedrock_runs_on_the_lambda_roles_credentials(bedrock: BedrockEmulator) -> None:
    for connector in (
        _bedrock(),
        {"class_path": "langchain_aws.ChatBedrockConverse", "params": {"model": MODEL}},
    ):
        bedrock.reset()
        outcome = invoke(api_event("POST", "/run", _request(connector)))
        assert outcome.status == 200, outcome.body
        assert _answers(outcome.body) == _expected(2, 2)
        last = next(
            r for r in bedrock.requests if r["messages"][-1]["content"][0]["text"] == "question 1 of s0"
        )
        assert last["model_id"] == MODEL
        assert last["system"] == [{"text": "You are terse."}]
        assert [m["role"] for m in last["messages"]] == ["user", "assistant", "user"]
        assert {r["auth_scheme"] for r in bedrock.requests} == {"AWS4-HMAC-SHA256"}  # SigV4: the role's
        assert outcome.body["totals"]["input_tokens"] > 0 and outcome.body["totals"]["output_tokens"] > 0


def test_anthropic_runs_with_the_deployment_key_and_endpoint(
    anthropic: AnthropicEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
    for _ in range(2):  # a warm Lambda's next invocation (a new event loop) works as the first did
        anthropic.reset()
        outcome = invoke(api_event("POST", "/run", _request(_anthropic())))
        assert outcome.status == 200, outcome.body
        assert _answers(outcome.body) == _expected(2, 2)
        assert {r["api_key"] for r in anthropic.requests} == {ANTHROPIC_KEY}
        sent = anthropic.requests[-1]
        assert sent["system"] in ("You are terse.", [{"type": "text", "text": "You are terse."}])
        assert outcome.body["totals"]["input_tokens"] > 0


def test_azure_runs_at_the_requests_endpoint_with_its_key(azure: AzureOpenAIEmulator) -> None:
    outcome = invoke(api_event("POST", "/run", _request(_azure(azure))))
    assert outcome.status == 200, outcome.body
    assert _answers(outcome.body) == _expected(2, 2)
    assert {r["deployment"] for r in azure.requests} == {"gpt-4o-mini"}
    assert {r["api_version"] for r in azure.requests} == {"2024-10-21"}
    assert outcome.body["totals"]["output_tokens"] > 0


# --------------------------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("status", "text", "error_type"),
    [(429, None, "rate_limited"), (503, None, "transient"), (500, None, "transient"), (408, None, "timeout")],
)
def test_bedrock_faults_are_classified_and_retried(
    bedrock: BedrockEmulator, status: int, text: str | None, error_type: str
) -> None:
    bedrock.add_fault(Fault("status", status=status, query="question 0 of s0", times=5))
    body = invoke(api_event("POST", "/run", _request(_bedrock(), sessions=1, turns=1))).body
    record = body["summaries"][0]["turns"][0]
    assert record["error_type"] == error_type and record["attempts"] == 2


@pytest.mark.parametrize("code", ["AccessDeniedException", "UnrecognizedClientException"])
def test_bad_aws_credentials_stop_the_backend(bedrock: BedrockEmulator, code: str) -> None:
    bedrock.add_fault(Fault("status", status=403, text=code, times=None))
    body = invoke(
        api_event("POST", "/run", _request(_bedrock(), sessions=3, turns=2, max_concurrency=1))
    ).body
    errors = [t["error_type"] for s in body["summaries"] for t in s["turns"]]
    assert errors == ["authentication"] * 6
    assert len(bedrock.requests) == 1  # the first 403 stopped every other turn


@pytest.mark.parametrize(
    ("status", "text", "error_type"),
    [(429, None, "rate_limited"), (529, "overloaded_error", "transient"), (500, None, "transient")],
)
def test_anthropic_faults_are_classified(
    anthropic: AnthropicEmulator,
    monkeypatch: pytest.MonkeyPatch,
    status: int,
    text: str | None,
    error_type: str,
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
    anthropic.add_fault(Fault("status", status=status, text=text or "", query="question 0", times=5))
    body = invoke(api_event("POST", "/run", _request(_anthropic(), sessions=1, turns=1))).body
    record = body["summaries"][0]["turns"][0]
    assert record["error_type"] == error_type and record["attempts"] == 2


def test_a_bad_anthropic_key_stops_the_backend(anthropic: AnthropicEmulator) -> None:
    body = invoke(
        api_event(
            "POST", "/run", _request(_anthropic(api_key="wrong-key-0000"), sessions=2, max_concurrency=1)
        )
    ).body
    assert {t["error_type"] for s in body["summaries"] for t in s["turns"]} == {"authentication"}
    assert len(anthropic.requests) == 1


@pytest.mark.parametrize("provider", ["bedrock", "anthropic", "azure"])
def test_a_hang_times_out(
    request: pytest.FixtureRequest, provider: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator = request.getfixturevalue(provider)
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
    emulator.add_fault(Fault("hang", query="question 0 of s0", times=None))
    connector = {"bedrock": _bedrock, "anthropic": _anthropic}.get(provider, lambda: _azure(emulator))()
    started = time.monotonic()
    body = invoke(api_event("POST", "/run", _request(connector, sessions=1, turns=1, turn_timeout_s=1))).body
    assert body["summaries"][0]["turns"][0]["error_type"] == "timeout"
    assert time.monotonic() - started < 2 * 1 + 2  # two attempts of 1 s, and the run does not wait on threads


def test_azure_faults_are_classified(azure: AzureOpenAIEmulator) -> None:
    azure.add_fault(Fault("status", status=429, retry_after=0.1, query="question 0 of s0", times=5))
    azure.add_fault(Fault("status", status=401, query="question 0 of s1", times=5))
    body = invoke(
        api_event("POST", "/run", _request(_azure(azure), sessions=2, turns=1, max_concurrency=1))
    ).body
    errors = [s["turns"][0]["error_type"] for s in body["summaries"]]
    assert errors == ["rate_limited", "authentication"]


# ----------------------------------------------------------------------------- endpoints and keys


@pytest.mark.parametrize(
    ("connector", "loc"),
    [
        (_bedrock(endpoint_url="https://attacker.test"), "connector.params.endpoint_url"),
        (_bedrock(base_url="https://attacker.test"), "connector.params.base_url"),
        (_bedrock(aws_secret_access_key="x"), "connector.params.aws_secret_access_key"),
        (_anthropic(base_url="https://attacker.test"), "connector.params.base_url"),
        (_anthropic(anthropic_api_url="https://attacker.test"), "connector.params.anthropic_api_url"),
        (_anthropic(mcp_servers=[]), "connector.params.mcp_servers"),
        (
            {
                "class_path": "langchain_openai.AzureChatOpenAI",
                "params": {"base_url": "https://attacker.test"},
            },
            "connector.params.base_url",
        ),
        (
            {"class_path": "langchain_openai.AzureChatOpenAI", "params": {"azure_ad_token_provider": "x"}},
            "connector.params.azure_ad_token_provider",
        ),
        (
            {"class_path": "langchain_openai.AzureChatOpenAI", "params": {"azure_deployment": "../x"}},
            "connector.params.azure_deployment",
        ),
        ({"model": "bedrock_converse:x", "params": {"model": "y"}}, "connector"),
        ({"model": "evil:x"}, "connector.model"),
        ({"model": "openai"}, "connector.model"),
        ({"model": "openai:gpt", "class_path": "langchain_openai.ChatOpenAI"}, "connector"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_endpoints_and_credentials_never_come_from_a_request(
    bedrock: BedrockEmulator, connector: dict[str, Any], loc: str
) -> None:
    outcome = invoke(api_event("POST", "/run", _request(connector)))
    assert outcome.status == 400, outcome.body
    assert any(str(d["loc"]).startswith(loc) for d in outcome.body["details"]), outcome.body
    assert bedrock.requests == []


def test_azure_env_keys_never_follow_a_callers_endpoint(
    azure: AzureOpenAIEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # AzureChatOpenAI reads AZURE_OPENAI_API_KEY (or OPENAI_API_KEY) by itself: a request naming its own
    # endpoint without a key is refused, and nothing reaches that endpoint.
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "sk-deployment-azure-key-123")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-deployment-openai-key-456")
    connector = _azure(azure)
    del connector["params"]["api_key"]
    outcome = invoke(api_event("POST", "/run", _request(connector)))
    assert outcome.status == 400 and outcome.body["details"][0]["loc"] == "connector.params.api_key"
    assert azure.requests == []
    # The deployment's own Azure endpoint gets the deployment's key.
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", azure.url)  # type: ignore[attr-defined]
    del connector["params"]["azure_endpoint"]
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", AZURE_KEY)
    outcome = invoke(api_event("POST", "/run", _request(connector)))
    assert outcome.status == 200 and outcome.body["totals"]["successes"] == 4
    assert {r["key"] for r in azure.requests} == {AZURE_KEY}


# -------------------------------------------------------------------------------------- concurrency


def test_bedrock_sessions_in_flight_are_really_in_flight(bedrock: BedrockEmulator) -> None:
    from handler.app import lambda_handler

    bedrock.latency_s = 0.5
    request = _request(_bedrock(), sessions=32, turns=1, max_concurrency=32)
    lambda_handler(request, FakeLambdaContext())  # warm: the clients are built once per process
    bedrock.reset()
    bedrock.latency_s = 0.5
    started = time.monotonic()
    result = lambda_handler(request, FakeLambdaContext())
    elapsed = time.monotonic() - started
    assert result["totals"]["successes"] == 32
    assert bedrock.peak_in_flight == 32  # the loop's default executor would have allowed ~5
    assert elapsed < 2.0, elapsed  # one round of 0.5 s (the benchmark measures the 1.3x figure)


def _first_run_sends_at_once(emulator: Any, connector: dict[str, Any]) -> None:
    """A process's first run against a provider whose headers the runner never sees: no probe holding
    the other sessions back for one latency (it could learn nothing), every session's call at once."""
    from fair_runners.engine._pacing import forget
    from handler.app import lambda_handler

    forget()  # nothing learned of any provider yet: the pacer would probe a provider that sends headers
    emulator.latency_s = 0.5
    result = lambda_handler(_request(connector, sessions=8, turns=1, max_concurrency=8), FakeLambdaContext())
    assert result["totals"]["successes"] == 8
    assert emulator.peak_in_flight == 8  # with a probe: 1, then the other 7


def test_bedrock_is_not_probed(bedrock: BedrockEmulator) -> None:
    _first_run_sends_at_once(bedrock, _bedrock())


def test_anthropic_is_not_probed(anthropic: AnthropicEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
    _first_run_sends_at_once(anthropic, _anthropic())
