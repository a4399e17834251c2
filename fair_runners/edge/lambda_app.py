"""The Lambda entrypoint: detect the event source, parse, run the library, map errors to the envelope.

Data flows one way: event -> `Source` (`_sources`) -> request -> `answer_request` / `start_execution`
(`_invocation`) -> envelope (`_envelope`). Synchronous; one event loop per invocation.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

from aws_lambda_powertools import Logger

from .. import aws
from .._connectors import ENV_PRELOAD, preload
from .._errors import ConfigurationError, InternalError, InvalidRequest
from .._redact import current_redactor, install_log_redaction, powertools_formatter, use_redactor
from ..runners import alquimia as _alquimia  # noqa: F401  # load its HTTP stack at init, not per call
from ._envelope import error_body, http_response
from ._invocation import answer_request, start_execution
from ._metrics import count, metrics
from ._sources import Source, detect, http_payload

logger = Logger(service="fair-runners", logger_formatter=powertools_formatter())  # every line redacted
install_log_redaction()  # and the root logger's handlers (engine, httpx, SDK loggers)
for _problem in preload(os.environ.get(ENV_PRELOAD, "")):  # opt-in: LangChain at init, not per call
    logger.warning(_problem)


def _route(source: Source) -> tuple[str, str] | None:
    """(route, the one method it takes) for an HTTP event's path; None when no route matches."""
    path = source.path.rstrip("/") or "/"
    if path == "/runs":
        return "POST /runs", "POST"
    if path.startswith("/runs/"):
        return "GET /runs/{run_id}", "GET"
    if path == "/run" or (path == "/" and source.kind == "function_url"):
        return "POST /run", "POST"
    return None


def _handle_http(source: Source, context: Any, request_id: str) -> dict[str, Any]:
    found = _route(source)
    path = source.path.rstrip("/") or "/"
    method = source.method
    if found is None:
        count("RequestsRejected")
        return http_response(404, error_body(f"no route for {method} {source.path}"), request_id)
    route, allowed = found
    if method != allowed:
        count("RequestsRejected")
        return http_response(405, error_body(f"{method} is not allowed on {path}: use {allowed}"), request_id)
    if route == "GET /runs/{run_id}":
        count("RunStatusReads")
        status = aws.describe_execution(path[len("/runs/") :], aws.AwsSettings.from_env())
        return http_response(200, status, request_id)
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
            return start_execution(payload)
        answer = answer_request(payload, context, source, channel=aws.Channel.HTTP, idempotent=idempotent)
        return {"status": 200, "body": answer}

    outcome, replayed = aws.once(
        work, key=key, route=route, payload=payload, context=context, settings=aws_settings
    )
    response = http_response(int(outcome["status"]), outcome["body"], request_id)
    if replayed:
        count("IdempotentReplays")
        response["headers"]["Idempotent-Replayed"] = "true"
    return response


@metrics.log_metrics
def lambda_handler(event: Any, context: Any) -> Any:
    """Answer one event of any supported source (see `fair_runners.edge._sources`)."""
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
            return answer_request(
                source.payload, context, source, channel=aws.Channel.STATE, part=f"batches/{request_id}"
            )
        return answer_request(source.payload, context, source, channel=aws.Channel.INVOKE)
    except InvalidRequest as exc:
        logger.info("request rejected", extra={"error": exc.message, "status": exc.status_code})
        count("RequestsRejected")
        if source is not None and source.is_http:
            return http_response(exc.status_code, error_body(exc.message, exc.details), request_id)
        redactor = current_redactor()
        exc.message = redactor.redact(exc.message)
        exc.details = redactor.redact_obj(exc.details)
        exc.args = (exc.message,)
        raise
    except aws.AwsServiceUnavailable as exc:
        logger.warning("AWS service unavailable", extra={"error": str(exc)})
        count("RequestsFailed")
        if source is not None and source.is_http:
            return http_response(503, error_body(str(exc), request_id=request_id), request_id)
        raise
    except ConfigurationError as exc:
        logger.error("deployment misconfigured", extra={"error": str(exc)})
        count("RequestsFailed")
        if source is not None and source.is_http:
            return http_response(500, error_body(str(exc), request_id=request_id), request_id)
        raise
    except Exception:
        logger.exception("internal error")
        count("RequestsFailed")
        message = f"internal error (request id {request_id})"
        if source is not None and source.is_http:
            return http_response(500, error_body(message, request_id=request_id), request_id)
        raise InternalError(message) from None
