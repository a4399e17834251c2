"""The allowlisted connector factory: which LangChain chat models a payload may name, and their credentials.

A payload names a class by `connector.class_path`; it is looked up, as an exact string, in the allowlist.
Nothing outside the allowlist is ever imported: no `importlib` call ever sees a string the caller chose.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ._errors import InvalidRequest
from ._text import control_problem

_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


ParamKind = Literal["str", "secret", "url", "number", "int", "bool", "stop"]


@dataclass(frozen=True)
class ParamRule:
    """What one constructor parameter may hold (kind and bounds); anything else is refused."""

    kind: ParamKind
    minimum: float | None = None
    maximum: float | None = None
    max_len: int = 256

    def check(self, loc: str, value: Any) -> str | None:
        """None when `value` is acceptable, else what is wrong with it."""
        kind = self.kind
        if kind in ("str", "secret", "url"):
            if not isinstance(value, str):
                return "must be a string"
            if len(value) > self.max_len:
                return f"must be at most {self.max_len} characters"
            return control_problem(value)  # these go into URLs and headers
        if kind == "bool":
            return None if isinstance(value, bool) else "must be true or false"
        if kind == "stop":
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
                return "must be a string or a list of strings"
            if len(items) > 16 or any(len(x) > self.max_len for x in items):
                return f"must be at most 16 strings of at most {self.max_len} characters"
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "must be a number" if kind == "number" else "must be an integer"
        if kind == "int" and not isinstance(value, int):
            return "must be an integer"
        if not math.isfinite(value):
            return "must be a finite number"
        if self.minimum is not None and value < self.minimum:
            return f"must be >= {self.minimum:g}"
        if self.maximum is not None and value > self.maximum:
            return f"must be <= {self.maximum:g}"
        return None


# Parameters any allowlisted chat model may take: plain values only. Everything else is refused, so keys
# that take objects, callables, proxies, headers, extra request fields or file paths never reach a model.
_COMMON_PARAMS: dict[str, ParamRule] = {
    "model": ParamRule("str"),
    "api_key": ParamRule("secret", max_len=4096),
    "base_url": ParamRule("url", max_len=2048),
    "temperature": ParamRule("number", 0, 2),
    "top_p": ParamRule("number", 0, 1),
    "max_tokens": ParamRule("int", 1, 10_000_000),
    "stop": ParamRule("stop"),
    "timeout": ParamRule("number", 0.001, 900),
    "max_retries": ParamRule("int", 0, 10),
    "seed": ParamRule("int", -(2**63), 2**63 - 1),
}
_OPENAI_PARAMS = {
    **_COMMON_PARAMS,
    "max_completion_tokens": ParamRule("int", 1, 10_000_000),
    "n": ParamRule("int", 1, 16),
    "presence_penalty": ParamRule("number", -2, 2),
    "frequency_penalty": ParamRule("number", -2, 2),
    "logprobs": ParamRule("bool"),
    "top_logprobs": ParamRule("int", 0, 20),
    "organization": ParamRule("str"),
    "reasoning_effort": ParamRule("str", max_len=32),
    "verbosity": ParamRule("str", max_len=32),
    "service_tier": ParamRule("str", max_len=32),
    "stream_usage": ParamRule("bool"),
}
_GROQ_PARAMS = {
    **_COMMON_PARAMS,
    "n": ParamRule("int", 1, 16),
    "reasoning_effort": ParamRule("str", max_len=32),
    "reasoning_format": ParamRule("str", max_len=32),
    "service_tier": ParamRule("str", max_len=32),
}
_GOOGLE_PARAMS = {
    **{k: v for k, v in _COMMON_PARAMS.items() if k != "base_url"},
    "max_output_tokens": ParamRule("int", 1, 10_000_000),
    "top_k": ParamRule("int", 1, 1000),
}
_OLLAMA_PARAMS = {
    **{k: v for k, v in _COMMON_PARAMS.items() if k not in ("api_key", "max_tokens", "max_retries")},
    "num_predict": ParamRule("int", -2, 10_000_000),
    "num_ctx": ParamRule("int", 1, 10_000_000),
    "top_k": ParamRule("int", 1, 1000),
}

# Names that route traffic or carry code/objects: refused with a reason, whatever the connector.
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
        "groq_proxy",
        "http_proxy",
        "proxy",
        "proxies",
        "default_headers",
        "default_query",
        "custom_get_token_ids",
        "metadata",
        "tags",
        "model_kwargs",
        "extra_body",
        "http_socket_options",
        "tiktoken_model_name",
        "verbose",
        "profile",
        "disabled_params",
    }
)
# Aliases the providers also accept: refused, so a key or URL can only come in by its one checked name.
_ALIASES = {
    "openai_api_key": "api_key",
    "groq_api_key": "api_key",
    "google_api_key": "api_key",
    "openai_api_base": "base_url",
    "groq_api_base": "base_url",
    "api_base": "base_url",
    "endpoint": "base_url",
    "azure_endpoint": "base_url",
    "model_name": "model",
    "request_timeout": "timeout",
    "stop_sequences": "stop",
    "openai_organization": "organization",
}


@dataclass(frozen=True)
class ConnectorSpec:
    """One allowlisted chat model class and the constructor parameters a request may set."""

    module: str
    attribute: str
    # The provider's own env variable for its key (None when the provider needs no key).
    key_env: str | None
    params: Mapping[str, ParamRule] = field(default_factory=lambda: dict(_COMMON_PARAMS))
    # The provider's built-in endpoint, passed explicitly when a request names none (so no SDK reads a base
    # URL from env by itself); None when the class has no URL parameter.
    default_base_url: str | None = None
    # False for classes a deployer added by env: they never get a deployment key.
    builtin: bool = True

    @property
    def canonical(self) -> str:
        """The spec's module path and class name."""
        return f"{self.module}.{self.attribute}"


