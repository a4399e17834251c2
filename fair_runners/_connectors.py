"""The allowlisted connector factory: which LangChain chat models a payload may name, and their credentials.

A payload names a class by `connector.class_path`; it is looked up, as an exact string, in the allowlist.
Nothing outside the allowlist is ever imported: no `importlib` call ever sees a string the caller chose.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
from dataclasses import dataclass
from typing import Any

from ._errors import InvalidRequest

_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


@dataclass(frozen=True)
class ConnectorSpec:
    """One allowlisted chat model class."""

    module: str
    attribute: str
    # The provider's own env variable for its key (None when the provider needs no key).
    key_env: str | None

    @property
    def canonical(self) -> str:
        """The spec's module path and class name."""
        return f"{self.module}.{self.attribute}"


_OPENAI = ConnectorSpec("langchain_openai", "ChatOpenAI", "OPENAI_API_KEY")
_GROQ = ConnectorSpec("langchain_groq", "ChatGroq", "GROQ_API_KEY")
_GOOGLE = ConnectorSpec("langchain_google_genai", "ChatGoogleGenerativeAI", "GOOGLE_API_KEY")
_OLLAMA = ConnectorSpec("langchain_ollama", "ChatOllama", None)

_BUILTIN: dict[str, ConnectorSpec] = {
    "langchain_openai.chat_models.ChatOpenAI": _OPENAI,
    "langchain_openai.ChatOpenAI": _OPENAI,
    "langchain_groq.chat_models.ChatGroq": _GROQ,
    "langchain_groq.ChatGroq": _GROQ,
}
_OPTIONAL: dict[str, ConnectorSpec] = {
    "langchain_google_genai.chat_models.ChatGoogleGenerativeAI": _GOOGLE,
    "langchain_google_genai.ChatGoogleGenerativeAI": _GOOGLE,
    "langchain_ollama.chat_models.ChatOllama": _OLLAMA,
    "langchain_ollama.ChatOllama": _OLLAMA,
}

# Constructor params a payload may never set: they take objects, route traffic elsewhere, or add headers.
FORBIDDEN_PARAMS = frozenset(
    {
        "http_client",
        "http_async_client",
        "client",
        "async_client",
        "root_client",
        "root_async_client",
        "callbacks",
        "callback_manager",
        "cache",
        "rate_limiter",
        "openai_proxy",
        "http_proxy",
        "proxy",
        "proxies",
        "default_headers",
        "default_query",
        "custom_get_token_ids",
        "metadata",
        "tags",
    }
)


def allowlist() -> dict[str, ConnectorSpec]:
    """The class paths a payload may name: built-ins, installed optional providers, env additions."""
    allowed = dict(_BUILTIN)
    for path, spec in _OPTIONAL.items():
        if importlib.util.find_spec(spec.module) is not None:
            allowed[path] = spec
    for raw in os.environ.get("FAIR_RUNNERS_ALLOWED_CONNECTORS", "").split(","):
        path = raw.strip()
        if path and _DOTTED.match(path):
            module, _, attribute = path.rpartition(".")
            allowed[path] = ConnectorSpec(module, attribute, None)
    return allowed


def resolve_spec(class_path: str) -> ConnectorSpec:
    """Return the allowlisted spec for `class_path` or raise `InvalidRequest`; imports nothing."""
    allowed = allowlist()
    spec = allowed.get(class_path)
    if spec is None:
        names = ", ".join(sorted(allowed))
        raise InvalidRequest(
            "connector.class_path is not an allowed connector",
            [
                {
                    "loc": "connector.class_path",
                    "msg": f"not on the allowlist; use one of: {names} "
                    "(deployers add more with env FAIR_RUNNERS_ALLOWED_CONNECTORS)",
                }
            ],
        )
    return spec


def load_chat_model_class(spec: ConnectorSpec) -> type[Any]:
    """Import the allowlisted class and check that it is a LangChain chat model."""
    from langchain_core.language_models.chat_models import BaseChatModel

    try:
        module = importlib.import_module(spec.module)
    except ImportError:
        raise InvalidRequest(
            "connector.class_path names a provider that is not installed",
            [{"loc": "connector.class_path", "msg": f"package {spec.module!r} is not installed here"}],
        ) from None
    cls = getattr(module, spec.attribute, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseChatModel)):
        raise InvalidRequest(
            "connector.class_path is not a LangChain chat model",
            [{"loc": "connector.class_path", "msg": f"{spec.canonical} is not a BaseChatModel subclass"}],
        )
    return cls


def check_params(params: dict[str, Any]) -> None:
    """Refuse constructor params that a payload may not set."""
    bad = sorted(key for key in params if key in FORBIDDEN_PARAMS or key.startswith("_"))
    if bad:
        raise InvalidRequest(
            "connector.params sets parameters a request may not set",
            [
                {"loc": f"connector.params.{key}", "msg": "not allowed in a request (set by the service)"}
                for key in bad
            ],
        )


def resolve_api_key(spec: ConnectorSpec, params: dict[str, Any]) -> str | None:
    """The key to use: `params.api_key`, else env `LLM_API_KEY`, else the provider's own variable.

    Raises `InvalidRequest` when the provider needs a key and none is found anywhere.
    """
    key = params.get("api_key")
    if isinstance(key, str) and key:
        return key
    if key not in (None, ""):
        raise InvalidRequest(
            "connector.params.api_key must be a string",
            [{"loc": "connector.params.api_key", "msg": "must be a string"}],
        )
    env_key = os.environ.get("LLM_API_KEY")
    if env_key:
        return env_key
    if spec.key_env is None or os.environ.get(spec.key_env):
        return None
    raise InvalidRequest(
        "no API key for the connector",
        [
            {
                "loc": "connector.params.api_key",
                "msg": f"missing: send connector.params.api_key, or set env LLM_API_KEY or {spec.key_env}",
            }
        ],
    )
