"""AWS deployment settings read from the environment (the template sets them).

| env variable                     | default | meaning                                                       |
|----------------------------------|---------|---------------------------------------------------------------|
| RESULTS_BUCKET                   | unset   | where large results, run inputs and Map results go            |
| STATE_MACHINE_ARN                | unset   | the Distributed Map state machine `POST /runs` starts         |
| IDEMPOTENCY_TABLE                | unset   | DynamoDB table: idempotency is on when set                    |
| ALQUIMIA_API_KEY_SECRET          | unset   | Secrets Manager name/ARN, or `ssm:/path`, of the Alquimia key |
| LLM_API_KEY_SECRET               | unset   | the same for the LLM provider key                             |
| FAIR_RUNNERS_SECRETS_MAX_AGE_S   | 300     | how long a secret value is cached in a warm Lambda            |
| FAIR_RUNNERS_PRESIGN_EXPIRY_S    | 3600    | lifetime of the result link `GET /runs/{run_id}` answers      |
| FAIR_RUNNERS_MAX_INPUT_BYTES     | 52428800| largest `datasets_uri` file read (50 MiB)                     |
| FAIR_RUNNERS_S3_BUCKETS          | unset   | more buckets (comma list) `datasets_uri`/`output_uri` may use |
| FAIR_RUNNERS_IDEMPOTENCY_TTL_S   | 86400   | how long a first answer is replayed for the same key          |

A secret secret's JSON field is picked with `#field` (e.g. `prod/alquimia#api_key`). A payload can never
name a secret: the names come from the environment only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .._errors import ConfigurationError, InvalidRequest


def _int_env(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"env {name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigurationError(f"env {name} must be >= {minimum}, got {raw!r}")
    return value


def _opt(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


@dataclass(frozen=True)
class AwsSettings:
    """Effective AWS settings of this deployment."""

    results_bucket: str | None = None
    state_machine_arn: str | None = None
    idempotency_table: str | None = None
    alquimia_key_secret: str | None = None
    llm_key_secret: str | None = None
    secrets_max_age_s: int = 300
    presign_expiry_s: int = 3600
    max_input_bytes: int = 50 * 1024 * 1024
    extra_buckets: frozenset[str] = field(default_factory=frozenset)
    idempotency_ttl_s: int = 86400

    @classmethod
    def from_env(cls) -> AwsSettings:
        """Read the settings (see the module docstring)."""
        extra = frozenset(
            b.strip() for b in os.environ.get("FAIR_RUNNERS_S3_BUCKETS", "").split(",") if b.strip()
        )
        return cls(
            results_bucket=_opt("RESULTS_BUCKET"),
            state_machine_arn=_opt("STATE_MACHINE_ARN"),
            idempotency_table=_opt("IDEMPOTENCY_TABLE"),
            alquimia_key_secret=_opt("ALQUIMIA_API_KEY_SECRET"),
            llm_key_secret=_opt("LLM_API_KEY_SECRET"),
            secrets_max_age_s=_int_env("FAIR_RUNNERS_SECRETS_MAX_AGE_S", 300, 0),
            presign_expiry_s=_int_env("FAIR_RUNNERS_PRESIGN_EXPIRY_S", 3600, 1),
            max_input_bytes=_int_env("FAIR_RUNNERS_MAX_INPUT_BYTES", 50 * 1024 * 1024, 1),
            extra_buckets=extra,
            idempotency_ttl_s=_int_env("FAIR_RUNNERS_IDEMPOTENCY_TTL_S", 86400, 1),
        )

    @property
    def allowed_buckets(self) -> frozenset[str]:
        """Buckets a request may read from or write to (empty: any, for local use without a deployment)."""
        base = {self.results_bucket} if self.results_bucket else set()
        return frozenset(base | self.extra_buckets)

    def check_bucket(self, bucket: str, loc: str) -> None:
        """Refuse a bucket this deployment does not own: a request must not steer its role elsewhere."""
        allowed = self.allowed_buckets
        if allowed and bucket not in allowed:
            raise InvalidRequest(
                f"{loc}: bucket {bucket!r} is not one this deployment uses",
                [
                    {
                        "loc": loc,
                        "msg": f"use a bucket among {sorted(allowed)} "
                        "(the deployer adds more with env FAIR_RUNNERS_S3_BUCKETS and IAM)",
                    }
                ],
            )

    def require_bucket(self, what: str) -> str:
        """The results bucket, or a `ConfigurationError` saying which env variable to set."""
        if not self.results_bucket:
            raise ConfigurationError(f"{what} needs env RESULTS_BUCKET (the template sets it)")
        return self.results_bucket
