"""The LLM runner: the real ChatOpenAI and ChatGroq talking to the loopback OpenAI-compatible server."""

from __future__ import annotations

from typing import Any

import pytest

from fair_runners import run_sync
from fair_runners.testing import Fault

from .conftest import LLM_KEY, llm_request, make_datasets
from .helpers import turns

PROVIDERS = ["openai", "groq"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_history_on_sends_earlier_turns_in_order(llm: Any, provider: str) -> None:
    result = run_sync(llm_request(llm, make_datasets(sessions=3, turns=4), provider=provider))
    assert result.complete and result.totals.successes == 12
    for dataset in result.datasets:
        sid = dataset.session_id
        assert [b.assistant for b in dataset.conversation] == [
            f"echo: question {j} of {sid} (history={j}, system=no)" for j in range(4)
        ]
    last = next(r for r in llm.requests if r["query"] == "question 3 of s2")
    assert [(m["role"], m["content"]) for m in last["messages"]] == [
        ("user", "question 0 of s2"),
        ("assistant", "echo: question 0 of s2 (history=0, system=no)"),
        ("user", "question 1 of s2"),
        ("assistant", "echo: question 1 of s2 (history=1, system=no)"),
        ("user", "question 2 of s2"),
        ("assistant", "echo: question 2 of s2 (history=2, system=no)"),
        ("user", "question 3 of s2"),
    ]
    assert {r["model"] for r in llm.requests} == {"test-model"}
    assert {r["authorization"] for r in llm.requests} == {f"Bearer {LLM_KEY}"}
    expected_path = "/v1/chat/completions" if provider == "openai" else "/openai/v1/chat/completions"
    assert {r["path"] for r in llm.requests} == {expected_path}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_history_off_sends_each_turn_alone(llm: Any, provider: str) -> None:
    request = llm_request(llm, make_datasets(sessions=2, turns=3), provider=provider, history=False)
    result = run_sync(request)
    answers = [b.assistant for b in result.datasets[0].conversation]
    assert answers == [f"echo: question {j} of s0 (history=0, system=no)" for j in range(3)]
    assert all(len(r["messages"]) == 1 for r in llm.requests)


def test_context_is_the_system_message(llm: Any) -> None:
    datasets = make_datasets(sessions=1, turns=2, context="You are terse.")
    result = run_sync(llm_request(llm, datasets))
    assert result.datasets[0].conversation[1].assistant == "echo: question 1 of s0 (history=1, system=yes)"
    for sent in llm.requests:
        assert sent["messages"][0] == {"role": "system", "content": "You are terse."}


def test_token_usage_is_recorded_per_turn_and_summed(llm: Any) -> None:
    result = run_sync(llm_request(llm, make_datasets(sessions=2, turns=2))).model_dump()
    for summary in result["summaries"]:
        for record in summary["turns"]:
            assert record["input_tokens"] > 0 and record["output_tokens"] > 0
        assert summary["input_tokens"] == sum(t["input_tokens"] for t in summary["turns"])
        assert summary["output_tokens"] == sum(t["output_tokens"] for t in summary["turns"])
    # "echo: question 0 of s0 (history=0, system=no)" is 7 words; the server counts words as tokens.
    assert result["summaries"][0]["turns"][0]["output_tokens"] == 7
    assert result["summaries"][0]["turns"][0]["input_tokens"] == 4  # "question 0 of s0"
    totals = result["totals"]
    assert totals["input_tokens"] == sum(s["input_tokens"] for s in result["summaries"])


@pytest.mark.parametrize("provider", PROVIDERS)
def test_provider_retries_are_off_engine_owns_them(llm: Any, provider: str) -> None:
    llm.add_fault(Fault("status", status=503, query="question 1 of s0", times=None))
    request = llm_request(llm, make_datasets(sessions=2, turns=3), provider=provider, max_attempts=2)
    result = run_sync(request)
    # Exactly max_attempts requests: the SDK's own retries would have added more.
    assert [r["query"] for r in llm.requests].count("question 1 of s0") == 2
    record = turns(result.model_dump(), 0)[1]
    assert record["status"] == "error" and record["attempts"] == 2 and record["error_type"] == "transient"
    assert "503" in result.datasets[0].conversation[1].assistant


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_failing_turn_leaves_the_others_alone(llm: Any, provider: str) -> None:
    llm.add_fault(Fault("status", status=400, query="question 1 of s0"))
    result = run_sync(llm_request(llm, make_datasets(sessions=2, turns=3), provider=provider))
    assert result.complete
    assert [t["status"] for t in turns(result.model_dump(), 0)] == ["ok", "error", "ok"]
    assert [t["status"] for t in turns(result.model_dump(), 1)] == ["ok", "ok", "ok"]
    assert turns(result.model_dump(), 0)[1]["error_type"] == "permanent"
    assert [r["query"] for r in llm.requests].count("question 1 of s0") == 1  # a 400 is not retried
    # The failed turn is left out of the history of the next one.
    assert result.datasets[0].conversation[2].assistant == "echo: question 2 of s0 (history=1, system=no)"
    assert result.datasets[1].conversation[2].assistant == "echo: question 2 of s1 (history=2, system=no)"


def test_empty_model_answer_is_a_turn_failure(llm: Any) -> None:
    llm.add_fault(Fault("empty", query="question 0 of s0"))
    result = run_sync(llm_request(llm, make_datasets(sessions=1, turns=2)))
    record = turns(result.model_dump(), 0)[0]
    assert record["status"] == "error" and record["error_type"] == "empty_answer"
    assert result.datasets[0].conversation[1].assistant.startswith("echo: question 1")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_provider_sync_client_sends_nothing(llm: Any, provider: str) -> None:
    # The runner only awaits the async API; the SDK's sync client would not pass the network guard, so the
    # one it gets refuses every request.
    import asyncio

    import httpx
    from langchain_core.messages import HumanMessage
    from langchain_groq import ChatGroq
    from langchain_openai import ChatOpenAI

    from fair_runners.runners.llm import LLMRunner

    model_class, base_url = (ChatOpenAI, f"{llm.url}/v1") if provider == "openai" else (ChatGroq, llm.url)
    params = {"model": "m", "api_key": LLM_KEY, "base_url": base_url}

    async def scenario() -> str:
        async with LLMRunner(model_class, params, timeout=httpx.Timeout(5)) as runner:
            assert runner.model is not None
            with pytest.raises(Exception):  # noqa: B017 - ours, or the SDK's wrapper of it ("Connection error.")
                runner.model.invoke([HumanMessage(content="sync question")])
            reply = await runner.model.ainvoke([HumanMessage(content="async question")])
            return str(reply.content)

    assert asyncio.run(scenario()).startswith("echo: async question")
    assert [r["query"] for r in llm.requests] == ["async question"]


def test_the_ca_bundle_is_loaded_once_per_process(llm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Loading the CA bundle costs ~20 ms; it used to happen twice per LLM run (our client and the SDK's
    # sync one). httpx loads it whenever `create_ssl_context` gets no ready-made context.
    import ssl

    import httpx
    from httpx._transports import default as httpx_default

    from fair_runners.runners import _http

    _http._tls_context.cache_clear()
    loads: list[object] = []
    original = httpx.create_ssl_context

    def counting(verify: Any = True, *args: Any, **kwargs: Any) -> ssl.SSLContext:
        if not isinstance(verify, ssl.SSLContext):
            loads.append(verify)
        return original(verify, *args, **kwargs)

    monkeypatch.setattr(httpx, "create_ssl_context", counting)
    monkeypatch.setattr(httpx_default, "create_ssl_context", counting)
    for provider in PROVIDERS:
        for _ in range(2):
            assert run_sync(llm_request(llm, make_datasets(sessions=1, turns=1), provider=provider)).complete
    assert len(loads) == 1


def _turn(query: str, history: list[tuple[str, str]] | None = None) -> Any:
    from fair_runners._schemas import Batch
    from fair_runners.runners._base import TurnInput

    return TurnInput(
        session_id="s0", context="", batch=Batch(qa_id="q", query=query), history=tuple(history or ())
    )


@pytest.mark.parametrize("provider", PROVIDERS)
def test_every_turn_goes_through_the_models_public_ainvoke(llm: Any, provider: str) -> None:
    # A LangChain user's callbacks, tracers and rate limiters hook into `ainvoke`: a handler configured in the
    # context sees every turn, with the messages the server received.
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.tracers.context import register_configure_hook

    seen: list[int] = []

    class Counter(BaseCallbackHandler):
        def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
            seen.append(len(messages[0]))

    import contextvars

    handler_var: contextvars.ContextVar[Counter | None] = contextvars.ContextVar("counter", default=None)
    register_configure_hook(handler_var, inheritable=True)
    handler_var.set(Counter())
    try:
        result = run_sync(llm_request(llm, make_datasets(sessions=2, turns=2), provider=provider))
    finally:
        handler_var.set(None)
    assert result.totals.successes == 4
    assert sorted(seen) == sorted(len(r["messages"]) for r in llm.requests) == [1, 1, 3, 3]
