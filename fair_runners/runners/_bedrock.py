"""Amazon Bedrock clients for `ChatBedrockConverse`, on the Lambda role's own credentials.

The clients are built from one boto3 session (the standard AWS credential chain; the region from the
request's `region_name` or env `AWS_REGION`; an endpoint override only from the deployer's env
`AWS_ENDPOINT_URL_BEDROCK_RUNTIME`, which botocore reads itself) and kept per process: building them costs
~0.1-0.2 s, a warm Lambda's next run pays nothing. They are thread-safe, so every turn's thread shares them.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from .._proxies import botocore_proxies
from ._threaded import bedrock_client_config


@functools.lru_cache(maxsize=8)
def _session() -> Any:
    import boto3

    return boto3.session.Session()


# What botocore reads from env when it builds a client: a client built under other values is not reused.
_CLIENT_ENV = (
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_BEDROCK_RUNTIME",
    "AWS_ENDPOINT_URL_BEDROCK",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "FAIR_RUNNERS_TRUST_ENV",
)


def bedrock_clients(
    region: str | None, read_timeout_s: float, connect_timeout_s: float, max_pool_connections: int
) -> tuple[Any, Any]:
    """(the bedrock-runtime client, the bedrock control-plane client) for these settings, kept per process.

    One attempt per call (the engine retries), the read timeout bounds every call's thread, and the pool
    holds as many connections as turns run at once; env proxies as the runners use them.
    """
    env = tuple(os.environ.get(name) for name in _CLIENT_ENV)
    return _clients(region, read_timeout_s, connect_timeout_s, max_pool_connections, env)


@functools.lru_cache(maxsize=16)
def _clients(
    region: str | None,
    read_timeout_s: float,
    connect_timeout_s: float,
    max_pool_connections: int,
    env: tuple[str | None, ...],
) -> tuple[Any, Any]:
    del env  # part of the cache key only
    config = bedrock_client_config(read_timeout_s, connect_timeout_s, max_pool_connections)
    config = config.merge(_proxy_config())
    session = _session()
    runtime = session.client("bedrock-runtime", region_name=region, config=config)
    control = session.client("bedrock", region_name=region, config=config)
    return runtime, control


def _proxy_config() -> Any:
    from botocore.config import Config

    return Config(proxies=botocore_proxies())
