"""Deployment keys from Secrets Manager or SSM Parameter Store, through Powertools parameters (cached).

env `ALQUIMIA_API_KEY_SECRET` / `LLM_API_KEY_SECRET` hold where the key lives:

- `name-or-arn` : a Secrets Manager secret (its string value is the key)
- `name-or-arn#field` : a Secrets Manager secret holding JSON; `field` is the key
- `ssm:/path/to/param` : an SSM parameter (SecureString decrypted)

Only the environment names secrets: nothing in a request can make this module read one. Values are cached
for `FAIR_RUNNERS_SECRETS_MAX_AGE_S` (default 300 s) so warm invocations do not call the store again.
"""

from __future__ import annotations

import json
from typing import Any

from .._errors import ConfigurationError
from .._schemas import RunRequest
from ._clients import AwsClients, clients
from ._errors import AwsServiceUnavailable
from ._settings import AwsSettings

_providers: dict[str, Any] = {}


def reset_cache() -> None:
    """Forget the providers and their cached values (tests, or after swapping clients)."""
    _providers.clear()


def _provider(kind: str, aws: AwsClients) -> Any:
    provider = _providers.get(kind)
    if provider is None:
        from aws_lambda_powertools.utilities import parameters

        if kind == "ssm":
            provider = parameters.SSMProvider(boto3_client=aws.ssm)
        else:
            provider = parameters.SecretsProvider(boto3_client=aws.secretsmanager)
        _providers[kind] = provider
    return provider


def read_secret(reference: str, *, env_name: str, max_age: int, aws: AwsClients | None = None) -> str:
    """Resolve one secret reference (see the module docstring); `ConfigurationError` when it fails."""
    from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

    aws = aws or clients()
    try:
        if reference.startswith("ssm:"):
            value = _provider("ssm", aws).get(reference[len("ssm:") :], max_age=max_age, decrypt=True)
            field = None
        else:
            name, _, field = reference.partition("#")
            value = _provider("secrets", aws).get(name, max_age=max_age)
    except GetParameterError as exc:
        text = str(exc)
        if any(code in text for code in ("Throttling", "InternalServiceError", "ServiceUnavailable")):
            raise AwsServiceUnavailable(f"reading the secret named by env {env_name} failed; retry") from None
        raise ConfigurationError(
            f"cannot read the secret named by env {env_name} ({reference!r}): "
            "check the name and that the function's role may read it"
        ) from None
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if not isinstance(value, str):
        raise ConfigurationError(f"the secret named by env {env_name} is not a string")
    if field:
        try:
            document = json.loads(value)
            value = document[field]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ConfigurationError(
                f"the secret named by env {env_name} has no JSON field {field!r}"
            ) from None
        if not isinstance(value, str):
            raise ConfigurationError(f"field {field!r} of the secret named by env {env_name} is not a string")
    value = value.strip()
    if not value:
        raise ConfigurationError(f"the secret named by env {env_name} is empty")
    return value


def resolve_credentials(
    request: RunRequest, settings: AwsSettings, aws: AwsClients | None = None
) -> dict[str, str]:
    """The deployment keys this request needs and does not carry itself (`prepare(credentials=...)`)."""
    found: dict[str, str] = {}
    if request.mode == "llm":
        params = request.connector.params if request.connector else {}
        if settings.llm_key_secret and params.get("api_key") in (None, ""):
            found["LLM_API_KEY"] = read_secret(
                settings.llm_key_secret,
                env_name="LLM_API_KEY_SECRET",
                max_age=settings.secrets_max_age_s,
                aws=aws,
            )
    else:
        has_key = bool(
            request.config and request.config.api_key and request.config.api_key.get_secret_value()
        )
        if settings.alquimia_key_secret and not has_key:
            found["ALQUIMIA_API_KEY"] = read_secret(
                settings.alquimia_key_secret,
                env_name="ALQUIMIA_API_KEY_SECRET",
                max_age=settings.secrets_max_age_s,
                aws=aws,
            )
    return found
