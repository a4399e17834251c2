"""Secret-leak paths: keys from the payload or env never reach a response, an error, a log line or a metric,
even when a backend echoes them or an exception's text carries them. Every test here runs under
`leak_scan`, which captures all log output (at DEBUG) and stdout (metrics) and scans it for the keys."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fair_runners import InvalidRequest, TransientBackendError
from fair_runners._redact import REDACTED, Redactor
from fair_runners.testing import AlquimiaAgent, Fault, OpenAICompatServer

from .conftest import ALQUIMIA_KEY, LLM_KEY, alquimia_request, llm_request, make_datasets
from .security_support import (
    ENV_KEY,
    EXTRA_KEY,
    LeakScan,
    assert_clean,
    event_for,
    invoke,
    leak_scan,
)

pytestmark = pytest.mark.usefixtures("leak_scan")
__all__ = ["leak_scan"]


@pytest.mark.parametrize("status", [400, 403, 500])
@pytest.mark.parametrize("phase", ["infer", "stream"])
@pytest.mark.parametrize("shape", ["http_v2", "direct"])
def test_alquimia_backend_echoing_the_key(status: int, phase: str, shape: str, agent: AlquimiaAgent) -> None:
    agent.add_fault(Fault("echo", status=status, phase=phase, times=None))  # type: ignore[arg-type]
    outcome = invoke(event_for(shape, alquimia_request(agent, make_datasets(2, 2), max_attempts=2)))
    assert outcome.status == 200
    assert {t["status"] for s in outcome.body["summaries"] for t in s["turns"]} == {"error"}
    sent = [r for r in agent.requests if r["step"] == "infer"]
    assert sent and sent[0]["authorization"] == f"Bearer {ALQUIMIA_KEY}"  # the key was really echoed
    assert_clean(outcome.raw)


@pytest.mark.parametrize("status", [400, 401, 500])
@pytest.mark.parametrize("provider", ["openai", "groq"])
def test_llm_backend_echoing_the_key(status: int, provider: str, llm: OpenAICompatServer) -> None:
    llm.add_fault(Fault("echo", status=status, times=None))
    outcome = invoke(
        event_for("http_v2", llm_request(llm, make_datasets(1, 2), provider=provider, max_attempts=2))
    )
    assert outcome.status == 200
    assert outcome.body["summaries"][0]["failures"] == 2
    assert "***" in outcome.body["datasets"][0]["conversation"][0]["assistant"]
    assert_clean(outcome.raw)


def test_alquimia_answer_echoing_the_key_is_masked(agent: AlquimiaAgent) -> None:
    agent.add_fault(Fault("echo_answer", times=None))
    outcome = invoke(event_for("function_url", alquimia_request(agent, make_datasets(1, 1))))
    answer = outcome.body["datasets"][0]["conversation"][0]["assistant"]
    assert f"[auth: Bearer {REDACTED}]" in answer
    assert_clean(outcome.raw)


@pytest.mark.parametrize("provider", ["openai", "groq"])
def test_llm_answer_echoing_the_key_is_masked(provider: str, llm: OpenAICompatServer) -> None:
    llm.add_fault(Fault("echo_answer", times=None))
    outcome = invoke(event_for("map_batch", llm_request(llm, make_datasets(1, 1), provider=provider)))
    assert REDACTED in outcome.body["datasets"][0]["conversation"][0]["assistant"]
    assert_clean(outcome.raw)


@pytest.mark.parametrize("env_name", ["LLM_API_KEY", "OPENAI_API_KEY"])
def test_env_key_echoed_by_the_backend(
    env_name: str, llm: OpenAICompatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(env_name, ENV_KEY)
    llm.api_key = ENV_KEY
    request = llm_request(llm, make_datasets(1, 2))
    if env_name == "LLM_API_KEY":  # the deployment's key, bound to the deployment's endpoint
        monkeypatch.setenv("LLM_BASE_URL", f"{llm.url}/v1")  # type: ignore[attr-defined]
        del request["connector"]["params"]["api_key"]
    else:  # a provider's own variable only goes to its built-in endpoint: the caller brings the same value
        request["connector"]["params"]["api_key"] = ENV_KEY
    llm.add_fault(Fault("echo", status=400, query="question 0"), Fault("echo_answer", query="question 1"))
    outcome = invoke(event_for("rest_v1", request))
    assert outcome.body["summaries"][0]["successes"] == 1
    assert llm.requests[0]["authorization"] == f"Bearer {ENV_KEY}"
    assert_clean(outcome.raw)


def test_alquimia_env_key_echoed(agent: AlquimiaAgent, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALQUIMIA_API_KEY", ENV_KEY)
    monkeypatch.setenv("ALQUIMIA_BASE_URL", agent.url)  # type: ignore[attr-defined]
    agent.api_key = ENV_KEY
    request = alquimia_request(agent, make_datasets(1, 2))
    del request["config"]["api_key"]
    agent.add_fault(Fault("echo", status=422, query="question 0"), Fault("echo_answer", query="question 1"))
    outcome = invoke(event_for("http_v2", request))
    assert outcome.body["summaries"][0]["successes"] == 1
    assert_clean(outcome.raw)


def test_key_with_json_special_characters(agent: AlquimiaAgent) -> None:
    agent.api_key = EXTRA_KEY
    request = alquimia_request(agent, make_datasets(1, 2))
    request["config"]["api_key"] = EXTRA_KEY
    agent.add_fault(Fault("echo", status=400, query="question 0"), Fault("echo_answer", query="question 1"))
    outcome = invoke(event_for("http_v2", request))
    assert outcome.body["summaries"][0]["successes"] == 1
    assert_clean(outcome.raw)


def test_exception_text_carrying_the_key(agent: AlquimiaAgent, monkeypatch: pytest.MonkeyPatch) -> None:
    from fair_runners.runners.alquimia import AlquimiaRunner

    calls = {"n": 0}

    async def leaky(self: Any, turn: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise TransientBackendError(f"upstream said: Authorization: Bearer {ALQUIMIA_KEY}")
        raise RuntimeError(f"crashed while holding {ALQUIMIA_KEY} and {ALQUIMIA_KEY[:9]}")

    monkeypatch.setattr(AlquimiaRunner, "run_turn", leaky)
    outcome = invoke(event_for("http_v2", alquimia_request(agent, make_datasets(1, 1), max_attempts=2)))
    assert outcome.status == 200 and calls["n"] == 2
    assert_clean(outcome.raw)


def test_internal_error_with_the_key_in_its_text(
    agent: AlquimiaAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"bug: token={ALQUIMIA_KEY}")

    from fair_runners.edge import _invocation

    monkeypatch.setattr(_invocation, "execute", broken)
    outcome = invoke(event_for("http_v2", alquimia_request(agent, make_datasets(1, 1))))
    assert outcome.status == 500
    assert outcome.body["error"].startswith("internal error (request id")
    assert_clean(outcome.raw)


@pytest.mark.parametrize("shape", ["http_v2", "direct"])
def test_invalid_request_carrying_the_key(
    shape: str, llm: OpenAICompatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fair_runners import _connectors

    def refuse(spec: Any) -> Any:
        raise InvalidRequest(f"bad model for key {LLM_KEY}", [{"loc": "connector", "msg": f"key {LLM_KEY}"}])

    monkeypatch.setattr(_connectors, "load_chat_model_class", refuse)
    outcome = invoke(event_for(shape, llm_request(llm, make_datasets(1, 1))))
    assert outcome.status == 400
    assert_clean(outcome.raw, outcome.body or "", str(outcome.error or ""))
    if outcome.error is not None:
        assert_clean(outcome.error.message, outcome.error.details, outcome.error.args)


def test_refusals_never_echo_the_key(agent: AlquimiaAgent, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAIR_RUNNERS_ALLOWED_HOSTS")
    for url in (
        f"https://{ALQUIMIA_KEY}.test",
        f"https://x:{ALQUIMIA_KEY}@public.test",
        f"http://{ALQUIMIA_KEY}",
    ):
        request = alquimia_request(agent, make_datasets(1, 1))
        request["config"]["base_url"] = url
        outcome = invoke(event_for("http_v2", request))
        assert outcome.status == 400
        assert_clean(outcome.raw)


def test_metrics_and_logs_were_scanned(agent: AlquimiaAgent, leak_scan: LeakScan) -> None:
    """The scan sees the Powertools log lines and the metrics (so a leak there would be caught)."""
    agent.add_fault(Fault("echo", status=400))
    invoke(event_for("http_v2", alquimia_request(agent, make_datasets(1, 1))))
    text = leak_scan.text()
    assert '"run finished"' in text and "TurnsFailed" in text
    assert_clean(text)


# ------------------------------------------------------------------------------------------ the redactor


def test_redactor_masks_truncated_and_escaped_secrets() -> None:
    redactor = Redactor([ALQUIMIA_KEY, EXTRA_KEY])
    assert redactor.redact(f"body: ...Bearer {ALQUIMIA_KEY[:8]}") == "body: ...Bearer ***"
    assert redactor.redact(f"{ALQUIMIA_KEY[-7:]} and more") == "*** and more"
    assert REDACTED in redactor.redact(json.dumps({"k": EXTRA_KEY}))
    assert_clean(redactor.redact(json.dumps({"k": EXTRA_KEY})))
    assert redactor.redact_obj({ALQUIMIA_KEY: [ALQUIMIA_KEY, 1]}) == {REDACTED: [REDACTED, 1]}


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer abcdefghijklmnop",
        '{"api_key": "zzzzzzzzzzzz"}',
        "x-api-key=qwertyuiopasdf",
        "sk-proj-abcdefghijklmnopqrstu",
        "gsk_abcdefghijklmnopqrstuvwxyz",
    ],
)
def test_redactor_masks_credential_shapes_it_was_never_told(text: str) -> None:
    assert REDACTED in Redactor().redact(text)
