"""Errors of the AWS layer (class names are stable: the state machine's `Retry`/`Catch` match on them).

FairRunnersError
├── InvalidRequest
│   ├── IdempotencyConflict   the Idempotency-Key is in use (still running, or another body) -> 409
│   └── RunNotFound           no run with this id                                         -> 404
└── AwsServiceUnavailable     an AWS call failed transiently (throttling, 5xx, network): retried
"""

from __future__ import annotations

from .._errors import FairRunnersError, InvalidRequest


class IdempotencyConflict(InvalidRequest):
    """The same Idempotency-Key is in flight, or was used with a different request body."""

    status_code = 409


class RunNotFound(InvalidRequest):
    """`GET /runs/{run_id}` for a run this deployment never started (or that expired)."""

    status_code = 404


class AwsServiceUnavailable(FairRunnersError):
    """An AWS service (S3, Step Functions, DynamoDB, a secret store) failed in a way worth retrying."""
