"""Helpers shared by the provider tests (Bedrock, Anthropic, Azure OpenAI): a clean provider env, serving an
emulator, and model builders whose HTTP clients are closed after each test. The fixtures at the end (the
autouse clean env, one module-scoped server per emulator) apply to a test module that imports them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest
from langchain_anthropic import ChatAnthropic
from langchain_aws import ChatBedrockConverse
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_openai import AzureChatOpenAI

from fair_runners.testing import LoopbackServer
from fair_runners.testing.anthropic_api import AnthropicEmulator
from fair_runners.testing.azure_openai import AzureOpenAIEmulator
from fair_runners.testing.bedrock import BedrockEmulator

ANTHROPIC_KEY = "demo-ant-key-Qw73Hs2Kd9Lp"
AZURE_KEY = "demo-azr-key-Mx41Tb8Fe3Vn"
MODEL_ARN = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-haiku-v1:0"
CONVERSATION: list[BaseMessage] = [
    SystemMessage(content="You are terse."),
    HumanMessage(content="first question"),
    AIMessage(content="first answer"),
    HumanMessage(content="second question"),
]
EXPECTED = "echo: second question (history=1, system=yes)"
# Words in the conversation and in the answer (the emulators count tokens as words).
INPUT_TOKENS, OUTPUT_TOKENS = 9, 5

# Env that would point a provider elsewhere or lend it a developer's credentials.
PROVIDER_ENV = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_BEARER_TOKEN_BEDROCK",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_BEDROCK_RUNTIME",
    "AWS_RETRY_MODE",
    "AWS_MAX_ATTEMPTS",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_BASE_URL",
    "ANTHROPIC_API_URL",
    "ANTHROPIC_PROXY",
    "AZURE_OPENAI_API_KEY",
    "AZURE_OPENAI_ENDPOINT",
    "AZURE_OPENAI_AD_TOKEN",
    "OPENAI_API_VERSION",
    "LANGSMITH_GATEWAY",
    "LANGSMITH_GATEWAY_API_KEY",
)

E = TypeVar("E")


class Served(Generic[E]):
    """An emulator and the URL it is served at."""

    def __init__(self, emulator: E, url: str) -> None:
        self.emulator = emulator
        self.url = url


def serve(emulator: E) -> Iterator[Served[E]]:
    """Serve `emulator` on 127.0.0.1 for as long as the generator is open (use with `yield from`)."""
    with LoopbackServer(emulator.app) as server:  # type: ignore[attr-defined]
        yield Served(emulator, server.url)


def fresh(served: Served[E]) -> Iterator[Served[E]]:
    """`served`, reset before and after a test (no faults, no latency, empty log, hung calls released)."""
    served.emulator.reset()  # type: ignore[attr-defined]
    yield served
    served.emulator.reset()  # type: ignore[attr-defined]


def provider_env(patch: pytest.MonkeyPatch, tmp: Path) -> None:
    """No developer credentials, profiles or endpoints; dummy AWS keys (the emulator ignores SigV4)."""
    for name in PROVIDER_ENV:
        patch.delenv(name, raising=False)
    # A fresh default boto3 session: an earlier test's (moto's "testing" keys) would keep its credentials.
    import boto3

    patch.setattr(boto3, "DEFAULT_SESSION", None)
    patch.setenv("AWS_CONFIG_FILE", str(tmp / "no-aws-config"))
    patch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp / "no-aws-credentials"))
    patch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    patch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    patch.setenv("AWS_REGION", "us-east-1")


_MADE: list[Any] = []


def close_models() -> None:
    """Close the HTTP clients of the models built since the last call (else the garbage collector finds
    their pooled sockets unclosed, during some later test)."""
    while _MADE:
        model = _MADE.pop()
        for name in ("client", "bedrock_client", "root_client"):
            client = getattr(model, name, None)
            if client is not None and hasattr(client, "close"):
                client.close()


def bedrock_model(**params: Any) -> ChatBedrockConverse:
    """A ChatBedrockConverse for `MODEL_ARN`, without botocore retries unless `max_retries` is given."""
    params.setdefault("max_retries", 0)
    params.setdefault("model", MODEL_ARN)
    if params["model"].startswith("arn:"):
        params.setdefault("provider", "anthropic")  # an ARN does not name the provider
    model = ChatBedrockConverse(**params)
    _MADE.append(model)
    return model


def kept_bedrock_model(url: str) -> Iterator[ChatBedrockConverse]:
    """One model for many tests of a module (use with `yield from`; building one costs ~0.4 s of CPU: two
    boto3 clients)."""
    with pytest.MonkeyPatch.context() as patch:
        provider_env(patch, Path("/nonexistent"))
        model = ChatBedrockConverse(model=MODEL_ARN, provider="anthropic", endpoint_url=url, max_retries=0)
    yield model
    model.client.close()
    model.bedrock_client.close()


def claude_model(url: str, **params: Any) -> ChatAnthropic:
    """A ChatAnthropic for the emulator at `url`. It keeps its HTTP clients in a process-wide cache (keyed
    by base URL and timeout): nothing to close."""
    params.setdefault("base_url", url)
    params.setdefault("api_key", ANTHROPIC_KEY)
    return ChatAnthropic(model="claude-test", max_retries=0, **params)


def azure_model(url: str, **params: Any) -> AzureChatOpenAI:
    """An AzureChatOpenAI for deployment `gpt-4o-dep` of the emulator at `url`."""
    params.setdefault("api_key", AZURE_KEY)
    model = AzureChatOpenAI(
        azure_endpoint=url, azure_deployment="gpt-4o-dep", api_version="2024-10-21", max_retries=0, **params
    )
    _MADE.append(model)
    return model


# ------------------------------------------------------------------------ fixtures (import them to use them)


@pytest.fixture(autouse=True)
def _provider_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    provider_env(monkeypatch, tmp_path)
    yield
    close_models()


@pytest.fixture(scope="module")
def _bedrock_server() -> Iterator[Served[BedrockEmulator]]:
    yield from serve(BedrockEmulator())


@pytest.fixture(scope="module")
def _anthropic_server() -> Iterator[Served[AnthropicEmulator]]:
    yield from serve(AnthropicEmulator(api_key=ANTHROPIC_KEY))


@pytest.fixture(scope="module")
def _azure_server() -> Iterator[Served[AzureOpenAIEmulator]]:
    yield from serve(AzureOpenAIEmulator(api_key=AZURE_KEY))
