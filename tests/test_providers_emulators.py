"""The provider emulators: the REAL ChatBedrockConverse, ChatAnthropic and AzureChatOpenAI round-trip against
them (answer, history, system prompt in the provider's own wire format, token usage), and each injected
fault raises the SDK's own exception type."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import anthropic
import botocore.exceptions
import httpx
import openai
import pytest
from langchain_anthropic import ChatAnthropic
from langchain_aws import ChatBedrockConverse
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from fair_runners.testing import Fault
from fair_runners.testing.anthropic_api import AnthropicEmulator
from fair_runners.testing.azure_openai import AzureOpenAIEmulator
from fair_runners.testing.bedrock import BedrockEmulator

from .providers_support import (
    ANTHROPIC_KEY,
    AZURE_KEY,
    CONVERSATION,
    EXPECTED,
    INPUT_TOKENS,
    MODEL_ARN,
    OUTPUT_TOKENS,
    Served,
    _anthropic_server,
    _azure_server,
    _bedrock_server,
    _provider_env,
    azure_model,
    bedrock_model,
    claude_model,
    fresh,
    kept_bedrock_model,
)

__all__ = [
    "_anthropic_server",
    "_azure_server",
    "_bedrock_server",
    "_provider_env",
]  # fixtures from providers_support


@pytest.fixture
def bedrock(
    _bedrock_server: Served[BedrockEmulator], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[BedrockEmulator, str]]:
    """The emulator (reset) and its URL, set as `AWS_ENDPOINT_URL_BEDROCK_RUNTIME`."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", _bedrock_server.url)
    for served in fresh(_bedrock_server):
        yield served.emulator, served.url


@pytest.fixture(scope="module")
def bedrock_faulty(_bedrock_server: Served[BedrockEmulator]) -> Iterator[ChatBedrockConverse]:
    yield from kept_bedrock_model(_bedrock_server.url)


@pytest.fixture
def claude(_anthropic_server: Served[AnthropicEmulator]) -> Iterator[tuple[AnthropicEmulator, str]]:
    for served in fresh(_anthropic_server):
        yield served.emulator, served.url


@pytest.fixture
def azure(_azure_server: Served[AzureOpenAIEmulator]) -> Iterator[tuple[AzureOpenAIEmulator, str]]:
    for served in fresh(_azure_server):
        yield served.emulator, served.url


def assert_usage(reply: BaseMessage) -> None:
    assert isinstance(reply, AIMessage)
    assert reply.usage_metadata is not None
    assert reply.usage_metadata["input_tokens"] == INPUT_TOKENS
    assert reply.usage_metadata["output_tokens"] == OUTPUT_TOKENS
    assert reply.usage_metadata["total_tokens"] == INPUT_TOKENS + OUTPUT_TOKENS


# --- Bedrock ----------------------------------------------------------------------------------------------


def test_bedrock_round_trip_through_the_endpoint_env(bedrock: tuple[BedrockEmulator, str]) -> None:
    emulator, url = bedrock
    model = bedrock_model(max_tokens=64, temperature=0.2)
    assert model.client.meta.endpoint_url == url  # botocore honours AWS_ENDPOINT_URL_BEDROCK_RUNTIME
    reply = model.invoke(CONVERSATION)
    assert reply.content == EXPECTED
    assert_usage(reply)
    [sent] = emulator.requests
    assert sent["model_id"] == MODEL_ARN  # the percent-encoded ARN arrives whole
    assert sent["system"] == [{"text": "You are terse."}]
    assert sent["messages"] == [
        {"role": "user", "content": [{"text": "first question"}]},
        {"role": "assistant", "content": [{"text": "first answer"}]},
        {"role": "user", "content": [{"text": "second question"}]},
    ]
    assert sent["inference_config"] == {"maxTokens": 64, "temperature": 0.2}
    assert sent["auth_scheme"] == "AWS4-HMAC-SHA256"
    assert "Credential=AKIDEXAMPLE/" in sent["headers"]["authorization"]


