"""The allowlisted connector factory: which LangChain chat models a payload may name, and how each is built.

A payload names a class by `connector.class_path` (an exact string on the allowlist) or by
`connector.model`, the `provider:model` spelling of LangChain's `init_chat_model`
(`"bedrock_converse:anthropic.claude-3-5-haiku-20241022-v1:0"`), whose provider part maps through the same
allowlist. Nothing outside the allowlist is ever imported: no `importlib` call ever sees a string the caller
chose. Optional providers (`[bedrock]`, `[anthropic]`, Google GenAI, Ollama) are allowed when installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ._connector_params import (
    ALIASES,
    ANTHROPIC_PARAMS,
    AZURE_PARAMS,
    BEDROCK_PARAMS,
    COMMON_PARAMS,
    FORBIDDEN_PARAMS,
    GOOGLE_PARAMS,
    GROQ_PARAMS,
    OLLAMA_PARAMS,
    OPENAI_PARAMS,
    ParamRule,
)
from ._errors import InvalidRequest

_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")

# How a class's requests leave the process:
# - "httpx": its SDK takes our httpx client (guarded, capped, proxied), async `ainvoke`;
# - "own-client": its SDK keeps a client of its own (not loop-safe across runs): sync `invoke` on our threads;
# - "boto3": an AWS SDK client we build (the Lambda role's credentials): sync `invoke` on our threads.
Transport = Literal["httpx", "own-client", "boto3"]


@dataclass(frozen=True)
class ConnectorSpec:
    """One allowlisted chat model class and the constructor parameters a request may set."""

    module: str
    attribute: str
    # The provider's own env variable for its key (None when the provider needs no key or uses AWS's chain).
    key_env: str | None
    params: Mapping[str, ParamRule] = field(default_factory=lambda: dict(COMMON_PARAMS))
    # The provider's built-in endpoint, passed explicitly when a request names none (so no SDK reads a base
    # URL from env by itself); None when the class has no URL parameter.
    default_base_url: str | None = None
    # False for classes a deployer added by env: they never get a deployment key.
    builtin: bool = True
    # The request param that names the endpoint (guarded like any URL), if a request may set one.
    url_param: str | None = "base_url"
    # The env variable a deployer sets to move the built-in endpoint (e.g. ANTHROPIC_BASE_URL).
    url_env: str | None = None
    # The constructor field the endpoint is passed in (when it differs from `url_param`).
    url_field: str | None = None
    transport: Transport = "httpx"
    # Request params that carry a credential (a request with one of them brings its own key).
    key_params: tuple[str, ...] = ("api_key",)

    @property
    def canonical(self) -> str:
        """The spec's module path and class name."""
        return f"{self.module}.{self.attribute}"

    def deployment_url(self) -> str | None:
        """The endpoint this deployment uses for the class when a request names none."""
        return (os.environ.get(self.url_env) if self.url_env else None) or self.default_base_url


_OPENAI = ConnectorSpec(
    "langchain_openai", "ChatOpenAI", "OPENAI_API_KEY", OPENAI_PARAMS, "https://api.openai.com/v1"
)
_AZURE = ConnectorSpec(
    "langchain_openai",
    "AzureChatOpenAI",
    "AZURE_OPENAI_API_KEY",
    AZURE_PARAMS,
    None,
    url_param="azure_endpoint",
    url_env="AZURE_OPENAI_ENDPOINT",
    key_params=("api_key", "azure_ad_token"),
)
_GROQ = ConnectorSpec("langchain_groq", "ChatGroq", "GROQ_API_KEY", GROQ_PARAMS, "https://api.groq.com")
_ANTHROPIC = ConnectorSpec(
    "langchain_anthropic",
    "ChatAnthropic",
    "ANTHROPIC_API_KEY",
    ANTHROPIC_PARAMS,
    "https://api.anthropic.com",
    url_param=None,
    url_env="ANTHROPIC_BASE_URL",
    url_field="base_url",
    transport="own-client",
)
_BEDROCK = ConnectorSpec(
    "langchain_aws", "ChatBedrockConverse", None, BEDROCK_PARAMS, None, url_param=None, transport="boto3"
)
_GOOGLE = ConnectorSpec(
    "langchain_google_genai", "ChatGoogleGenerativeAI", "GOOGLE_API_KEY", GOOGLE_PARAMS, url_param=None
)
_OLLAMA = ConnectorSpec("langchain_ollama", "ChatOllama", None, OLLAMA_PARAMS)

