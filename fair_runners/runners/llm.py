"""LangChain chat models (ChatOpenAI, ChatGroq, ...) built from an allowlisted connector.

Imported only when a request selects the LLM runner, so the Alquimia path never loads LangChain. The model
is built inside the running event loop with an `httpx.AsyncClient` owned by this run (the provider's
module-level cached client would outlive the loop of a warm Lambda), and with the provider's own retries off
unless the caller set `max_retries`: the engine's retry policy owns retries.

A turn calls the model's own async generation (`_agenerate`, the method every LangChain chat model
implements) when `ainvoke`'s wrapping would do nothing: no callback handler or tracer configured, no cache,
no rate limiter, no streaming. That wrapping costs ~0.27 ms of CPU a turn, a fifth of the whole call;
whenever any of it has work to do, the turn goes through `ainvoke` as usual.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Hashable
from types import TracebackType
from typing import Any

import httpx
from langchain_core.callbacks import AsyncCallbackManager
from langchain_core.globals import get_llm_cache
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from pydantic import ValidationError

from .._errors import (
    BackendError,
    InvalidRequest,
    PermanentBackendError,
    TransientBackendError,
    TurnTimeout,
    backend_error_from_status,
    parse_retry_after,
)
from ._base import TurnInput, TurnOutput
from ._http1 import Http1Transport

_MAX_MESSAGE = 400


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """httpx's default verifying context, built once per process (loading the CA bundle costs ~20 ms)."""
    return httpx.create_ssl_context()


class _NoSyncTransport(httpx.BaseTransport):
    """The provider's sync client: this runner only calls the async API, and a sync request would bypass
    the network guard, so every one is refused."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        raise PermanentBackendError("the provider's sync HTTP client is disabled in fair-runners")


class _NoAsyncTransport(httpx.AsyncBaseTransport):
    """The async client of a model built only to check its params: it never sends anything."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise PermanentBackendError("this model was built to check its params, not to send requests")


def check_model(model_class: type[Any], params: dict[str, Any]) -> None:
    """Build the model once with clients that send nothing, so params the class itself refuses are an
    `InvalidRequest` when the request is prepared (and not a failure of every turn later, in every worker)."""
    runner = LLMRunner(model_class, params, timeout=httpx.Timeout(60.0))
    runner._build(httpx.AsyncClient(transport=_NoAsyncTransport(), trust_env=False))


