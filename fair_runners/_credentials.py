"""Deployment keys, each bound to the one destination it belongs to.

A key the deployment holds (env, a secret store) goes to exactly one connector class and one origin; a
request that names another destination or class must bring its own key (else a 400 that names the field,
never the key):

- `ALQUIMIA_API_KEY` (or its secret): only the origin of env `ALQUIMIA_BASE_URL`; never used when that is
  unset.
- `LLM_API_KEY` (or its secret): only the class env `LLM_KEY_CONNECTOR` names (default ChatOpenAI), at env
  `LLM_BASE_URL` or that class's built-in endpoint.
- a provider's own variable (`OPENAI_API_KEY`, `GROQ_API_KEY`, `ANTHROPIC_API_KEY`, ...): only its own
  class at its built-in endpoint (or the one its deployer variable names: `ANTHROPIC_BASE_URL`);
  `AZURE_OPENAI_API_KEY` only to env `AZURE_OPENAI_ENDPOINT`, never used when that is unset.

Classes added with `FAIR_RUNNERS_ALLOWED_CONNECTORS` get no deployment key. The runners pass `api_key` and
`base_url` to every SDK explicitly, so no SDK reads a key or a base URL from the environment by itself.
The command line binds the operator's env keys to the origin of its `--base-url` flag instead
(`operator_origin`), never to a URL read from a request file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from ._connectors import ConnectorSpec, allowlist

DEFAULT_KEY_CONNECTOR = "langchain_openai.ChatOpenAI"


def origin_of(url: str | None) -> str | None:
    """`scheme://host:port` of a URL (lower-case, default port written out); None when it has no host."""
    if not url:
        return None
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or parts.scheme not in ("http", "https"):
        return None
    port = port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname.lower().rstrip(".")
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}:{port}"


@dataclass(frozen=True)
class DeploymentKey:
    """A key the deployment holds and the one place it may be sent."""

    name: str  # where it came from (an env variable's name), for messages
    value: str
    runner: str  # "alquimia" or "llm"
    connector: str | None  # the canonical class path it may go to (LLM keys)
    origin: str | None  # the origin it may go to; None: the connector's built-in endpoint
    base_url: str | None = None  # the URL to send to when the request names none


@dataclass(frozen=True)
class KeyRing:
    """The deployment's keys, each with its binding."""

    keys: tuple[DeploymentKey, ...] = ()

    @classmethod
    def from_env(
        cls, secrets: Mapping[str, str] | None = None, *, operator_origin: str | None = None
    ) -> KeyRing:
        """Keys from secret stores (`secrets`, by env name) and env, bound by the rules above.

        `operator_origin` (the command line's `--base-url`) binds every env key to that origin instead.
        """
        secrets = secrets or {}
        env = os.environ
        keys: list[DeploymentKey] = []
        alquimia = secrets.get("ALQUIMIA_API_KEY") or env.get("ALQUIMIA_API_KEY")
        alquimia_url = env.get("ALQUIMIA_BASE_URL") or None
        if alquimia and (operator_origin or origin_of(alquimia_url)):
            keys.append(
                DeploymentKey(
                    "ALQUIMIA_API_KEY",
                    alquimia,
                    "alquimia",
                    None,
                    operator_origin or origin_of(alquimia_url),
                    None if operator_origin else alquimia_url,
                )
            )
        specs = allowlist()
        llm_key = secrets.get("LLM_API_KEY") or env.get("LLM_API_KEY")
        key_class = env.get("LLM_KEY_CONNECTOR") or DEFAULT_KEY_CONNECTOR
        spec = specs.get(key_class)
        if llm_key and spec is not None and spec.builtin:
            llm_url = (env.get("LLM_BASE_URL") or None) if spec.url_param else None
            home = llm_url or spec.deployment_url()
            origin = operator_origin or origin_of(home)
            if origin or spec.url_param is None:
                base = None if operator_origin else home
                keys.append(DeploymentKey("LLM_API_KEY", llm_key, "llm", spec.canonical, origin, base))
        seen: set[str] = set()
        for spec in specs.values():
            if not spec.builtin or spec.key_env is None or spec.canonical in seen:
                continue
            seen.add(spec.canonical)
            value = env.get(spec.key_env)
            home = spec.deployment_url()
            if value and (home or operator_origin or spec.url_env is None):
                # A class whose endpoint only a deployer names (Azure) gets its key only where that is set.
                origin = operator_origin or origin_of(home)
                base = None if operator_origin else home
                keys.append(DeploymentKey(spec.key_env, value, "llm", spec.canonical, origin, base))
        return cls(tuple(keys))

    def values(self) -> list[str]:
        """Every key value (for the redactor)."""
        return [key.value for key in self.keys]

    def for_alquimia(self, base_url: str | None) -> DeploymentKey | None:
        """The deployment key an Alquimia request may use: `base_url` None means the deployment's agent."""
        for key in self.keys:
            if key.runner != "alquimia":
                continue
            if base_url is None or origin_of(base_url) == key.origin:
                return key
        return None

    def for_llm(self, spec: ConnectorSpec, base_url: str | None) -> DeploymentKey | None:
        """The deployment key an LLM request for `spec` may use (`base_url` None: the key's own endpoint)."""
        for key in self.keys:
            if key.runner != "llm" or key.connector != spec.canonical:
                continue
            if base_url is None or origin_of(base_url) == key.origin:
                return key
        return None

    def holders(self, runner: str) -> list[str]:
        """Names of the keys a runner could use, with where they go (for the error message)."""
        return [
            f"{key.name} (only for {key.connector or 'the Alquimia agent'} at {key.origin or 'its endpoint'})"
            for key in self.keys
            if key.runner == runner
        ]
