"""The Lambda entrypoint: detect the event source, parse, run the library, map errors to the envelope.

Thin on purpose: the work lives in `fair_runners`. Synchronous; one event loop per invocation.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from fair_runners import (
    ConfigurationError,
    Deadline,
    InternalError,
    InvalidRequest,
    RunResult,
    Settings,
    TurnFinished,
    execute,
    prepare,
)
from fair_runners._events import Event
from fair_runners.runners import alquimia as _alquimia  # noqa: F401  # load its HTTP stack at init, not per call

from .sources import Source, detect, http_payload, http_response

logger = Logger(service="fair-runners")
metrics = Metrics(namespace="FairRunners", service="fair-runners")


def _deadline(context: Any, source: Source, settings: Settings) -> Deadline:
    budget: float | None = None
    remaining_ms = getattr(context, "get_remaining_time_in_millis", None)
    if callable(remaining_ms):
        remaining = max(0.0, remaining_ms() / 1000)
        budget = remaining - min(settings.safety_margin_s, remaining * 0.2)
    if source.behind_api_gateway:
        budget = settings.http_deadline_s if budget is None else min(budget, settings.http_deadline_s)
    return Deadline.after(budget)


def _record(event: Event) -> None:
    if isinstance(event, TurnFinished):
        record = event.record
        if record.status == "ok":
            metrics.add_metric(name="TurnsOk", unit=MetricUnit.Count, value=1)
        elif record.status == "error":
            metrics.add_metric(name="TurnsFailed", unit=MetricUnit.Count, value=1)
        elif record.status == "skipped":
            metrics.add_metric(name="TurnsSkipped", unit=MetricUnit.Count, value=1)
        if record.latency_ms is not None:
            metrics.add_metric(name="TurnLatency", unit=MetricUnit.Milliseconds, value=record.latency_ms)
        if record.attempts > 1:
            metrics.add_metric(name="TurnRetries", unit=MetricUnit.Count, value=record.attempts - 1)


def _run(payload: Any, context: Any, source: Source) -> RunResult:
    settings = Settings.from_env()
    prepared = prepare(payload, settings=settings)
    logger.append_keys(run_id=prepared.run_id, mode=prepared.request.mode)
    deadline = _deadline(context, source, settings)
    logger.info(
        "run started",
        extra={
            "sessions": len(prepared.request.datasets),
            "turns": sum(len(d.conversation) for d in prepared.request.datasets),
            "deadline_s": None if deadline.at is None else round(deadline.remaining(), 3),
        },
    )
    result = asyncio.run(execute(prepared, deadline=deadline, on_event=_record))
    metrics.add_metric(name="RunWallTime", unit=MetricUnit.Milliseconds, value=result.totals.wall_time_ms)
    logger.info("run finished", extra={"complete": result.complete, **result.totals.model_dump()})
    return result


def _error_body(message: str, details: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"success": False, "error": message}
    if details:
        body["details"] = details
    body.update(extra)
    return body


def _handle_http(source: Source, context: Any, request_id: str) -> dict[str, Any]:
    path = source.path.rstrip("/") or "/"
    allowed_paths = ("/run", "/") if source.kind == "function_url" else ("/run",)
    if path not in allowed_paths or source.method != "POST":
        metrics.add_metric(name="RequestsRejected", unit=MetricUnit.Count, value=1)
    if path not in allowed_paths:
        return http_response(404, _error_body(f"no route for {source.method} {source.path}"), request_id)
    if source.method != "POST":
        return http_response(
            405, _error_body(f"{source.method} is not allowed on {path}: use POST"), request_id
        )
    result = _run(http_payload(source), context, source)
    return http_response(200, result.model_dump(mode="json"), request_id)


@metrics.log_metrics
def lambda_handler(event: Any, context: Any) -> Any:
    """Answer one event of any supported source (see `handler.sources`)."""
    request_id = str(getattr(context, "aws_request_id", "") or uuid.uuid4())
    logger.clear_state()  # keys of the previous (warm) invocation must not leak into this one
    logger.set_correlation_id(request_id)
    source: Source | None = None
    try:
        source = detect(event)
        logger.append_keys(source=source.kind)
        if source.is_http:
            return _handle_http(source, context, request_id)
        return _run(source.payload, context, source).model_dump(mode="json")
    except InvalidRequest as exc:
        logger.info("request rejected", extra={"error": exc.message, "status": exc.status_code})
        metrics.add_metric(name="RequestsRejected", unit=MetricUnit.Count, value=1)
        if source is not None and source.is_http:
            return http_response(exc.status_code, _error_body(exc.message, exc.details), request_id)
        raise
    except ConfigurationError as exc:
        logger.error("deployment misconfigured", extra={"error": str(exc)})
        metrics.add_metric(name="RequestsFailed", unit=MetricUnit.Count, value=1)
        if source is not None and source.is_http:
            return http_response(500, _error_body(str(exc), request_id=request_id), request_id)
        raise
    except Exception:
        logger.exception("internal error")
        metrics.add_metric(name="RequestsFailed", unit=MetricUnit.Count, value=1)
        message = f"internal error (request id {request_id})"
        if source is not None and source.is_http:
            return http_response(500, _error_body(message, request_id=request_id), request_id)
        raise InternalError(message) from None
