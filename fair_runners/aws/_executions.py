"""Large runs on Step Functions: `POST /runs` starts an execution of the Distributed Map state machine
(`start_execution`), `GET /runs/{run_id}` reports on it (`describe_execution`).

The run id is the Step Functions execution name, so a run is found again from its id alone and starting the
same id twice cannot start two executions. Layout of a run in S3 (`<base>` is `output_uri`, else
`s3://$RESULTS_BUCKET/runs/`):

    <base><run_id>/datasets.json        the validated datasets, a JSON array (the Map's ItemReader)
    <base><run_id>/request.json         target and options, read by each batch (keeps keys out of history)
    <base><run_id>/map/...              the Map's ResultWriter output (manifest.json, SUCCEEDED_n.json)
    <base><run_id>/batches/<id>.json    batch results too large for a Map state (256 KB)
    <base><run_id>/result.json          the merged result, datasets in input order, with run totals
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from .._errors import ConfigurationError, InvalidRequest
from .._schemas import RunRequest
from ._clients import AwsClients, clients
from ._errors import AwsServiceUnavailable, RunNotFound
from ._s3 import S3Location, dumps, presign, write_json
from ._settings import AwsSettings

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,80}$")
_STATUS = {
    "RUNNING": "running",
    "PENDING_REDRIVE": "running",
    "SUCCEEDED": "succeeded",
    "FAILED": "failed",
    "TIMED_OUT": "failed",
    "ABORTED": "failed",
}
_CAUSE_MAX = 2000


def check_run_id(run_id: str, loc: str = "run_id") -> str:
    """A run id usable as an execution name (letters, digits, `_ . -`, at most 80)."""
    if not RUN_ID_PATTERN.match(run_id):
        raise InvalidRequest(
            f"{loc} {run_id!r} cannot name a run",
            [{"loc": loc, "msg": "1-80 characters among letters, digits, '_', '.', '-'"}],
        )
    return run_id


def execution_arn(state_machine_arn: str, run_id: str) -> str:
    """`arn:...:stateMachine:Name` -> `arn:...:execution:Name:run_id`."""
    head, sep, name = state_machine_arn.rpartition(":stateMachine:")
    if not sep:
        raise ConfigurationError(f"env STATE_MACHINE_ARN is not a state machine ARN: {state_machine_arn!r}")
    return f"{head}:execution:{name}:{run_id}"


def _machine(settings: AwsSettings) -> str:
    if not settings.state_machine_arn:
        raise ConfigurationError("POST /runs needs env STATE_MACHINE_ARN (the template sets it)")
    return settings.state_machine_arn


def _client_error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    return str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""


def run_base(request: RunRequest, settings: AwsSettings) -> S3Location:
    """Where a run's files go (see the module docstring)."""
    if request.output_uri:
        base = S3Location.parse(request.output_uri, "output_uri", prefix=True)
        settings.check_bucket(base.bucket, "output_uri")
        return base
    return S3Location(settings.require_bucket("POST /runs"), "runs/")


