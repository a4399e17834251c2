"""One invocation's work: answer a request (`answer_request`), or start a large run on Step Functions
(`start_execution`). Both take the request from the event source and give back what the envelope sends.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aws_lambda_powertools import Logger

from .. import aws
from .._api import execute
from .._request import prepare
from .._schemas import RunRequest, RunResult
from .._settings import Settings
from ..engine import Deadline
from ._metrics import LatencyRecorder, count, record_totals
from ._sources import Source

logger = Logger(service="fair-runners", child=True)


def run_deadline(context: Any, source: Source, settings: Settings) -> Deadline:
    """The Lambda's remaining time minus a safety margin, and at most API Gateway's budget behind it."""
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


def answer_request(
    payload: Any,
    context: Any,
    source: Source,
    *,
    channel: aws.Channel,
    part: str = "result",
    idempotent: bool = False,
) -> dict[str, Any]:
    """Validate, run and shape one request for its channel (inline, or written to S3 when it must spill)."""
    settings = Settings.from_env()
    aws_settings = aws.AwsSettings.from_env()
    request = aws.load_request(payload, aws_settings)  # reads datasets_uri / request_uri from S3
    credentials = aws.resolve_credentials(request, aws_settings)  # deployment keys from secret stores
    prepared = prepare(request, settings=settings, credentials=credentials, lambda_env=True)
    logger.append_keys(run_id=prepared.run_id, mode=prepared.request.mode)
    spill_to = aws.destination(prepared.request, aws_settings, prepared.run_id, part)
    aws.check_fits(prepared.request, channel, can_spill=spill_to is not None, idempotent=idempotent)
    deadline = run_deadline(context, source, settings)
    logger.info(
        "run started",
        extra={
            "sessions": len(prepared.request.datasets),
            "turns": sum(len(d.conversation) for d in prepared.request.datasets),
            "deadline_s": None if deadline.at is None else round(deadline.remaining(), 3),
        },
    )
    latencies = LatencyRecorder()
    try:
        result: RunResult = asyncio.run(execute(prepared, deadline=deadline, on_progress=latencies))
    finally:  # what a crashed run measured still goes out
        latencies.publish()
    record_totals(result.totals)
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
        always_write=channel is not aws.Channel.STATE and prepared.request.output_uri is not None,
    )
    if "result_uri" in answer:
        logger.info("result written to S3", extra={"result_uri": answer["result_uri"]})
    return answer


def start_execution(payload: Any) -> dict[str, Any]:
    """`POST /runs`: the same validation as `POST /run` (no backend call), then start the state machine."""
    settings = Settings.from_env()
    aws_settings = aws.AwsSettings.from_env()
    request = aws.load_request(payload, aws_settings)

    def validate(checked: RunRequest) -> list[str]:
        credentials = aws.resolve_credentials(checked, aws_settings)
        prepared = prepare(checked, settings=settings, credentials=credentials, lambda_env=True)
        asyncio.run(prepared.vet_targets())
        return prepared.warnings

    body = aws.start_execution(payload, request, aws_settings, validate=validate)
    started = 0 if body.get("already_started") else 1
    count("RunsStarted", started)
    logger.info("run started on Step Functions", extra={"run_id": body["run_id"]})
    return {"status": 200 if body.get("already_started") else 202, "body": body}