_OPENAI = ConnectorSpec(
    "langchain_openai", "ChatOpenAI", "OPENAI_API_KEY", _OPENAI_PARAMS, "https://api.openai.com/v1"
)
_GROQ = ConnectorSpec("langchain_groq", "ChatGroq", "GROQ_API_KEY", _GROQ_PARAMS, "https://api.groq.com")
_GOOGLE = ConnectorSpec("langchain_google_genai", "ChatGoogleGenerativeAI", "GOOGLE_API_KEY", _GOOGLE_PARAMS)
_OLLAMA = ConnectorSpec("langchain_ollama", "ChatOllama", None, _OLLAMA_PARAMS)

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
            allowed[path] = ConnectorSpec(module, attribute, None, builtin=False)
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


def check_params(spec: ConnectorSpec, params: Mapping[str, Any]) -> None:
    """Refuse constructor params this connector does not allow, values of the wrong kind, and bad URLs.

    Every refused key is named as `connector.params.<key>`; URL params are parsed by the network guard
    (https, no internal host or address unless allowlisted); their DNS names are checked before the run
    sends anything (`PreparedRun.vet_targets`).
    """
    from ._netguard import parse_url

    problems: list[dict[str, str]] = []
    for key, value in params.items():
        loc = f"connector.params.{key}"
        rule = spec.params.get(key)
        if rule is None:
            if key in FORBIDDEN_PARAMS or key.startswith("_"):
                msg = "not allowed in a request (it takes objects, routes traffic or adds headers)"
            elif key in _ALIASES and _ALIASES[key] in spec.params:
                msg = f"not accepted under this name: use connector.params.{_ALIASES[key]}"
            else:
                allowed = ", ".join(sorted(spec.params))
                msg = f"not an allowed parameter for {spec.canonical}; allowed: {allowed}"
            problems.append({"loc": loc, "msg": msg})
            continue
        wrong = rule.check(loc, value)
        if wrong is not None:
            problems.append({"loc": loc, "msg": wrong})
    if problems:
        raise InvalidRequest(
            f"connector.params: {problems[0]['loc']} is refused"
            + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
            problems,
        )
    for key, rule in spec.params.items():
        if rule.kind == "url" and key in params:
            parse_url(params[key], f"connector.params.{key}")
