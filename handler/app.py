"""The Lambda entrypoint: detect the event source, parse, run the library, map errors to the envelope.

Thin on purpose: the work lives in `fair_runners`. Synchronous; one event loop per invocation.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from fair_runners import (
    ConfigurationError,
    Deadline,
    InternalError,
    InvalidRequest,
    RunRequest,
    RunResult,
    RunTotals,
    Settings,
    TurnFinished,
    aws,
    execute,
    prepare,
)
from fair_runners._events import Event
from fair_runners._redact import current_redactor, install_log_redaction, powertools_formatter, use_redactor
from fair_runners.runners import alquimia as _alquimia  # noqa: F401  # load its HTTP stack at init, not per call

from .sources import Source, detect, http_payload, http_response

logger = Logger(service="fair-runners", logger_formatter=powertools_formatter())  # every line redacted
install_log_redaction()  # and the root logger's handlers (engine, httpx, SDK loggers)
metrics = Metrics(namespace="FairRunners", service="fair-runners")


def _deadline(context: Any, source: Source, settings: Settings) -> Deadline:
    budget: float | None = None
    remaining_ms = getattr(context, "get_remaining_time_in_millis", None)
    if callable(remaining_ms):
        remaining = max(0.0, remaining_ms() / 1000)
        budget = remaining - min(settings.safety_margin_s, remaining * 0.2)
    if source.behind_api_gateway:
        # Counted from the event's arrival: S3 reads, secrets and validation already used some of it.
        http_budget = settings.http_deadline_s - (time.monotonic() - source.received_at)
        budget = http_budget if budget is None else min(budget, http_budget)
    return Deadline.after(budget)


# Values of one metric in one EMF document: CloudWatch's limit, and where Powertools starts a new document.
_EMF_MAX_VALUES = 100


def _record(event: Event, latencies: list[float]) -> None:
    """Keep each turn's latency for the run's EMF distribution (`_publish_latencies`)."""
    if isinstance(event, TurnFinished) and event.record.latency_ms is not None:
        latencies.append(event.record.latency_ms)


def _publish_latencies(latencies: list[float]) -> None:
    """`TurnLatency`, every value, in EMF documents of 100 values, as Powertools writes them. Once per run:
    `add_metric` per turn cost ~10 us of CPU a turn (it formats the pending values on every call)."""
    for start in range(0, len(latencies), _EMF_MAX_VALUES):
        values = latencies[start : start + _EMF_MAX_VALUES]
        latency = {"Unit": MetricUnit.Milliseconds.value, "StorageResolution": 60, "Value": values}
        sys.stdout.write(json.dumps(metrics.serialize_metric_set(metrics={"TurnLatency": latency})) + "\n")


def _record_totals(totals: RunTotals) -> None:
    metrics.add_metric(name="TurnsOk", unit=MetricUnit.Count, value=totals.successes)
    metrics.add_metric(name="TurnsFailed", unit=MetricUnit.Count, value=totals.failures)
    metrics.add_metric(name="TurnsSkipped", unit=MetricUnit.Count, value=totals.skipped)
    metrics.add_metric(name="TurnRetries", unit=MetricUnit.Count, value=totals.retries)
    metrics.add_metric(name="InputTokens", unit=MetricUnit.Count, value=totals.input_tokens)
    metrics.add_metric(name="OutputTokens", unit=MetricUnit.Count, value=totals.output_tokens)
    metrics.add_metric(name="RunWallTime", unit=MetricUnit.Milliseconds, value=totals.wall_time_ms)


def _run(
    payload: Any,
    context: Any,
    source: Source,
    *,
    channel: aws.Channel,
    part: str = "result",
    idempotent: bool = False,
) -> dict[str, Any]:
    settings = Settings.from_env()
    aws_settings = aws.AwsSettings.from_env()
    request = aws.load_request(payload, aws_settings)  # reads datasets_uri / request_uri from S3
    credentials = aws.resolve_credentials(request, aws_settings)  # deployment keys from secret stores
    prepared = prepare(request, settings=settings, credentials=credentials)
    logger.append_keys(run_id=prepared.run_id, mode=prepared.request.mode)
    spill_to = aws.destination(prepared.request, aws_settings, prepared.run_id, part)
    aws.check_fits(prepared.request, channel, can_spill=spill_to is not None, idempotent=idempotent)
    deadline = _deadline(context, source, settings)
    logger.info(
        "run started",
        extra={
            "sessions": len(prepared.request.datasets),
            "turns": sum(len(d.conversation) for d in prepared.request.datasets),
            "deadline_s": None if deadline.at is None else round(deadline.remaining(), 3),
        },
    )
    latencies: list[float] = []
    try:
        result: RunResult = asyncio.run(
            execute(prepared, deadline=deadline, on_event=lambda event: _record(event, latencies))
        )
    finally:  # what a crashed run measured still goes out
        _publish_latencies(latencies)
    _record_totals(result.totals)
    logger.info("run finished", extra={"complete": result.complete, **result.totals.model_dump()})
    # A backend may echo a key inside an answer: mask the run's registered secrets everywhere (the copy
    # spilled to S3 included).
    body: dict[str, Any] = prepared.redactor.redact_obj(result.model_dump(mode="json"), patterns=False)
    answer = aws.fit(
        body,
        channel,
        target=spill_to,
        write=lambda at, data: aws.write_json(aws.clients(), at, data),
        idempotent=idempotent,
    )
    if "result_uri" in answer:
        logger.info("result written to S3", extra={"result_uri": answer["result_uri"]})
    return answer


def _error_body(message: str, details: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"success": False, "error": message}
    if details:
        body["details"] = details
    body.update(extra)
    redacted: dict[str, Any] = current_redactor().redact_obj(body)
    return redacted


def _start_run(payload: Any) -> dict[str, Any]:
    """`POST /runs`: the same validation as `POST /run` (no backend call), then start the state machine."""
    settings = Settings.from_env()
    aws_settings = aws.AwsSettings.from_env()
    request = aws.load_request(payload, aws_settings)

    def validate(checked: RunRequest) -> list[str]:
        credentials = aws.resolve_credentials(checked, aws_settings)
        return prepare(checked, settings=settings, credentials=credentials).warnings

    body = aws.start_run(payload, request, aws_settings, validate=validate)
    started = 0 if body.get("already_started") else 1
    metrics.add_metric(name="RunsStarted", unit=MetricUnit.Count, value=started)
    logger.info("run started on Step Functions", extra={"run_id": body["run_id"]})
    return {"status": 200 if body.get("already_started") else 202, "body": body}


def _handle_http(source: Source, context: Any, request_id: str) -> dict[str, Any]:
    path = source.path.rstrip("/") or "/"
    method = source.method
    if path == "/runs" or path.startswith("/runs/"):
        route = "POST /runs" if path == "/runs" else "GET /runs/{run_id}"
        allowed = "POST" if path == "/runs" else "GET"
    elif path == "/run" or (path == "/" and source.kind == "function_url"):
        route, allowed = "POST /run", "POST"
    else:
        metrics.add_metric(name="RequestsRejected", unit=MetricUnit.Count, value=1)
        return http_response(404, _error_body(f"no route for {method} {source.path}"), request_id)
    if method != allowed:
        metrics.add_metric(name="RequestsRejected", unit=MetricUnit.Count, value=1)
        return http_response(
            405, _error_body(f"{method} is not allowed on {path}: use {allowed}"), request_id
        )
    if route == "GET /runs/{run_id}":
        run_id = path[len("/runs/") :]
        metrics.add_metric(name="RunStatusReads", unit=MetricUnit.Count, value=1)
        return http_response(200, aws.describe_run(run_id, aws.AwsSettings.from_env()), request_id)
    payload = http_payload(source)
    if isinstance(payload, dict) and "request_uri" in payload:
        # A stored request holds another run's target and maybe its inline key: only the state machine,
        # which wrote it, may point a batch at it; an HTTP caller sends its own.
        raise InvalidRequest(
            "request_uri is not accepted over HTTP",
            [
                {
                    "loc": "request_uri",
                    "msg": "only Step Functions executions read a stored request; over HTTP send "
                    "`config` or `connector` (keys may come from the deployment's secrets)",
                }
            ],
        )
    aws_settings = aws.AwsSettings.from_env()
    key = aws.idempotency_key(source.headers, payload)
    idempotent = bool(key and aws_settings.idempotency_table)

    def work() -> dict[str, Any]:
        if route == "POST /runs":
            return _start_run(payload)
        answer = _run(payload, context, source, channel=aws.Channel.HTTP, idempotent=idempotent)
        return {"status": 200, "body": answer}

    outcome, replayed = aws.once(
        work, key=key, route=route, payload=payload, context=context, settings=aws_settings
    )
    response = http_response(int(outcome["status"]), outcome["body"], request_id)
    if replayed:
        metrics.add_metric(name="IdempotentReplays", unit=MetricUnit.Count, value=1)
        response["headers"]["Idempotent-Replayed"] = "true"
    return response


@metrics.log_metrics
def lambda_handler(event: Any, context: Any) -> Any:
    """Answer one event of any supported source (see `handler.sources`)."""
    request_id = str(getattr(context, "aws_request_id", "") or uuid.uuid4())
    logger.clear_state()  # keys of the previous (warm) invocation must not leak into this one
    logger.set_correlation_id(request_id)
    use_redactor(None)  # the previous (warm) invocation's keys are not this one's
    source: Source | None = None
    try:
        source = detect(event)
        logger.append_keys(source=source.kind)
        if source.is_http:
            return _handle_http(source, context, request_id)
        if source.kind == "map_batch":
            return _run(
                source.payload, context, source, channel=aws.Channel.STATE, part=f"batches/{request_id}"
            )
        return _run(source.payload, context, source, channel=aws.Channel.INVOKE)
    except InvalidRequest as exc:
        logger.info("request rejected", extra={"error": exc.message, "status": exc.status_code})
        metrics.add_metric(name="RequestsRejected", unit=MetricUnit.Count, value=1)
        if source is not None and source.is_http:
            return http_response(exc.status_code, _error_body(exc.message, exc.details), request_id)
        redactor = current_redactor()
        exc.message = redactor.redact(exc.message)
        exc.details = redactor.redact_obj(exc.details)
        exc.args = (exc.message,)
        raise
    except aws.AwsServiceUnavailable as exc:
        logger.warning("AWS service unavailable", extra={"error": str(exc)})
        metrics.add_metric(name="RequestsFailed", unit=MetricUnit.Count, value=1)
        if source is not None and source.is_http:
            return http_response(503, _error_body(str(exc), request_id=request_id), request_id)
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
