"""boto3 clients, created lazily (cold start pays only for what a request uses) and injectable (tests).

`clients()` returns the process-wide `AwsClients`; `use_clients(...)` replaces it (pass `None` to reset,
e.g. after entering moto's `mock_aws`). Nothing here imports boto3 until a client is asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_stepfunctions import SFNClient


class AwsClients:
    """A lazily filled set of boto3 clients; pass any of them to inject your own."""

    def __init__(
        self,
        *,
        s3: S3Client | None = None,
        sfn: SFNClient | None = None,
        dynamodb: DynamoDBClient | None = None,
        secretsmanager: Any = None,
        ssm: Any = None,
    ) -> None:
        self._s3 = s3
        self._sfn = sfn
        self._dynamodb = dynamodb
        self._secretsmanager = secretsmanager
        self._ssm = ssm

    @staticmethod
    def _client(name: str) -> Any:
        import boto3
        from botocore.config import Config

        from .._proxies import botocore_proxies

        config = Config(
            retries={"mode": "standard", "max_attempts": 5},
            signature_version="s3v4",
            proxies=botocore_proxies(),  # the runners' env proxies; none with FAIR_RUNNERS_TRUST_ENV=0
        )
        return boto3.client(name, config=config)  # type: ignore[call-overload]

    @property
    def s3(self) -> S3Client:
        """The S3 client."""
        if self._s3 is None:
            self._s3 = self._client("s3")
        return self._s3

    @property
    def sfn(self) -> SFNClient:
        """The Step Functions client."""
        if self._sfn is None:
            self._sfn = self._client("stepfunctions")
        return self._sfn

    @property
    def dynamodb(self) -> DynamoDBClient:
        """The DynamoDB client (idempotency store)."""
        if self._dynamodb is None:
            self._dynamodb = self._client("dynamodb")
        return self._dynamodb

    @property
    def secretsmanager(self) -> Any:
        """The Secrets Manager client."""
        if self._secretsmanager is None:
            self._secretsmanager = self._client("secretsmanager")
        return self._secretsmanager

    @property
    def ssm(self) -> Any:
        """The SSM client (Parameter Store)."""
        if self._ssm is None:
            self._ssm = self._client("ssm")
        return self._ssm


_current: AwsClients | None = None


def clients() -> AwsClients:
    """The process-wide clients (reused by warm invocations)."""
    global _current
    if _current is None:
        _current = AwsClients()
    return _current


def use_clients(new: AwsClients | None) -> None:
    """Replace the process-wide clients; `None` drops them so the next use creates fresh ones."""
    global _current
    _current = new
    from ._secrets import reset_cache

    reset_cache()
