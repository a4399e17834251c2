"""Classify what a provider SDK raised (botocore, anthropic, openai, groq, httpx, LangChain) into the error
families the engine's retry policy understands, and pick out the rate-limit headers it carried.

Nothing heavy is imported: an SDK's exception classes are looked up in `sys.modules`, where they are
whenever one of its exceptions exists, so this module can be imported on any path (the Alquimia runner's
too) and works with any subset of the SDKs installed.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from typing import Any

from .._errors import (
    AuthenticationFailed,
    BackendError,
    PermanentBackendError,
    RateLimited,
    TransientBackendError,
    TurnTimeout,
    backend_error_from_status,
    parse_retry_after,
)

MAX_MESSAGE = 400
_MAX_CHAIN = 16
_STAINLESS_SDKS = (
    "anthropic",
    "openai",
    "groq",
)  # SDKs generated alike: APIStatusError, APITimeoutError, ...

# botocore `ClientError` codes (Bedrock's and AWS's common ones).
_AWS_RATE_LIMITED = frozenset(
    {
        "ThrottlingException",
        "TooManyRequestsException",
        "Throttling",
        "ThrottledException",
        "RequestThrottledException",
        "RequestLimitExceeded",
        "SlowDown",
    }
)
_AWS_TRANSIENT = frozenset(
    {
        "ServiceUnavailableException",
        "ServiceUnavailable",
        "InternalServerException",
        "InternalServerError",
        "InternalFailure",
        "ModelNotReadyException",
    }
)
_AWS_TIMEOUT = frozenset({"ModelTimeoutException", "RequestTimeout", "RequestTimeoutException"})
_AWS_AUTH = frozenset(
    {
        "AccessDeniedException",
        "AccessDenied",
        "UnrecognizedClientException",
        "ExpiredTokenException",
        "ExpiredToken",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "InvalidClientTokenId",
        "IncompleteSignature",
        "MissingAuthenticationTokenException",
    }
)
_AWS_PERMANENT = frozenset({"ValidationException", "ResourceNotFoundException"})

# Anthropic's `error.type` (it also arrives inside a 200 stream, where the status says nothing).
_ANTHROPIC_TYPES: dict[str, int] = {
    "rate_limit_error": 429,
    "overloaded_error": 529,
    "api_error": 500,
    "authentication_error": 401,
    "permission_error": 403,
    "invalid_request_error": 400,
    "not_found_error": 404,
    "request_too_large": 413,
}

# LangChain's `ModelError` classes, most specific first.
_LANGCHAIN_FAMILIES: tuple[tuple[str, type[BackendError]], ...] = (
    ("ModelRateLimitError", RateLimited),
    ("ModelTimeoutError", TurnTimeout),
    ("ModelConnectionError", TransientBackendError),
    ("ModelAPIError", TransientBackendError),
    ("ModelAuthenticationError", AuthenticationFailed),
    ("ModelPermissionDeniedError", AuthenticationFailed),
    ("ModelError", PermanentBackendError),
)

_HEADER_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-")
_HEADER_NAMES = frozenset({"retry-after", "retry-after-ms"})


def classify_provider_error(exc: BaseException) -> BackendError:
    """The `BackendError` for a failed model call: `exc` itself when it already is one; else the first
    exception in `exc`'s `__cause__` / `__context__` chain (outermost first) that is recognised:

    - botocore `ClientError` by error code: throttling -> `RateLimited`; ServiceUnavailable, InternalServer,
      ModelNotReady -> `TransientBackendError`; ModelTimeout -> `TurnTimeout`; AccessDenied,
      UnrecognizedClient, ExpiredToken, InvalidSignature -> `AuthenticationFailed`; Validation,
      ResourceNotFound -> permanent; other codes by HTTP status (other 4xx permanent, 5xx transient);
    - botocore transport errors: read / connect timeouts -> `TurnTimeout`, other connection errors ->
      transient, missing credentials -> `AuthenticationFailed`;
    - anthropic / openai / groq `APIStatusError` by status (and Anthropic's `error.type`): 429 ->
      `RateLimited` honouring `retry-after-ms` / `retry-after`, 408 / 5xx / 529 -> transient, 401 / 403 ->
      `AuthenticationFailed`, other 4xx -> permanent; their `APITimeoutError` -> `TurnTimeout`,
      `APIConnectionError` -> transient;
    - httpx / httpx2 timeouts and transport errors, `TimeoutError`, `ConnectionError`, and LangChain's
      `ModelError` family likewise.

    Anything else is a `PermanentBackendError`. Messages read `"<ExceptionName>: <short text>"`, at most
    400 characters, with the provider's own message rather than the raw response body.
    """
    if isinstance(exc, BackendError):
        return exc
    for link in _chain(exc):
        found = _classify_one(link)
        if found is not None:
            return found
    return PermanentBackendError(_message(type(exc).__name__, str(exc)))


def rate_limit_headers(source: Any) -> dict[str, str]:
    """The lower-cased `x-ratelimit-*`, `anthropic-ratelimit-*`, `retry-after` and `retry-after-ms` headers
    that `source` carries: an SDK exception (or one in its cause / context chain), an HTTP response
    (`.headers`), a botocore response dict (`ResponseMetadata.HTTPHeaders`), a message whose
    `response_metadata` holds either, or a plain header mapping. Empty when there are none."""
    if isinstance(source, BaseException):
        for link in _chain(source):
            found = _pick(_headers_of(link))
            if found:
                return found
        return {}
    return _pick(_headers_of(source))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then its causes and contexts, depth first, each once, at most `_MAX_CHAIN`."""
    seen: set[int] = set()
    stack = [exc]
    while stack and len(seen) < _MAX_CHAIN:
        link = stack.pop()
        if id(link) in seen:
            continue
        seen.add(id(link))
        yield link
        for nxt in (link.__context__, link.__cause__):  # the cause is visited first
            if nxt is not None and id(nxt) not in seen:
                stack.append(nxt)


def _classes(module: str, *names: str) -> tuple[type[BaseException], ...]:
    """The named classes of `module` if it is loaded (never imports it)."""
    loaded = sys.modules.get(module)
    if loaded is None:
        return ()
    found = (getattr(loaded, name, None) for name in names)
    return tuple(c for c in found if isinstance(c, type) and issubclass(c, BaseException))


def _classify_one(exc: BaseException) -> BackendError | None:
    client_error = _classes("botocore.exceptions", "ClientError")
    if client_error and isinstance(exc, client_error):
        return _classify_client_error(exc)
    found = _classify_botocore(exc)
    if found is not None:
        return found
    name = type(exc).__name__
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and not isinstance(status, bool) and hasattr(exc, "response"):
        return _classify_status_error(exc, status)
    timeouts: tuple[type[BaseException], ...] = (TimeoutError,)
    connections: tuple[type[BaseException], ...] = (ConnectionError,)
    for sdk in _STAINLESS_SDKS:
        timeouts += _classes(sdk, "APITimeoutError")
        connections += _classes(sdk, "APIConnectionError")
    for http in ("httpx", "httpx2"):
        timeouts += _classes(http, "TimeoutException")
        connections += _classes(http, "TransportError")
    if isinstance(exc, timeouts):
        return TurnTimeout(_message(name, str(exc)))
    if isinstance(exc, connections):
        return TransientBackendError(_message(name, str(exc)))
    return _classify_langchain(exc)


def _classify_client_error(exc: BaseException) -> BackendError:
    response: Any = getattr(exc, "response", None) or {}
    error = response.get("Error") or {}
    meta = response.get("ResponseMetadata") or {}
    code = str(error.get("Code") or type(exc).__name__)
    status = meta.get("HTTPStatusCode")
    status = status if isinstance(status, int) else None
    message = _message(code, str(error.get("Message") or exc))
    retry_after = _retry_after(rate_limit_headers(response))
    if code in _AWS_RATE_LIMITED:
        return RateLimited(message, status_code=status, retry_after=retry_after)
    if code in _AWS_TIMEOUT:
        return TurnTimeout(message, status_code=status)
    if code in _AWS_TRANSIENT:
        return TransientBackendError(message, status_code=status, retry_after=retry_after)
    if code in _AWS_AUTH:
        return AuthenticationFailed(message, status_code=status)
    if code in _AWS_PERMANENT or status is None:
        return PermanentBackendError(message, status_code=status)
    return backend_error_from_status(status, message, retry_after)


def _classify_botocore(exc: BaseException) -> BackendError | None:
    timeouts = _classes("botocore.exceptions", "ReadTimeoutError", "ConnectTimeoutError")
    if not timeouts:
        return None
    message = _message(type(exc).__name__, str(exc))
    if isinstance(exc, timeouts):
        return TurnTimeout(message)
    if isinstance(exc, _classes("botocore.exceptions", "NoCredentialsError", "PartialCredentialsError")):
        return AuthenticationFailed(message)
    transport = _classes("botocore.exceptions", "ConnectionError", "HTTPClientError", "IncompleteReadError")
    if isinstance(exc, transport):
        return TransientBackendError(message)
    return None


def _classify_status_error(exc: BaseException, status: int) -> BackendError:
    body: Any = getattr(exc, "body", None)
    error_type: Any = getattr(exc, "type", None)
    detail: Any = getattr(exc, "api_message", None)
    if isinstance(body, Mapping):
        inner: Mapping[str, Any] = body["error"] if isinstance(body.get("error"), Mapping) else body
        detail = detail or inner.get("message")
        error_type = error_type or inner.get("type")
    message = _message(type(exc).__name__, str(detail or getattr(exc, "message", None) or exc))
    if isinstance(error_type, str) and error_type in _ANTHROPIC_TYPES and not 400 <= status < 600:
        status = _ANTHROPIC_TYPES[error_type]  # an error event inside a 200 stream
    retry_after = _retry_after(rate_limit_headers(exc))
    if error_type == "overloaded_error":
        return TransientBackendError(message, status_code=status, retry_after=retry_after)
    return backend_error_from_status(status, message, retry_after)


def _classify_langchain(exc: BaseException) -> BackendError | None:
    """LangChain's provider-neutral `ModelError` family (raised without a status code)."""
    for class_name, family in _LANGCHAIN_FAMILIES:
        classes = _classes("langchain_core.exceptions", class_name)
        if classes and isinstance(exc, classes):
            return family(_message(type(exc).__name__, str(exc)))
    return None


def _headers_of(source: Any) -> Mapping[str, Any]:
    mapping: Mapping[str, Any]
    if isinstance(source, Mapping):
        mapping = source
    else:
        response: Any = getattr(source, "response", None)
        headers: Any = getattr(source, "headers", None) or getattr(response, "headers", None)
        if headers is not None and hasattr(headers, "items"):
            return {str(k): v for k, v in headers.items()}
        metadata: Any = getattr(source, "response_metadata", None)
        if isinstance(response, Mapping):  # botocore ClientError.response
            mapping = response
        elif isinstance(metadata, Mapping):  # an AIMessage
            mapping = metadata
        else:
            return {}
    nested: Any = mapping.get("ResponseMetadata")
    if isinstance(nested, Mapping) and isinstance(nested.get("HTTPHeaders"), Mapping):
        return {str(k): v for k, v in nested["HTTPHeaders"].items()}
    nested = mapping.get("headers")  # AIMessage.response_metadata of a model asked for its headers
    if isinstance(nested, Mapping):
        return {str(k): v for k, v in nested.items()}
    return mapping


def _pick(headers: Mapping[str, Any]) -> dict[str, str]:
    picked: dict[str, str] = {}
    for name, value in headers.items():
        lower = str(name).lower()
        if lower in _HEADER_NAMES or lower.startswith(_HEADER_PREFIXES):
            picked[lower] = str(value)
    return picked


def _retry_after(headers: Mapping[str, str]) -> float | None:
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            seconds = float(millis) / 1000
        except ValueError:
            seconds = -1.0
        if 0 <= seconds <= 3600:
            return seconds
    return parse_retry_after(headers.get("retry-after"))


def _message(name: str, text: str) -> str:
    short = " ".join(text.split()) or "no details"
    return f"{name}: {short}"[:MAX_MESSAGE]