def start_execution(
    payload: Mapping[str, Any],
    request: RunRequest,
    settings: AwsSettings,
    *,
    validate: Callable[[RunRequest], list[str]],
    aws: AwsClients | None = None,
) -> dict[str, Any]:
    """Validate (no backend call), store the inputs in S3, start the execution; the 202 body.

    `payload` is the request as sent (stored as is, minus datasets); `request` is it validated with its
    datasets resolved; `validate` runs the same checks as `POST /run` and returns the warnings.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    aws = aws or clients()
    warnings = validate(request)  # the caller's mistakes first, then the deployment's
    machine = _machine(settings)
    run_id = check_run_id(request.run_id or uuid.uuid4().hex)
    base = run_base(request, settings)
    arn = execution_arn(machine, run_id)
    existing = _describe(aws, arn)
    if existing is not None:
        return {**_status_body(run_id, existing, settings, aws), "already_started": True}
    prefix = base.child(f"{run_id}/")
    datasets_at = prefix.child("datasets.json")
    request_at = prefix.child("request.json")
    stored = {k: v for k, v in payload.items() if k not in ("datasets", "datasets_uri", "request_uri")}
    stored.update(run_id=run_id, output_uri=f"s3://{base.bucket}/{base.key}")
    write_json(aws, datasets_at, [d.model_dump(mode="json") for d in request.datasets])
    write_json(aws, request_at, stored)
    execution_input = {
        "run_id": run_id,
        "datasets": {"Bucket": datasets_at.bucket, "Key": datasets_at.key},
        "request": {"request_uri": request_at.uri},
        "output": {"Bucket": prefix.bucket, "Prefix": prefix.key},
    }
    try:
        started = aws.sfn.start_execution(
            stateMachineArn=machine, name=run_id, input=dumps(execution_input).decode("utf-8")
        )
    except ClientError as exc:
        if _client_error_code(exc) == "ExecutionAlreadyExists":
            # A concurrent POST with the same run id won the race: report that run.
            current = _describe(aws, arn)
            if current is not None:
                return {**_status_body(run_id, current, settings, aws), "already_started": True}
        raise AwsServiceUnavailable(f"starting the run failed ({_client_error_code(exc)}); retry") from None
    except BotoCoreError:
        raise AwsServiceUnavailable("starting the run failed (network); retry") from None
    return {
        "success": True,
        "run_id": run_id,
        "status": "running",
        "status_url": f"/runs/{run_id}",
        "execution_arn": started["executionArn"],
        "total_datasets": len(request.datasets),
        "result_uri": prefix.child("result.json").uri,
        "warnings": warnings,
    }


def _describe(aws: AwsClients, arn: str) -> dict[str, Any] | None:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return dict(aws.sfn.describe_execution(executionArn=arn))
    except ClientError as exc:
        if _client_error_code(exc) in ("ExecutionDoesNotExist", "StateMachineDoesNotExist"):
            return None
        raise AwsServiceUnavailable(f"reading the run failed ({_client_error_code(exc)}); retry") from None
    except BotoCoreError:
        raise AwsServiceUnavailable("reading the run failed (network); retry") from None


def _progress(aws: AwsClients, arn: str) -> dict[str, Any] | None:
    """Item and batch counts of the run's Map, when Step Functions has them."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        runs = aws.sfn.list_map_runs(executionArn=arn).get("mapRuns", [])
        if not runs:
            return None
        described = aws.sfn.describe_map_run(mapRunArn=runs[0]["mapRunArn"])
    except (ClientError, BotoCoreError):
        return None
    items = described.get("itemCounts", {})
    batches = described.get("executionCounts", {})
    total = int(items.get("total", 0))
    done = int(items.get("succeeded", 0))
    failed = int(items.get("failed", 0)) + int(items.get("timedOut", 0)) + int(items.get("aborted", 0))
    return {
        "datasets_total": total,
        "datasets_succeeded": done,
        "datasets_failed": failed,
        "datasets_running": int(items.get("running", 0)),
        "datasets_pending": int(items.get("pending", 0)),
        "batches_total": int(batches.get("total", 0)),
        "batches_succeeded": int(batches.get("succeeded", 0)),
        "batches_failed": int(batches.get("failed", 0)) + int(batches.get("timedOut", 0)),
        "percent": round(100.0 * (done + failed) / total, 1) if total else 0.0,
    }


def _iso(value: Any) -> str | None:
    return value.isoformat() if hasattr(value, "isoformat") else (str(value) if value else None)


def _status_body(
    run_id: str, described: Mapping[str, Any], settings: AwsSettings, aws: AwsClients
) -> dict[str, Any]:
    aws_status = str(described.get("status", ""))
    body: dict[str, Any] = {
        "success": True,
        "run_id": run_id,
        "status": _STATUS.get(aws_status, "running"),
        "execution_status": aws_status,
        "started_at": _iso(described.get("startDate")),
        "stopped_at": _iso(described.get("stopDate")),
        "status_url": f"/runs/{run_id}",
    }
    if body["status"] == "running":
        body["progress"] = _progress(aws, str(described["executionArn"]))
    if aws_status == "SUCCEEDED":
        try:
            output = json.loads(described.get("output") or "{}")
        except json.JSONDecodeError:
            output = {}
        for key in ("totals", "complete", "total_datasets", "failed_batches", "missing_sessions"):
            if key in output:
                body[key] = output[key]
        uri = output.get("result_uri")
        if isinstance(uri, str):
            location = S3Location.parse(uri, "result_uri")
            body["result_uri"] = uri
            body["result_url"] = presign(aws, location, settings.presign_expiry_s)
            body["result_url_expires_in_s"] = settings.presign_expiry_s
    elif body["status"] == "failed":
        body["error"] = described.get("error") or aws_status
        cause = described.get("cause")
        if cause:
            body["cause"] = str(cause)[:_CAUSE_MAX]
    return body


def describe_execution(run_id: str, settings: AwsSettings, aws: AwsClients | None = None) -> dict[str, Any]:
    """The status body of `GET /runs/{run_id}`; `RunNotFound` for an unknown id."""
    aws = aws or clients()
    if not RUN_ID_PATTERN.match(run_id):
        raise RunNotFound(f"no run {run_id!r}", [{"loc": "run_id", "msg": "not a run id"}])
    described = _describe(aws, execution_arn(_machine(settings), run_id))
    if described is None:
        raise RunNotFound(
            f"no run {run_id!r} (unknown, or older than the execution history's 90 days)",
            [{"loc": "run_id", "msg": "not found"}],
        )
    return _status_body(run_id, described, settings, aws)
