"""LangChain chat models (ChatOpenAI, ChatGroq, ...) built from an allowlisted connector.

Imported only when a request selects the LLM runner, so the Alquimia path never loads LangChain. The model
is built inside the running event loop with an `httpx.AsyncClient` owned by this run (the provider's
module-level cached client would outlive the loop of a warm Lambda): httpx-aiohttp over the run's guarded
aiohttp session (`_http.ProviderTransport`), with the provider's own retries off unless the caller set
`max_retries` (the engine's retry policy owns retries). A turn is one public `ainvoke` call.

Two kinds of class cannot take that client: ChatAnthropic keeps an SDK client of its own (bound to the first
event loop it met, so a warm Lambda's next run could not use it), and ChatBedrockConverse calls boto3, which
is synchronous. Their turns run the model's public `invoke` on a thread pool of the run's own, sized to its
concurrency (`_threaded.ThreadedInvoker`), each call bounded by the client's timeout, retries off.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import aiohttp
import httpx
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from pydantic import ValidationError

from .._connectors import Transport
from .._errors import EmptyAnswer, InvalidRequest, PermanentBackendError
from ..pacing import estimate_tokens
from ._base import HeadersHook, TurnInput, TurnOutput
from ._http import ProviderTransport
from ._provider_errors import classify_provider_error
from ._reading import MIB
from ._session import guarded_session
from ._threaded import ThreadedInvoker

_MAX_MESSAGE = 400


class _NoSyncTransport(httpx.BaseTransport):
    """The provider's sync client: this runner only calls the async API, and a sync request would bypass
    the network guard, so every one is refused."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        raise PermanentBackendError("the provider's sync HTTP client is disabled in fair-runners")


class _NoAsyncTransport(httpx.AsyncBaseTransport):
    """The async client of a model built only to check its params: it never sends anything."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise PermanentBackendError("this model was built to check its params, not to send requests")


def check_model(model_class: type[Any], params: dict[str, Any], transport: Transport = "httpx") -> None:
    """Build the model once with clients that send nothing, so params the class itself refuses are an
    `InvalidRequest` when the request is prepared (and not a failure of every turn later)."""
    runner = LLMRunner(model_class, params, timeout=httpx.Timeout(60.0), transport=transport)
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
        max_answer_bytes: int = 2 * MIB,
        transport: Transport = "httpx",
    ) -> None:
        self.model_class = model_class
        self.transport = transport
        self.on_headers: HeadersHook | None = None
        self._invoker: ThreadedInvoker | None = None
        self._params = dict(params)
        self._timeout = timeout
        self._max_connections = max_connections
        self._max_answer_bytes = max_answer_bytes
        self._session: aiohttp.ClientSession | None = None
        self._http: httpx.AsyncClient | None = None
        self.model: BaseChatModel | None = None

    async def __aenter__(self) -> LLMRunner:
        self._session = guarded_session(self._max_connections + 4)
        transport = ProviderTransport(self._session, self._max_answer_bytes)
        self._http = httpx.AsyncClient(
            timeout=self._timeout,
            transport=transport,
            follow_redirects=False,
            trust_env=False,
            event_hooks={"response": [self._response_headers]},
        )
        try:
            self.model = self._build(self._http)
        except BaseException:
            await self._close()
            raise
        if self.transport != "httpx":
            self._invoker = ThreadedInvoker(self._max_connections)
        return self

    async def _response_headers(self, response: httpx.Response) -> None:
        """Every provider response's headers (429s included) go to the engine: its rate limits."""
        if self.on_headers is not None:
            self.on_headers(response.headers)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        if self._invoker is not None:
            self._invoker.close()  # without waiting: each running call ends at its client's timeout
            self._invoker = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _build(self, http: httpx.AsyncClient) -> BaseChatModel:
        fields = getattr(self.model_class, "model_fields", {})
        params = dict(self._params)
        if self.transport == "boto3":
            # Clients of our own (timeouts, one attempt, a pool as large as the run's concurrency); neither
            # `timeout` nor `max_retries` may be set beside them (the model would drop the config's limits).
            from ._bedrock import bedrock_clients

            read = self._timeout.read or 60.0
            connect = self._timeout.connect or read
            params["client"], params["bedrock_client"] = bedrock_clients(
                params.get("region_name"), read, connect, self._max_connections + 4
            )
        else:
            if "http_async_client" in fields:
                params["http_async_client"] = http
            if "http_client" in fields:
                params["http_client"] = httpx.Client(transport=_NoSyncTransport(), trust_env=False)
            if "max_retries" in fields and "max_retries" not in params:
                params["max_retries"] = 0
            if not {"timeout", "request_timeout", "default_request_timeout"} & params.keys() and (
                {"request_timeout", "default_request_timeout"} & fields.keys()
            ):
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

    def request_of(self, turn: TurnInput) -> list[dict[str, str]]:
        """The messages this turn sends: the context as the system message, the history, the query."""
        messages = [{"role": "system", "content": turn.context}] if turn.context else []
        for query, answer in turn.history:
            messages += [{"role": "user", "content": query}, {"role": "assistant", "content": answer}]
        messages.append({"role": "user", "content": turn.batch.query})
        return messages

    def token_estimate(self, turn: TurnInput) -> int:
        """The turn's charge before it is sent: its messages and the most it may generate."""
        limit = self._params.get("max_tokens") or self._params.get("max_completion_tokens")
        texts = [message["content"] for message in self.request_of(turn)]
        model = self._params.get("model")
        return estimate_tokens(
            texts,
            max_tokens=limit if isinstance(limit, int) else None,
            model=model if isinstance(model, str) else None,
        )

    async def run_turn(self, turn: TurnInput) -> TurnOutput:
        """Send context, history and query; raise a `BackendError` on failure."""
        if self.model is None:
            raise RuntimeError("LLMRunner used outside `async with`")
        kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
        messages: list[BaseMessage] = [kinds[m["role"]](content=m["content"]) for m in self.request_of(turn)]
        try:
            if self._invoker is not None:
                reply = await self._invoker.ainvoke(self.model, messages)
            else:
                reply = await self.model.ainvoke(messages)
        except Exception as exc:
            raise classify_provider_error(exc) from None
        content = _text_of(reply)
        if not content.strip():
            raise EmptyAnswer("the model returned an empty answer")
        usage = getattr(reply, "usage_metadata", None) or {}
        return TurnOutput(
            content=content,
            input_tokens=int(usage.get("input_tokens") or 0),
            output_tokens=int(usage.get("output_tokens") or 0),
        )


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