def test_bedrock_endpoint_url_param_and_async(
    bedrock: tuple[BedrockEmulator, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator, url = bedrock
    monkeypatch.delenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME")
    model = bedrock_model(endpoint_url=url)
    reply = asyncio.run(model.ainvoke([HumanMessage(content="only question")]))
    assert reply.content == "echo: only question (history=0, system=no)"
    assert emulator.requests[0]["system"] == []


@pytest.mark.parametrize(
    ("code", "status", "exception_class"),
    [
        ("ThrottlingException", 429, "ThrottlingException"),
        ("ServiceUnavailableException", 503, "ServiceUnavailableException"),
        ("ModelTimeoutException", 408, "ModelTimeoutException"),
        ("InternalServerException", 500, "InternalServerException"),
        ("AccessDeniedException", 403, "AccessDeniedException"),
        ("UnrecognizedClientException", 403, "ClientError"),  # not modelled: the plain ClientError
        ("ValidationException", 400, "ValidationException"),
    ],
)
def test_bedrock_faults_raise_botocore_client_errors(
    bedrock: tuple[BedrockEmulator, str],
    bedrock_faulty: ChatBedrockConverse,
    code: str,
    status: int,
    exception_class: str,
) -> None:
    emulator, _ = bedrock
    emulator.add_fault(Fault(kind="status", text=code))
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        bedrock_faulty.invoke(CONVERSATION)
    assert type(caught.value).__name__ == exception_class
    assert caught.value.response["Error"]["Code"] == code
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert caught.value.response["Error"]["Message"] == f"injected {code}"
    assert len(emulator.requests) == 1  # max_retries=0: botocore did not retry


def test_bedrock_fault_by_status_picks_the_usual_code(
    bedrock: tuple[BedrockEmulator, str], bedrock_faulty: ChatBedrockConverse
) -> None:
    emulator, _ = bedrock
    emulator.add_fault(Fault(kind="status", status=503))
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        bedrock_faulty.invoke(CONVERSATION)
    assert caught.value.response["Error"]["Code"] == "ServiceUnavailableException"


def test_bedrock_hang_is_a_read_timeout(bedrock: tuple[BedrockEmulator, str]) -> None:
    emulator, _ = bedrock
    emulator.add_fault(Fault(kind="hang"))
    from fair_runners.runners._threaded import bedrock_client_config

    model = bedrock_model(config=bedrock_client_config(0.3, 0.3, 4), max_retries=None)
    with pytest.raises(botocore.exceptions.ReadTimeoutError):
        model.invoke(CONVERSATION)
    assert len(emulator.requests) == 1


# --- Anthropic --------------------------------------------------------------------------------------------


def test_anthropic_round_trip(claude: tuple[AnthropicEmulator, str]) -> None:
    emulator, url = claude
    reply = claude_model(url, max_tokens=128).invoke(CONVERSATION)
    assert reply.content == EXPECTED
    assert_usage(reply)
    [sent] = emulator.requests
    assert sent["path"] == "/v1/messages"
    assert sent["model"] == "claude-test"
    assert sent["max_tokens"] == 128
    assert sent["system"] == "You are terse."
    assert sent["messages"] == [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "second question"},
    ]
    # anthropic SDK 2.x sends the API key as a bearer token, with its API version.
    assert (sent["auth_header"], sent["api_key"]) == ("authorization", ANTHROPIC_KEY)
    assert sent["anthropic_version"]


@pytest.mark.parametrize("env", ["ANTHROPIC_BASE_URL", "ANTHROPIC_API_URL"])
def test_anthropic_base_url_from_env(
    claude: tuple[AnthropicEmulator, str], monkeypatch: pytest.MonkeyPatch, env: str
) -> None:
    emulator, url = claude
    monkeypatch.setenv(env, url)
    model = ChatAnthropic(model="claude-test", api_key=ANTHROPIC_KEY, max_retries=0)
    assert model.anthropic_api_url == url
    assert model.invoke("hello").content == "echo: hello (history=0, system=no)"
    assert len(emulator.requests) == 1


def test_anthropic_async_and_x_api_key(claude: tuple[AnthropicEmulator, str]) -> None:
    emulator, url = claude

    async def both() -> list[BaseMessage]:  # one loop: ChatAnthropic caches its async client per process
        model = claude_model(url)
        return list(await asyncio.gather(model.ainvoke(CONVERSATION), model.ainvoke("other")))

    first, second = asyncio.run(both())
    assert (first.content, second.content) == (EXPECTED, "echo: other (history=0, system=no)")
    assert_usage(first)
    # The raw SDK with an `x-api-key` header, as the API documents it: rate-limit headers come back.
    client = anthropic.Anthropic(
        base_url=url, api_key=None, default_headers={"x-api-key": ANTHROPIC_KEY}, max_retries=0
    )
    raw = client.messages.with_raw_response.create(
        model="claude-test",
        max_tokens=16,
        system=[{"type": "text", "text": "sys"}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    )
    client.close()
    assert raw.parse().content[0].text == "echo: hi (history=0, system=yes)"  # type: ignore[union-attr]
    assert emulator.requests[-1]["auth_header"] == "x-api-key"
    assert int(raw.headers["anthropic-ratelimit-requests-limit"]) >= int(
        raw.headers["anthropic-ratelimit-requests-remaining"]
    )
    assert raw.headers["anthropic-ratelimit-tokens-reset"].endswith("Z")
    assert raw.headers["request-id"].startswith("req_")


@pytest.mark.parametrize(
    ("fault", "sdk_class", "status"),
    [
        (Fault(kind="status", status=429, retry_after=7), anthropic.RateLimitError, 429),
        (Fault(kind="status", status=529), anthropic.OverloadedError, 529),
        (Fault(kind="status", status=500), anthropic.InternalServerError, 500),
        (Fault(kind="status", status=401), anthropic.AuthenticationError, 401),
        (Fault(kind="status", status=403), anthropic.PermissionDeniedError, 403),
    ],
)
def test_anthropic_faults_raise_sdk_errors(
    claude: tuple[AnthropicEmulator, str], fault: Fault, sdk_class: type[Exception], status: int
) -> None:
    emulator, url = claude
    emulator.add_fault(fault)
    with pytest.raises(sdk_class) as caught:
        claude_model(url).invoke(CONVERSATION)
    error = caught.value
    assert isinstance(error, anthropic.APIStatusError) and error.status_code == status
    assert type(error).__module__ == "langchain_anthropic.chat_models"  # LangChain's subclass of it
    if status == 429:
        assert error.response.headers["retry-after"] == "7"
    assert len(emulator.requests) == 1


def test_anthropic_wrong_key_and_hang(claude: tuple[AnthropicEmulator, str]) -> None:
    emulator, url = claude
    with pytest.raises(anthropic.AuthenticationError):
        ChatAnthropic(model="claude-test", base_url=url, api_key="wrong", max_retries=0).invoke("hi")
    emulator.add_fault(Fault(kind="hang"))
    with pytest.raises(anthropic.APITimeoutError):
        claude_model(url, timeout=0.3).invoke("hi")


# --- Azure OpenAI -----------------------------------------------------------------------------------------


def test_azure_round_trip(azure: tuple[AzureOpenAIEmulator, str]) -> None:
    emulator, url = azure
    reply = azure_model(url, include_response_headers=True).invoke(CONVERSATION)
    assert reply.content == EXPECTED
    assert_usage(reply)
    headers = reply.response_metadata["headers"]
    assert int(headers["x-ratelimit-remaining-requests"]) < int(headers["x-ratelimit-limit-requests"])
    assert int(headers["x-ratelimit-remaining-tokens"]) < int(headers["x-ratelimit-limit-tokens"])
    [sent] = emulator.requests
    assert sent["path"] == "/openai/deployments/gpt-4o-dep/chat/completions"
    assert (sent["deployment"], sent["api_version"]) == ("gpt-4o-dep", "2024-10-21")
    assert (sent["auth"], sent["key"]) == ("api-key", AZURE_KEY)
    assert sent["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "second question"},
    ]


def test_azure_ad_token_and_async(azure: tuple[AzureOpenAIEmulator, str]) -> None:
    emulator, url = azure

    async def ask() -> BaseMessage:  # with a client of this loop, as the LLM runner does
        async with httpx.AsyncClient(trust_env=False) as http:
            model = azure_model(url, api_key=None, azure_ad_token=AZURE_KEY, http_async_client=http)
            return await model.ainvoke("hello")

    assert asyncio.run(ask()).content == "echo: hello (history=0, system=no)"
    assert (emulator.requests[0]["auth"], emulator.requests[0]["key"]) == ("bearer", AZURE_KEY)
    assert "api-key" not in emulator.requests[0]["headers"]


@pytest.mark.parametrize(
    ("fault", "sdk_class", "status"),
    [
        (Fault(kind="status", status=429, retry_after=2), openai.RateLimitError, 429),
        (Fault(kind="status", status=503), openai.InternalServerError, 503),
        (Fault(kind="status", status=500), openai.InternalServerError, 500),
        (Fault(kind="status", status=401), openai.AuthenticationError, 401),
    ],
)
def test_azure_faults_raise_sdk_errors(
    azure: tuple[AzureOpenAIEmulator, str], fault: Fault, sdk_class: type[Exception], status: int
) -> None:
    emulator, url = azure
    emulator.add_fault(fault)
    with pytest.raises(sdk_class) as caught:
        azure_model(url).invoke(CONVERSATION)
    error = caught.value
    assert isinstance(error, openai.APIStatusError) and error.status_code == status
    if status == 429:
        assert error.response.headers["retry-after"] == "2"
        assert error.response.headers["retry-after-ms"] == "2000"
    assert len(emulator.requests) == 1


def test_azure_wrong_key_and_hang(azure: tuple[AzureOpenAIEmulator, str]) -> None:
    emulator, url = azure
    with pytest.raises(openai.AuthenticationError):
        azure_model(url, api_key="wrong").invoke("hi")
    emulator.add_fault(Fault(kind="hang"))
    with pytest.raises(openai.APITimeoutError):
        azure_model(url, timeout=0.3).invoke("hi")