class LLMRunner:
    """Runs turns against a LangChain chat model."""

    name = "llm"

    def __init__(
        self,
        model_class: type[Any],
        params: dict[str, Any],
        *,
        timeout: httpx.Timeout,
        max_connections: int = 16,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.model_class = model_class
        self._params = dict(params)
        self._timeout = timeout
        self._max_connections = max_connections
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self.model: BaseChatModel | None = None
        self.direct = False  # True: turns call `model._agenerate` (see the module docstring)

    async def __aenter__(self) -> LLMRunner:
        # Our own HTTP/1.1 transport under the provider's httpx API: ~0.1 ms less CPU a request than httpx's
        # pool or aiohttp, and the network guard checks every address at connect time (no env proxies).
        transport = self._transport or Http1Transport(
            ssl_context=_tls_context(), max_connections=self._max_connections + 4
        )
        self._http = httpx.AsyncClient(
            timeout=self._timeout, transport=transport, follow_redirects=False, trust_env=False
        )
        try:
            self.model = self._build(self._http)
        except BaseException:
            await self._http.aclose()
            raise
        self.direct = nothing_wraps(self.model)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def _build(self, http: httpx.AsyncClient) -> BaseChatModel:
        fields = getattr(self.model_class, "model_fields", {})
        params = dict(self._params)
        if "http_async_client" in fields:
            params["http_async_client"] = http
        if "http_client" in fields:
            params["http_client"] = httpx.Client(transport=_NoSyncTransport(), trust_env=False)
        if "max_retries" in fields and "max_retries" not in params:
            params["max_retries"] = 0
        if "request_timeout" in fields and not {"timeout", "request_timeout"} & params.keys():
            params["timeout"] = self._timeout.read
        try:
            model = self.model_class(**params)
        except ValidationError as exc:
            details = [
                {
                    "loc": "connector.params" + "".join(f".{part}" for part in err["loc"]),
                    "msg": err["msg"],
                }
                for err in exc.errors(include_url=False, include_input=False)
            ]
            raise InvalidRequest("connector.params are not valid for this connector", details) from None
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(
                "connector.params are not valid for this connector",
                [{"loc": "connector.params", "msg": _short(exc)}],
            ) from None
        if not isinstance(model, BaseChatModel):
            raise InvalidRequest(
                "connector.class_path did not build a chat model",
                [{"loc": "connector.class_path", "msg": "not a BaseChatModel"}],
            )
        return model

    def describe(self) -> dict[str, Any]:
        """Non-secret facts about the target."""
        return {"runner": self.name, "class": self.model_class.__name__, "model": self._params.get("model")}

    async def run_turn(self, turn: TurnInput) -> TurnOutput:
        """Send context, history and query; raise a `BackendError` on failure."""
        if self.model is None:
            raise RuntimeError("LLMRunner used outside `async with`")
        messages: list[BaseMessage] = []
        if turn.context:
            messages.append(SystemMessage(content=turn.context))
        for query, answer in turn.history:
            messages.append(HumanMessage(content=query))
            messages.append(AIMessage(content=answer))
        messages.append(HumanMessage(content=turn.batch.query))
        try:
            if self.direct:
                reply: BaseMessage = (await self.model._agenerate(messages)).generations[0].message
            else:
                reply = await self.model.ainvoke(messages)
        except Exception as exc:
            raise classify_exception(exc) from None
        content = _text_of(reply)
        if not content.strip():
            from .._errors import EmptyAnswer

            raise EmptyAnswer("the model returned an empty answer")
        usage = getattr(reply, "usage_metadata", None) or {}
        return TurnOutput(
            content=content,
            input_tokens=int(usage.get("input_tokens") or 0),
            output_tokens=int(usage.get("output_tokens") or 0),
        )


def nothing_wraps(model: BaseChatModel) -> bool:
    """True when `ainvoke` would only wrap `model._agenerate`: native async, and no callback handler (the
    model's own, a tracer from the env or a context), cache, rate limiter or streaming."""
    if type(model)._agenerate is BaseChatModel._agenerate:  # no native async: the base runs it in a thread
        return False
    if model.rate_limiter is not None or getattr(model, "streaming", False):
        return False
    if model.cache is not False and (model.cache is not None or get_llm_cache() is not None):
        return False
    # The same configuration `agenerate` builds for every call: handlers from the model, the env
    # (LANGSMITH_TRACING, ...) and context variables (tracing_v2_enabled(), configure hooks).
    manager = AsyncCallbackManager.configure(
        inheritable_callbacks=model.callbacks,
        verbose=model.verbose,
        inheritable_tags=model.tags,
        inheritable_metadata=model.metadata,
    )
    return not manager.handlers


def process_state() -> Hashable:
    """LangChain's process-wide settings that decide how a turn is sent (global cache, debug, verbose, the
    tracing context and configure hooks): worker processes kept from an earlier run under other settings
    are replaced, so a turn in a worker is sent as it would be here."""
    from langchain_core.globals import get_debug, get_verbose
    from langchain_core.tracers.context import _configure_hooks, tracing_v2_callback_var

    hooks = tuple(id(hook[0].get()) for hook in _configure_hooks)
    return (id(get_llm_cache()), get_debug(), get_verbose(), id(tracing_v2_callback_var.get()), hooks)


def _text_of(reply: Any) -> str:
    content = getattr(reply, "content", reply)
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type") == "text":
                parts.append(str(part.get("text", "")))
        return "".join(parts)
    return str(content)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().replace("\n", " ")
    return text[:_MAX_MESSAGE] if text else type(exc).__name__


def classify_exception(exc: BaseException) -> BackendError:
    """Map a provider SDK exception (OpenAI, Groq, httpx, ...) to the engine's error families."""
    if isinstance(exc, BackendError):
        return exc
    name = type(exc).__name__
    message = f"{name}: {_short(exc)}"
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
        retry_after = parse_retry_after(headers.get("retry-after")) if headers is not None else None
        return backend_error_from_status(status, message, retry_after)
    if isinstance(exc, httpx.TimeoutException | TimeoutError) or "Timeout" in name:
        return TurnTimeout(message)
    if isinstance(exc, httpx.TransportError | ConnectionError) or "Connection" in name:
        return TransientBackendError(message)
    return PermanentBackendError(message)
