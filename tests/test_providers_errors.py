"""`classify_provider_error` and `rate_limit_headers` on REAL exceptions: raised by the real botocore,
anthropic and openai SDKs (through ChatBedrockConverse, ChatAnthropic, AzureChatOpenAI) against the
emulators, a closed port and a server that drops the connection."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import botocore.exceptions
import pytest
from langchain_aws import ChatBedrockConverse

from fair_runners import (
    AuthenticationFailed,
    BackendError,
    PermanentBackendError,
    RateLimited,
    TransientBackendError,
    TurnTimeout,
)
from fair_runners.runners._provider_errors import MAX_MESSAGE, classify_provider_error, rate_limit_headers
from fair_runners.runners._threaded import bedrock_client_config
from fair_runners.testing import Fault
from fair_runners.testing.anthropic_api import AnthropicEmulator
from fair_runners.testing.azure_openai import AzureOpenAIEmulator
from fair_runners.testing.bedrock import BedrockEmulator

from .conftest import free_port
from .providers_support import (
    CONVERSATION,
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


@pytest.fixture(scope="module")
def kept_bedrock(_bedrock_server: Served[BedrockEmulator]) -> Iterator[ChatBedrockConverse]:
    yield from kept_bedrock_model(_bedrock_server.url)


@pytest.fixture
def bedrock(_bedrock_server: Served[BedrockEmulator]) -> Iterator[Served[BedrockEmulator]]:
    yield from fresh(_bedrock_server)


@pytest.fixture
def claude(_anthropic_server: Served[AnthropicEmulator]) -> Iterator[Served[AnthropicEmulator]]:
    yield from fresh(_anthropic_server)


@pytest.fixture
def azure(_azure_server: Served[AzureOpenAIEmulator]) -> Iterator[Served[AzureOpenAIEmulator]]:
    yield from fresh(_azure_server)


def raised(call: Callable[[], object]) -> BaseException:
    """What `call` raises (it must raise)."""
    with pytest.raises(BaseException) as caught:
        call()
    return caught.value


@pytest.fixture
def dropping_port() -> Iterator[int]:
    """A port whose server accepts each connection, reads the request and closes without answering."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve_forever() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                conn.recv(65536)

    thread = threading.Thread(target=serve_forever, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(timeout=2)
    listener.close()


# --- Bedrock (botocore) -----------------------------------------------------------------------------------

BEDROCK_CASES = [
    ("ThrottlingException", RateLimited, 429),
    ("ModelNotReadyException", TransientBackendError, 429),  # a 429 that is not a rate limit
    ("ServiceUnavailableException", TransientBackendError, 503),
    ("InternalServerException", TransientBackendError, 500),
    ("ModelTimeoutException", TurnTimeout, 408),
    ("AccessDeniedException", AuthenticationFailed, 403),
    ("UnrecognizedClientException", AuthenticationFailed, 403),
    ("ExpiredTokenException", AuthenticationFailed, 403),
    ("InvalidSignatureException", AuthenticationFailed, 403),
    ("ValidationException", PermanentBackendError, 400),
    ("ResourceNotFoundException", PermanentBackendError, 404),
    ("ModelErrorException", PermanentBackendError, 424),  # other 4xx
]


@pytest.mark.parametrize(("code", "family", "status"), BEDROCK_CASES)
def test_bedrock_client_errors_by_code(
    bedrock: Served[BedrockEmulator],
    kept_bedrock: ChatBedrockConverse,
    code: str,
    family: type[BackendError],
    status: int,
) -> None:
    bedrock.emulator.add_fault(Fault(kind="status", text=code))
    error = raised(lambda: kept_bedrock.invoke(CONVERSATION))
    assert isinstance(error, botocore.exceptions.ClientError)
    result = classify_provider_error(error)
    assert type(result) is family
    assert result.status_code == status
    assert result.message == f"{code}: injected {code}"


def test_bedrock_throttling_honours_a_retry_after_header(
    bedrock: Served[BedrockEmulator], kept_bedrock: ChatBedrockConverse
) -> None:
    bedrock.emulator.add_fault(Fault(kind="status", text="ThrottlingException", retry_after=4))
    error = raised(lambda: kept_bedrock.invoke(CONVERSATION))
    result = classify_provider_error(error)
    assert isinstance(result, RateLimited) and result.retry_after == 4.0
    assert rate_limit_headers(error) == {"retry-after": "4"}


def test_bedrock_read_timeout_is_a_turn_timeout(bedrock: Served[BedrockEmulator]) -> None:
    bedrock.emulator.add_fault(Fault(kind="hang"))
    model = bedrock_model(
        endpoint_url=bedrock.url, config=bedrock_client_config(0.3, 0.3, 2), max_retries=None
    )
    error = raised(lambda: model.invoke(CONVERSATION))
    assert isinstance(error, botocore.exceptions.ReadTimeoutError)
    result = classify_provider_error(error)
    assert type(result) is TurnTimeout
    assert result.message.startswith("ReadTimeoutError: Read timeout on endpoint URL")


def test_bedrock_connection_refused_is_transient() -> None:
    model = bedrock_model(endpoint_url=f"http://127.0.0.1:{free_port()}")
    error = raised(lambda: model.invoke(CONVERSATION))
    assert isinstance(error, botocore.exceptions.EndpointConnectionError)
    assert type(classify_provider_error(error)) is TransientBackendError


def test_bedrock_dropped_connection_is_transient(dropping_port: int) -> None:
    model = bedrock_model(endpoint_url=f"http://127.0.0.1:{dropping_port}")
    error = raised(lambda: model.invoke(CONVERSATION))
    assert isinstance(error, botocore.exceptions.ConnectionClosedError)
    result = classify_provider_error(error)
    assert type(result) is TransientBackendError
    assert result.message.startswith("ConnectionClosedError: ")


def test_bedrock_without_credentials_is_an_authentication_failure(
    bedrock: Served[BedrockEmulator], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    error = raised(lambda: bedrock_model(endpoint_url=bedrock.url).invoke(CONVERSATION))
    assert isinstance(error, botocore.exceptions.NoCredentialsError)
    assert type(classify_provider_error(error)) is AuthenticationFailed
    assert bedrock.emulator.requests == []


# --- Anthropic --------------------------------------------------------------------------------------------

ANTHROPIC_CASES = [
    (Fault(kind="status", status=429, retry_after=7), RateLimited, 429),
    (Fault(kind="status", status=529), TransientBackendError, 529),
    (Fault(kind="status", status=500), TransientBackendError, 500),
    (Fault(kind="status", status=401), AuthenticationFailed, 401),
    (Fault(kind="status", status=403), AuthenticationFailed, 403),
    (Fault(kind="status", status=400), PermanentBackendError, 400),
]


@pytest.mark.parametrize(("fault", "family", "status"), ANTHROPIC_CASES)
def test_anthropic_status_errors(
    claude: Served[AnthropicEmulator], fault: Fault, family: type[BackendError], status: int
) -> None:
    claude.emulator.add_fault(fault)
    error = raised(lambda: claude_model(claude.url).invoke(CONVERSATION))
    result = classify_provider_error(error)
    assert type(result) is family
    assert result.status_code == status
    kind = json.loads(json.dumps(getattr(error, "body", None)))["error"]["type"]
    assert result.message == f"{type(error).__name__}: injected {kind}"  # the API's message, not the body
    if status == 429:
        assert isinstance(result, RateLimited) and result.retry_after == 7.0
        headers = rate_limit_headers(error)
        assert headers["retry-after"] == "7"
        assert headers["anthropic-ratelimit-requests-remaining"] == "0"
        assert {"anthropic-ratelimit-tokens-limit", "anthropic-ratelimit-requests-reset"} <= headers.keys()
        assert "request-id" not in headers and "content-type" not in headers


def test_anthropic_timeout_and_connection_errors(claude: Served[AnthropicEmulator]) -> None:
    claude.emulator.add_fault(Fault(kind="hang"))
    timeout = raised(lambda: claude_model(claude.url, timeout=0.3).invoke("hi"))
    assert type(classify_provider_error(timeout)) is TurnTimeout
    refused = raised(lambda: claude_model(f"http://127.0.0.1:{free_port()}").invoke("hi"))
    assert type(refused).__name__ == "AnthropicConnectionError"
    assert type(classify_provider_error(refused)) is TransientBackendError
    assert rate_limit_headers(refused) == {}


# --- Azure OpenAI (openai) --------------------------------------------------------------------------------

AZURE_CASES = [
    (Fault(kind="status", status=429, retry_after=2.5), RateLimited, 429),
    (Fault(kind="status", status=503), TransientBackendError, 503),
    (Fault(kind="status", status=500), TransientBackendError, 500),
    (Fault(kind="status", status=401), AuthenticationFailed, 401),
    (Fault(kind="status", status=400), PermanentBackendError, 400),
]


@pytest.mark.parametrize(("fault", "family", "status"), AZURE_CASES)
def test_azure_status_errors(
    azure: Served[AzureOpenAIEmulator], fault: Fault, family: type[BackendError], status: int
) -> None:
    azure.emulator.add_fault(fault)
    error = raised(lambda: azure_model(azure.url).invoke(CONVERSATION))
    result = classify_provider_error(error)
    assert type(result) is family
    assert result.status_code == status
    assert result.message.startswith(f"{type(error).__name__}: injected {status}")
    if status == 429:
        assert isinstance(result, RateLimited) and result.retry_after == 2.5  # from retry-after-ms
        headers = rate_limit_headers(error)
        assert headers["retry-after-ms"] == "2500" and headers["x-ratelimit-remaining-requests"] == "0"


def test_azure_timeout_and_connection_errors(azure: Served[AzureOpenAIEmulator]) -> None:
    azure.emulator.add_fault(Fault(kind="hang"))
    timeout = raised(lambda: azure_model(azure.url, timeout=0.3).invoke("hi"))
    assert type(classify_provider_error(timeout)) is TurnTimeout
    refused = raised(lambda: azure_model(f"http://127.0.0.1:{free_port()}").invoke("hi"))
    # openai wraps the transport's error: APIConnectionError, caused by httpx2's ConnectError.
    chain = [type(refused).__name__, type(refused.__cause__).__name__]
    assert chain == ["OpenAIConnectionError", "APIConnectionError"]
    assert type(classify_provider_error(refused)) is TransientBackendError


def test_rate_limit_headers_of_an_answer(azure: Served[AzureOpenAIEmulator]) -> None:
    reply = azure_model(azure.url, include_response_headers=True).invoke("hi")
    headers = rate_limit_headers(reply)
    assert set(headers) == {
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
    }
    assert rate_limit_headers(azure_model(azure.url).invoke("hi")) == {}  # headers not asked for


# --- The chain, pass-through, fallbacks, messages ---------------------------------------------------------


def test_the_cause_and_context_chain_is_walked(
    bedrock: Served[BedrockEmulator], kept_bedrock: ChatBedrockConverse
) -> None:
    bedrock.emulator.add_fault(Fault(kind="status", text="ThrottlingException", times=2))
    model = kept_bedrock
    try:
        try:
            model.invoke(CONVERSATION)
        except botocore.exceptions.ClientError as exc:
            raise ValueError("the integration wrapped it") from exc
    except ValueError as wrapped:
        caused = wrapped
    try:
        try:
            model.invoke(CONVERSATION)
        except botocore.exceptions.ClientError:
            raise KeyError("failed while handling it") from None
    except KeyError as suppressed:
        contextual = suppressed
    assert type(classify_provider_error(caused)) is RateLimited
    assert type(classify_provider_error(contextual)) is RateLimited
    assert rate_limit_headers(caused) == {}


def test_backend_errors_pass_through_and_unknown_errors_are_permanent() -> None:
    original = RateLimited("already classified", status_code=429, retry_after=1.0)
    assert classify_provider_error(original) is original
    result = classify_provider_error(ValueError("x" * 1000 + "\n"))
    assert type(result) is PermanentBackendError
    assert result.message.startswith("ValueError: xxx") and len(result.message) == MAX_MESSAGE
    assert classify_provider_error(RuntimeError()).message == "RuntimeError: no details"


def test_importing_the_classifier_loads_no_sdk() -> None:
    code = (
        "import sys, fair_runners.runners._provider_errors as m; "
        "print([n for n in ('botocore', 'anthropic', 'openai', 'httpx', 'httpx2', 'langchain_core') "
        "if n in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent.parent,
    )
    assert out.stdout.strip() == "[]"
