"""POST /runs and GET /runs/{run_id} against moto's S3 and Step Functions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from botocore.stub import Stubber

from fair_runners.aws import AwsClients, AwsSettings, describe_execution, execution_arn
from fair_runners.openapi import RunAccepted, RunStatus
from handler.app import lambda_handler

from ._aws import BUCKET, Aws, answer, moto_aws
from .conftest import FakeLambdaContext, alquimia_request, make_datasets
from .helpers import api_event


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    yield from moto_aws(monkeypatch)


def _post_runs(body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    event = api_event("POST", "/runs", body, headers)
    status, reply = answer(lambda_handler(event, FakeLambdaContext()))
    if status in (200, 202):  # the reply is what the OpenAPI document says it is
        RunAccepted.model_validate(reply)
    return status, reply


def _get_run(run_id: str) -> tuple[int, dict[str, Any]]:
    status, reply = answer(lambda_handler(api_event("GET", f"/runs/{run_id}"), FakeLambdaContext()))
    if status == 200:
        RunStatus.model_validate(reply)
    return status, reply


def _set_execution(aws: Aws, run_id: str, status: str, **fields: Any) -> None:
    from moto.stepfunctions.models import stepfunctions_backends

    backend = stepfunctions_backends["123456789012"]["us-east-1"]
    execution = backend.describe_execution(execution_arn(aws.machine_arn, run_id))
    execution.status = status
    for name, value in fields.items():
        setattr(execution, name, value)


def test_post_runs_stores_inputs_and_starts_the_state_machine(agent: Any, aws: Aws) -> None:
    request = alquimia_request(agent, make_datasets(sessions=30, turns=2))
    status, body = _post_runs({**request, "run_id": "eval-2026-11-21"})
    assert status == 202, body
    assert body["run_id"] == "eval-2026-11-21" and body["status"] == "running"
    assert body["total_datasets"] == 30 and body["status_url"] == "/runs/eval-2026-11-21"
    assert agent.infer_requests() == []  # validated, nothing sent
    described = aws.sfn.describe_execution(executionArn=body["execution_arn"])
    execution_input = json.loads(described["input"])
    assert execution_input["datasets"] == {"Bucket": BUCKET, "Key": "runs/eval-2026-11-21/datasets.json"}
    assert execution_input["output"] == {"Bucket": BUCKET, "Prefix": "runs/eval-2026-11-21/"}
    # The target (with its key) is in S3, not in the execution history.
    assert "api_key" not in described["input"]
    stored = aws.get_json("runs/eval-2026-11-21/request.json")
    assert stored["config"]["agent_id"] == "bot" and stored["run_id"] == "eval-2026-11-21"
    assert stored["output_uri"] == f"s3://{BUCKET}/runs/"
    assert [d["session_id"] for d in aws.get_json("runs/eval-2026-11-21/datasets.json")] == [
        f"s{i}" for i in range(30)
    ]


def test_post_runs_with_datasets_uri_jsonl(agent: Any, aws: Aws) -> None:
    lines = "\n".join(json.dumps(d) for d in make_datasets(sessions=3, turns=1))
    aws.s3.put_object(Bucket=BUCKET, Key="in/d.jsonl", Body=lines.encode())
    request = {k: v for k, v in alquimia_request(agent, []).items() if k != "datasets"}
    status, body = _post_runs({**request, "datasets_uri": f"s3://{BUCKET}/in/d.jsonl"})
    assert status == 202, body
    normalised = aws.get_json(f"runs/{body['run_id']}/datasets.json")
    assert [d["session_id"] for d in normalised] == ["s0", "s1", "s2"]


def test_post_runs_validates_like_post_run(agent: Any, aws: Aws) -> None:
    bad = alquimia_request(agent, make_datasets(2, 1))
    bad["datasets"][1]["session_id"] = "s0"
    status, body = _post_runs(bad)
    assert status == 400 and "duplicate session_id" in json.dumps(body)
    no_key = alquimia_request(agent, make_datasets(1, 1))
    del no_key["config"]["api_key"]
    status, body = _post_runs(no_key)
    assert status == 400 and body["details"][0]["loc"] == "config.api_key"
    status, body = _post_runs({**alquimia_request(agent, make_datasets(1, 1)), "run_id": "has:colon"})
    assert status == 400 and body["details"][0]["loc"] == "run_id"
    assert aws.sfn.list_executions(stateMachineArn=aws.machine_arn)["executions"] == []


def test_same_run_id_does_not_start_twice(agent: Any, aws: Aws) -> None:
    request = {**alquimia_request(agent, make_datasets(2, 1)), "run_id": "once"}
    first_status, _ = _post_runs(request)
    again_status, again = _post_runs(request)
    assert first_status == 202 and again_status == 200
    assert again["already_started"] is True and again["run_id"] == "once" and again["status"] == "running"
    assert len(aws.sfn.list_executions(stateMachineArn=aws.machine_arn)["executions"]) == 1


def test_get_run_running_succeeded_failed_and_unknown(agent: Any, aws: Aws) -> None:
    _post_runs({**alquimia_request(agent, make_datasets(2, 1)), "run_id": "r-ok"})
    status, running = _get_run("r-ok")
    assert status == 200 and running["status"] == "running" and running["progress"] is None
    aws.put_json("runs/r-ok/result.json", {"datasets": []})
    output = {
        "run_id": "r-ok",
        "result_uri": f"s3://{BUCKET}/runs/r-ok/result.json",
        "complete": True,
        "total_datasets": 2,
        "totals": {
            "sessions": 2,
            "turns": 2,
            "successes": 2,
            "failures": 0,
            "skipped": 0,
            "retries": 0,
            "input_tokens": 0,
            "output_tokens": 0,
            "wall_time_ms": 812.0,
        },
        "failed_batches": 0,
        "missing_sessions": 0,
    }
    _set_execution(aws, "r-ok", "SUCCEEDED", output=json.dumps(output))
    status, done = _get_run("r-ok")
    assert status == 200 and done["status"] == "succeeded" and done["complete"] is True
    assert done["totals"]["successes"] == 2 and done["result_uri"] == output["result_uri"]
    link = urlparse(done["result_url"])
    assert link.path.endswith("/runs/r-ok/result.json")
    assert parse_qs(link.query)["X-Amz-Expires"] == ["3600"] and done["result_url_expires_in_s"] == 3600

    _post_runs({**alquimia_request(agent, make_datasets(1, 1)), "run_id": "r-bad"})
    _set_execution(aws, "r-bad", "FAILED", error="States.ExceedToleratedFailureThreshold", cause="too many")
    status, failed = _get_run("r-bad")
    assert failed["status"] == "failed" and failed["error"] == "States.ExceedToleratedFailureThreshold"

    status, missing = _get_run("never-started")
    assert status == 404 and "never-started" in missing["error"]
    status, _ = answer(lambda_handler(api_event("DELETE", "/runs/r-ok"), FakeLambdaContext()))
    assert status == 405


def test_progress_from_the_map_run(aws: Aws) -> None:
    settings = AwsSettings.from_env()
    arn = execution_arn(aws.machine_arn, "r-progress")
    import boto3

    sfn = boto3.client("stepfunctions", region_name="us-east-1")
    map_run = f"arn:aws:states:us-east-1:123456789012:mapRun:{aws.machine_arn.rsplit(':', 1)[1]}/RunBatches:x"
    with Stubber(sfn) as stub:
        stub.add_response(
            "describe_execution",
            {
                "executionArn": arn,
                "stateMachineArn": aws.machine_arn,
                "status": "RUNNING",
                "startDate": "2026-11-21T10:00:00Z",
            },
            {"executionArn": arn},
        )
        stub.add_response(
            "list_map_runs",
            {
                "mapRuns": [
                    {
                        "executionArn": arn,
                        "mapRunArn": map_run,
                        "stateMachineArn": aws.machine_arn,
                        "startDate": "2026-11-21T10:00:01Z",
                    }
                ]
            },
            {"executionArn": arn},
        )
        counts = {
            "pending": 500,
            "running": 100,
            "succeeded": 390,
            "failed": 10,
            "timedOut": 0,
            "aborted": 0,
            "total": 1000,
            "resultsWritten": 400,
        }
        stub.add_response(
            "describe_map_run",
            {
                "mapRunArn": map_run,
                "executionArn": arn,
                "status": "RUNNING",
                "startDate": "2026-11-21T10:00:01Z",
                "maxConcurrency": 40,
                "toleratedFailurePercentage": 5.0,
                "toleratedFailureCount": 0,
                "itemCounts": counts,
                "executionCounts": {
                    **counts,
                    "total": 40,
                    "succeeded": 15,
                    "failed": 1,
                    "pending": 20,
                    "running": 4,
                },
            },
            {"mapRunArn": map_run},
        )
        body = describe_execution("r-progress", settings, AwsClients(sfn=sfn))
    progress = body["progress"]
    assert progress["datasets_total"] == 1000 and progress["datasets_succeeded"] == 390
    assert progress["datasets_failed"] == 10 and progress["percent"] == 40.0
    assert progress["batches_total"] == 40 and progress["batches_succeeded"] == 15


def test_post_runs_needs_the_state_machine(agent: Any, aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_MACHINE_ARN")
    status, body = _post_runs(alquimia_request(agent, make_datasets(1, 1)))
    assert status == 500 and "STATE_MACHINE_ARN" in body["error"]
