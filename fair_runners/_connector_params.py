"""What a connector's constructor parameters may hold: `ParamRule`, and the allowlist of each class.

Every key a request may set is listed here with its kind and bounds; anything else is refused (keys that
take objects, callables, proxies, headers, extra request fields, file paths, credentials profiles or
endpoints), so nothing a caller sends can route traffic, add headers or run code.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from ._text import control_problem

ParamKind = Literal["str", "secret", "url", "number", "int", "bool", "stop"]


@dataclass(frozen=True)
class ParamRule:
    """What one constructor parameter may hold (kind and bounds); anything else is refused."""

    kind: ParamKind
    minimum: float | None = None
    maximum: float | None = None
    max_len: int = 256
    # For strings: a full-match pattern the value must follow (text going into a URL path, an enum).
    pattern: str | None = None

    def check(self, loc: str, value: Any) -> str | None:
        """None when `value` is acceptable, else what is wrong with it."""
        kind = self.kind
        if kind in ("str", "secret", "url"):
            if not isinstance(value, str):
                return "must be a string"
            if len(value) > self.max_len:
                return f"must be at most {self.max_len} characters"
            if self.pattern is not None and re.fullmatch(self.pattern, value) is None:
                return f"must match {self.pattern}"
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
COMMON_PARAMS: dict[str, ParamRule] = {
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
OPENAI_PARAMS = {
    **COMMON_PARAMS,
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
GROQ_PARAMS = {
    **COMMON_PARAMS,
    "n": ParamRule("int", 1, 16),
    "reasoning_effort": ParamRule("str", max_len=32),
    "reasoning_format": ParamRule("str", max_len=32),
    "service_tier": ParamRule("str", max_len=32),
}
GOOGLE_PARAMS = {
    **{k: v for k, v in COMMON_PARAMS.items() if k != "base_url"},
    "max_output_tokens": ParamRule("int", 1, 10_000_000),
    "top_k": ParamRule("int", 1, 1000),
}
OLLAMA_PARAMS = {
    **{k: v for k, v in COMMON_PARAMS.items() if k not in ("api_key", "max_tokens", "max_retries")},
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
        "endpoint_url",
        "bedrock_client",
        "config",
        "credentials_profile_name",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "bedrock_api_key",
        "guardrail_config",
        "guardrails",
        "additional_model_request_fields",
        "anthropic_api_url",
        "anthropic_proxy",
        "mcp_servers",
        "betas",
        "azure_ad_token_provider",
        "azure_ad_async_token_provider",
    }
)
# Aliases the providers also accept: refused, so a key or URL can only come in by its one checked name.
ALIASES = {
    "openai_api_key": "api_key",
    "groq_api_key": "api_key",
    "google_api_key": "api_key",
    "openai_api_base": "base_url",
    "groq_api_base": "base_url",
    "api_base": "base_url",
    "endpoint": "base_url",
    "model_name": "model",
    "model_id": "model",
    "deployment_name": "azure_deployment",
    "openai_api_version": "api_version",
    "anthropic_api_key": "api_key",
    "azure_openai_api_key": "api_key",
    "request_timeout": "timeout",
    "stop_sequences": "stop",
    "openai_organization": "organization",
}

# Amazon Bedrock through the Lambda role's own credentials: no key, no endpoint, no AWS credentials in a
# request (the standard AWS chain only); region from `region_name` or env AWS_REGION.
BEDROCK_PARAMS: dict[str, ParamRule] = {
    "model": ParamRule("str", max_len=2048),
    "provider": ParamRule("str", max_len=32, pattern=r"[a-z0-9_-]{1,32}"),
    "base_model": ParamRule("str", max_len=2048),
    "region_name": ParamRule("str", max_len=32, pattern=r"[a-z]{2}(-[a-z]+)+-[0-9]{1,2}"),
    "temperature": ParamRule("number", 0, 1),
    "top_p": ParamRule("number", 0, 1),
    "max_tokens": ParamRule("int", 1, 10_000_000),
    "stop": ParamRule("stop"),
    "reasoning_effort": ParamRule("str", max_len=32),
    "service_tier": ParamRule("str", max_len=32),
}
# Anthropic: the key from the request or the deployment; the endpoint only from the deployer
# (env ANTHROPIC_BASE_URL), since its client cannot take the guarded transport.
ANTHROPIC_PARAMS: dict[str, ParamRule] = {
    "model": ParamRule("str"),
    "api_key": ParamRule("secret", max_len=4096),
    "max_tokens": ParamRule("int", 1, 128_000),
    "temperature": ParamRule("number", 0, 1),
    "top_p": ParamRule("number", 0, 1),
    "top_k": ParamRule("int", 1, 1_000_000),
    "stop": ParamRule("stop"),
    "effort": ParamRule("str", max_len=32),
}
# Azure OpenAI: `azure_endpoint` is its URL (guarded like `base_url`); the deployment goes into the URL
# path unencoded, so it is held to the names Azure itself allows.
AZURE_PARAMS: dict[str, ParamRule] = {
    **{k: v for k, v in OPENAI_PARAMS.items() if k not in ("base_url", "organization", "n")},
    "azure_endpoint": ParamRule("url", max_len=2048),
    "azure_deployment": ParamRule("str", max_len=64, pattern=r"[A-Za-z0-9._-]{1,64}"),
    "api_version": ParamRule("str", max_len=32, pattern=r"[0-9]{4}-[0-9]{2}-[0-9]{2}(-preview)?"),
    "azure_ad_token": ParamRule("secret", max_len=8192),
}