_BUILTIN: dict[str, ConnectorSpec] = {
    "langchain_openai.chat_models.ChatOpenAI": _OPENAI,
    "langchain_openai.ChatOpenAI": _OPENAI,
    "langchain_openai.chat_models.AzureChatOpenAI": _AZURE,
    "langchain_openai.AzureChatOpenAI": _AZURE,
    "langchain_groq.chat_models.ChatGroq": _GROQ,
    "langchain_groq.ChatGroq": _GROQ,
}
_OPTIONAL: dict[str, ConnectorSpec] = {
    "langchain_aws.ChatBedrockConverse": _BEDROCK,
    "langchain_aws.chat_models.ChatBedrockConverse": _BEDROCK,
    "langchain_aws.chat_models.bedrock_converse.ChatBedrockConverse": _BEDROCK,
    "langchain_anthropic.ChatAnthropic": _ANTHROPIC,
    "langchain_anthropic.chat_models.ChatAnthropic": _ANTHROPIC,
    "langchain_google_genai.chat_models.ChatGoogleGenerativeAI": _GOOGLE,
    "langchain_google_genai.ChatGoogleGenerativeAI": _GOOGLE,
    "langchain_ollama.chat_models.ChatOllama": _OLLAMA,
    "langchain_ollama.ChatOllama": _OLLAMA,
}
# `connector.model` = "<provider>:<model>", with the provider names of LangChain's `init_chat_model`.
PROVIDERS: dict[str, str] = {
    "openai": "langchain_openai.ChatOpenAI",
    "azure_openai": "langchain_openai.AzureChatOpenAI",
    "groq": "langchain_groq.ChatGroq",
    "anthropic": "langchain_anthropic.ChatAnthropic",
    "bedrock_converse": "langchain_aws.ChatBedrockConverse",
    "google_genai": "langchain_google_genai.ChatGoogleGenerativeAI",
    "ollama": "langchain_ollama.ChatOllama",
}


def allowlist() -> dict[str, ConnectorSpec]:
    """The class paths a payload may name: built-ins, installed optional providers, env additions."""
    allowed = dict(_BUILTIN)
    installed: dict[str, bool] = {}
    for path, spec in _OPTIONAL.items():
        if spec.module not in installed:
            installed[spec.module] = importlib.util.find_spec(spec.module) is not None
        if installed[spec.module]:
            allowed[path] = spec
    for raw in os.environ.get("FAIR_RUNNERS_ALLOWED_CONNECTORS", "").split(","):
        path = raw.strip()
        if path and _DOTTED.match(path) and path not in allowed:
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


def resolve_model_string(model: str) -> tuple[str, str]:
    """`"provider:model"` -> (class path, model name), split at the first colon; `InvalidRequest` when
    the provider is not one this deployment has (no other provider string is accepted)."""
    provider, sep, name = model.partition(":")
    allowed = allowlist()
    available = sorted(p for p, path in PROVIDERS.items() if path in allowed)
    class_path = PROVIDERS.get(provider)
    if not sep or not name or class_path is None or class_path not in allowed:
        why = (
            "must be '<provider>:<model>'"
            if not sep or not name
            else f"provider {provider!r} is not available"
        )
        raise InvalidRequest(
            f"connector.model: {why}",
            [{"loc": "connector.model", "msg": f"{why}; providers here: {', '.join(available)}"}],
        )
    return class_path, name


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
                msg = (
                    "not allowed in a request (it takes objects, routes traffic, adds headers or credentials)"
                )
            elif key in ALIASES and ALIASES[key] in spec.params:
                msg = f"not accepted under this name: use connector.params.{ALIASES[key]}"
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


ENV_PRELOAD = "FAIR_RUNNERS_PRELOAD"


def preload(names: str) -> list[str]:
    """Import the chat model classes `names` lists (comma-separated provider names of `connector.model`, such
    as `openai`, or allowlisted class paths) now: the Lambda's init pays LangChain's import (~2 s on one
    vCPU) instead of the first invocation, whose rate budget cannot win that time back. Returns a problem
    for each name that is not allowed or not installed; nothing is imported for those."""
    problems: list[str] = []
    for raw in names.split(","):
        name = raw.strip()
        if not name:
            continue
        try:
            load_chat_model_class(resolve_spec(PROVIDERS.get(name, name)))
        except InvalidRequest as exc:
            why = exc.details[0]["msg"] if exc.details else exc.message
            problems.append(f"env {ENV_PRELOAD}: {name!r} not loaded: {why}")
    return problems
