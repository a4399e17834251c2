"""The exceptions of fair-runners.

Three families that never mix:

    FairRunnersError
    ├── InvalidRequest            the caller sent something wrong -> HTTP 400 / Step Functions error
    │   └── PayloadTooLarge       over a size limit               -> HTTP 413 / `PayloadTooLarge`
    ├── ConfigurationError        the deployment lacks something (env, bucket) -> HTTP 500 with a message
    ├── InternalError             a bug: HTTP 500 with the request id only, no internals
    └── BackendError              one attempt at one turn failed  -> recorded on the turn, never raised out
        ├── TransientBackendError     429, 5xx, timeouts, connection errors, dropped streams: retried
        │   └── RateLimited           429: honours `retry_after`, slows the whole backend down
        ├── AuthenticationFailed      401/403: stops the run for that backend
        └── PermanentBackendError     other 4xx, empty answers, malformed replies: not retried
            ├── AnswerTooLarge        a reply over FAIR_RUNNERS_MAX_ANSWER_BYTES (decoded): not retried
            └── NotCached             `options.cache=only` and no recorded answer: nothing was sent

Class names are stable: Step Functions `Retry`/`Catch` match on them.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any


class FairRunnersError(Exception):
    """Base class of every error raised by fair-runners."""


class InvalidRequest(FairRunnersError):
    """The request is malformed. `details` lists `{"loc": "a.b.0", "msg": "..."}` entries."""

    status_code = 400

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: list[dict[str, Any]] = details or []

    def __str__(self) -> str:
        if not self.details:
            return self.message
        parts = "; ".join(f"{d.get('loc') or 'body'}: {d.get('msg')}" for d in self.details[:10])
        return f"{self.message} [{parts}]"


class PayloadTooLarge(InvalidRequest):
    """The request exceeds a configured limit (named in the message)."""

    status_code = 413


class ConfigurationError(FairRunnersError):
    """The deployment lacks something the request needs (say which env variable to set)."""


class InternalError(FairRunnersError):
    """A bug. The message carries the request id and nothing else."""


class BackendError(FairRunnersError):
    """One attempt at one turn failed. `error_type` is the stable name recorded on the turn."""

    error_type = "backend_error"
    retryable = False

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code


class TransientBackendError(BackendError):
    """A failure worth retrying: 5xx, timeouts, connection errors, a stream that ended early."""

    error_type = "transient"
    retryable = True

    def __init__(
        self, message: str, *, status_code: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status_code=status_code)
        self.retry_after = retry_after


class TurnTimeout(TransientBackendError):
    """The attempt exceeded `turn_timeout_s` (or the stream went idle)."""

    error_type = "timeout"


class RateLimited(TransientBackendError):
    """HTTP 429: back off for the whole backend, honouring `Retry-After`."""

    error_type = "rate_limited"


class AuthenticationFailed(BackendError):
    """HTTP 401/403: the key is wrong; the remaining turns of this backend are not sent."""

    error_type = "authentication"


class PermanentBackendError(BackendError):
    """A failure that will not go away by retrying (other 4xx, empty answer, malformed reply)."""

    error_type = "permanent"


class EmptyAnswer(PermanentBackendError):
    """The backend answered, but with no content."""

    error_type = "empty_answer"


class AnswerTooLarge(PermanentBackendError):
    """The backend sent more than the answer-size limit allows (counted after decompression)."""

    error_type = "too_large"


class NotCached(PermanentBackendError):
    """`options.cache=only` (replay) and the response cache holds no answer for this turn."""

    error_type = "not_cached"


class ProtocolError(PermanentBackendError):
    """The backend's reply did not follow its protocol (no `stream_id`, not JSON, ...)."""

    error_type = "protocol"


def as_backend_error(exc: BaseException) -> BackendError:
    """`exc` itself when it is a `BackendError`; any other failure of a turn is permanent (a bug, not a
    backend hiccup worth retrying)."""
    if isinstance(exc, BackendError):
        return exc
    return PermanentBackendError(f"{type(exc).__name__}: {exc}")


def backend_error_from_status(status: int, message: str, retry_after: float | None = None) -> BackendError:
    """Classify an HTTP status code into the error family the retry policy understands."""
    if status == 429:
        return RateLimited(message, status_code=status, retry_after=retry_after)
    if status in (401, 403):
        return AuthenticationFailed(message, status_code=status)
    if status == 408 or status >= 500:
        return TransientBackendError(message, status_code=status, retry_after=retry_after)
    return PermanentBackendError(message, status_code=status)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or HTTP date); None when absent or invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        from datetime import datetime
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(value)
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            seconds = (when - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError, OverflowError):  # e.g. year 99999999999
            return None
    if seconds != seconds:  # NaN
        return None
    return max(0.0, min(seconds, 3600.0))
