"""Replay the first answer of a repeated `POST /run` / `POST /runs` (Powertools idempotency, DynamoDB).

On only when env `IDEMPOTENCY_TABLE` is set and the caller gives a key: the `Idempotency-Key` header, else
the body's `run_id`. The record is keyed by route and key; the body's SHA-256 is the validation payload, so
reusing a key with another body is a 409, as is a repeat while the first call still runs. Only answers are
stored (errors are not), for `FAIR_RUNNERS_IDEMPOTENCY_TTL_S` (the table's TTL attribute is `expiration`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from ._clients import AwsClients, clients
from ._errors import AwsServiceUnavailable, IdempotencyConflict
from ._settings import AwsSettings

_layers: dict[tuple[str, int], Any] = {}


def body_digest(payload: Any) -> str:
    """A stable hash of a request body."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def idempotency_key(headers: dict[str, str] | None, payload: Any) -> str | None:
    """The caller's key: the `Idempotency-Key` header, else a `run_id` in the body."""
    key = (headers or {}).get("idempotency-key", "").strip()
    if key:
        return key[:256]
    if isinstance(payload, dict) and isinstance(payload.get("run_id"), str) and payload["run_id"]:
        return str(payload["run_id"])
    return None


def _layer(table: str, aws: AwsClients) -> Any:
    client = aws.dynamodb
    layer = _layers.get((table, id(client)))
    if layer is None:
        from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

        _layers.clear()  # one client at a time: a swapped client (tests) must not keep the old one alive
        layer = DynamoDBPersistenceLayer(table_name=table, boto3_client=client)
        _layers[(table, id(client))] = layer
    return layer


def once(
    work: Callable[[], dict[str, Any]],
    *,
    key: str | None,
    route: str,
    payload: Any,
    context: Any,
    settings: AwsSettings,
    aws: AwsClients | None = None,
) -> tuple[dict[str, Any], bool]:
    """Run `work` once per (route, key); return (answer, True when it was replayed)."""
    if not settings.idempotency_table or not key:
        return work(), False
    from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
    from aws_lambda_powertools.utilities.idempotency.exceptions import (
        IdempotencyAlreadyInProgressError,
        IdempotencyPersistenceLayerError,
        IdempotencyValidationError,
    )

    config = IdempotencyConfig(
        event_key_jmespath="[route, key]",
        payload_validation_jmespath="body_sha256",
        raise_on_no_idempotency_key=True,
        expires_after_seconds=settings.idempotency_ttl_s,
    )
    if context is not None and callable(getattr(context, "get_remaining_time_in_millis", None)):
        config.register_lambda_context(context)
    ran = False

    def call(request: dict[str, Any]) -> dict[str, Any]:
        nonlocal ran
        ran = True
        return work()

    wrapped = idempotent_function(
        call,
        data_keyword_argument="request",
        persistence_store=_layer(settings.idempotency_table, aws or clients()),
        config=config,
        key_prefix="fair-runners",
    )
    data = {"route": route, "key": key, "body_sha256": body_digest(payload)}
    try:
        answer = wrapped(request=data)
    except IdempotencyAlreadyInProgressError:
        raise IdempotencyConflict(
            f"a request with Idempotency-Key {key!r} is still running: retry later to get its answer",
            [{"loc": "headers.idempotency-key", "msg": "in progress"}],
        ) from None
    except IdempotencyValidationError:
        raise IdempotencyConflict(
            f"Idempotency-Key {key!r} was already used with a different request body",
            [{"loc": "headers.idempotency-key", "msg": "reused with another body: use a new key"}],
        ) from None
    except IdempotencyPersistenceLayerError as exc:
        raise AwsServiceUnavailable(f"the idempotency store failed ({type(exc).__name__}); retry") from None
    return answer, not ran
