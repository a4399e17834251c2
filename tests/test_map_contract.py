"""The Distributed Map contract, driven locally: ItemReader -> ItemBatcher -> runner -> ResultWriter -> merge.

The driver follows the state machine definition in statemachine/ (with the template's substitutions): it
reads the dataset file the execution input names, cuts it into batches exactly as ItemBatcher does
(MaxItemsPerBatch and MaxInputBytesPerBatch, consecutive items, BatchInput added to each batch), invokes
`lambda_handler` with each child execution's input, lays the child executions out as ResultWriter does
(`manifest.json` plus `SUCCEEDED_n.json` / `FAILED_n.json`, in no particular order) and runs the merge Lambda.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from handler import merge
from handler.app import lambda_handler

from ._aws import BUCKET, Aws, answer, definition, moto_aws
from .conftest import FakeLambdaContext, alquimia_request, make_datasets
from .helpers import api_event


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    yield from moto_aws(monkeypatch)


def _path(document: dict[str, Any], path: str) -> Any:
    assert path.startswith("$.")
    value: Any = document
    for part in path[2:].split("."):
        value = value[part]
    return value


def configure(execution_input: dict[str, Any], asl: dict[str, Any]) -> dict[str, Any]:
    """The `Configure` Pass state: copy the input, evaluate States.StringToJson('<n>') settings."""
    params = asl["States"]["Configure"]["Parameters"]
    state = {
        key[:-2]: _path(execution_input, value)
        for key, value in params.items()
        if key.endswith(".$") and value.startswith("$.")
    }
    state["started_at"] = datetime.now(UTC).isoformat()  # $$.Execution.StartTime
    settings = {}
    for key, expression in params["settings"].items():
        literal = expression.split("'")[1]
        settings[key[:-2]] = json.loads(literal)
    state["settings"] = settings
    return state


def item_batches(items: list[Any], batcher: dict[str, Any], state: dict[str, Any]) -> list[dict[str, Any]]:
    """ItemBatcher: consecutive items, at most MaxItemsPerBatch and MaxInputBytesPerBatch, plus BatchInput."""
    max_items = int(_path(state, batcher["MaxItemsPerBatchPath"]))
    max_bytes = int(batcher["MaxInputBytesPerBatch"])
    batch_input = {key[:-2]: _path(state, path) for key, path in batcher["BatchInput"].items()}
    batches: list[dict[str, Any]] = []
    current: list[Any] = []
    for item in items:
        candidate = {"Items": [*current, item], "BatchInput": batch_input}
        too_big = len(json.dumps(candidate, separators=(",", ":")).encode()) > max_bytes
        if current and (len(current) >= max_items or too_big):
            batches.append({"Items": current, "BatchInput": batch_input})
            current = []
        current.append(item)
    if current:
        batches.append({"Items": current, "BatchInput": batch_input})
    return batches


def run_map(
    aws: Aws,
    execution_input: dict[str, Any],
    *,
    fail_batches: set[int] = frozenset(),
    records_per_file: int = 7,
) -> dict[str, Any]:
    """Run the state machine's Map locally and return the state the merge step receives."""
    asl = definition()
    state = configure(execution_input, asl)
    map_state = asl["States"]["RunBatches"]
    reader = map_state["ItemReader"]["Parameters"]
    items = aws.get_json(_path(state, reader["Key.$"]), bucket=_path(state, reader["Bucket.$"]))
    batches = item_batches(items, map_state["ItemBatcher"], state)
    records: list[dict[str, Any]] = []
    machine = aws.machine_arn
    for index, child_input in enumerate(batches):
        record = {
            "ExecutionArn": f"{machine.replace(':stateMachine:', ':execution:')}/RunBatches:{index}",
            "Input": json.dumps(child_input),
            "InputDetails": {"Included": True},
            "Name": str(index),
            "StartDate": "2026-11-21T10:00:01.000Z",
            "StateMachineArn": machine,
            "StopDate": "2026-11-21T10:00:02.000Z",
            "RedriveCount": 0,
        }
        payload = json.loads(json.dumps(child_input))  # the Task's Payload.$: "$"
        if index in fail_batches:
            record.update(
                Status="FAILED",
                Error="Lambda.Unknown",
                Cause=json.dumps({"errorMessage": "the function crashed", "errorType": "Runtime"}),
            )
        else:
            output = lambda_handler(payload, FakeLambdaContext(request_id=f"batch-{index}"))
            encoded = json.dumps(output)
            assert len(encoded.encode()) <= 256 * 1024, "a Map state carries at most 256 KB"
            record.update(Status="SUCCEEDED", Output=encoded, OutputDetails={"Included": True})
        records.append(record)
    random.Random(7).shuffle(records)  # ResultWriter files come in no particular order
    writer = map_state["ResultWriter"]["Parameters"]
    prefix_template = writer["Prefix.$"]
    assert prefix_template == "States.Format('{}map', $.output.Prefix)"
    prefix = f"{state['output']['Prefix']}map"
    bucket = _path(state, writer["Bucket.$"])
    map_run_id = str(uuid.uuid4())
    files: dict[str, list[dict[str, Any]]] = {"SUCCEEDED": [], "FAILED": [], "PENDING": []}
    for status in ("SUCCEEDED", "FAILED"):
        group = [r for r in records if r["Status"] == status]
        for n in range(0, len(group), records_per_file):
            key = f"{prefix}/{map_run_id}/{status}_{n // records_per_file}.json"
            body = json.dumps(group[n : n + records_per_file])
            aws.s3.put_object(Bucket=bucket, Key=key, Body=body.encode())
            files[status].append({"Key": key, "Size": len(body)})
    manifest_key = f"{prefix}/{map_run_id}/manifest.json"
    aws.put_json(
        manifest_key,
        {"DestinationBucket": bucket, "MapRunArn": f"{machine}:map", "ResultFiles": files},
        bucket=bucket,
    )
    return {
        **state,
        "map": {
            "MapRunArn": f"{machine}:map",
            "ResultWriterDetails": {"Bucket": bucket, "Key": manifest_key},
        },
    }


def _start(aws: Aws, request: dict[str, Any]) -> dict[str, Any]:
    status, body = answer(lambda_handler(api_event("POST", "/runs", request), FakeLambdaContext()))
    assert status == 202, body
    described = aws.sfn.describe_execution(executionArn=body["execution_arn"])
    return json.loads(described["input"])  # type: ignore[no-any-return]


@pytest.mark.timeout(300)
def test_1000_datasets_nothing_lost_order_kept(agent: Any, aws: Aws) -> None:
    datasets = make_datasets(sessions=1000, turns=1, prefix="ds")
    execution_input = _start(
        aws, {**alquimia_request(agent, datasets, max_concurrency=32), "run_id": "big-run"}
    )
    started = time.perf_counter()
    state = run_map(aws, execution_input)
    output = merge.lambda_handler(state, FakeLambdaContext(request_id="merge"))
    elapsed = time.perf_counter() - started
    assert output["result_uri"] == f"s3://{BUCKET}/runs/big-run/result.json"
    assert output["total_datasets"] == 1000 and output["complete"] is True
    assert output["totals"]["successes"] == 1000 and output["failed_batches"] == 0
    assert len(json.dumps(output).encode()) < 256 * 1024
    merged = aws.get_json("runs/big-run/result.json")
    assert [d["session_id"] for d in merged["datasets"]] == [f"ds{i}" for i in range(1000)]
    assert [s["session_id"] for s in merged["summaries"]] == [f"ds{i}" for i in range(1000)]
    for dataset in merged["datasets"]:
        sid = dataset["session_id"]
        assert dataset["conversation"][0]["assistant"] == f"bot: turn 1 of {sid}: question 0 of {sid}"
    assert len(agent.infer_requests()) == 1000
    assert merged["totals"]["turns"] == 1000 and merged["totals"]["sessions"] == 1000
    assert elapsed < 240


def test_merge_marks_failed_batches_and_reads_spilled_results(agent: Any, aws: Aws) -> None:
    datasets = make_datasets(sessions=60, turns=1)
    for dataset in datasets[:25]:  # the first batch is ~2 * 25 * 12 KB: over 256 KB, it spills
        dataset["conversation"][0]["query"] = "z" * 12_000
    execution_input = _start(aws, {**alquimia_request(agent, datasets), "run_id": "mixed"})
    state = run_map(aws, execution_input, fail_batches={1}, records_per_file=1)
    spilled = [k for k in aws.keys("runs/mixed/batches/")]
    assert spilled, "the large batch should have spilled to S3"
    output = merge.lambda_handler(state, FakeLambdaContext())
    merged = aws.get_json("runs/mixed/result.json")
    assert [d["session_id"] for d in merged["datasets"]] == [f"s{i}" for i in range(60)]
    assert merged["datasets"][0]["conversation"][0]["assistant"].endswith("z" * 50)
    asl = definition()
    batches = item_batches(datasets, asl["States"]["RunBatches"]["ItemBatcher"], state)
    assert len(batches[0]["Items"]) < 25  # cut by MaxInputBytesPerBatch, not by count
    lost = {d["session_id"] for d in batches[1]["Items"]}
    for dataset, summary in zip(merged["datasets"], merged["summaries"], strict=True):
        answer_ = dataset["conversation"][0]["assistant"]
        if dataset["session_id"] in lost:
            assert answer_.startswith("[ERROR] batch failed: Lambda.Unknown: the function crashed")
            assert summary["turns"][0]["error_type"] == "batch_failed" and summary["failures"] == 1
        else:
            assert answer_.startswith("bot: turn 1") and summary["successes"] == 1
    assert output["complete"] is False and output["failed_batches"] == 1
    assert output["totals"]["successes"] == 60 - len(lost) and output["totals"]["failures"] == len(lost)
    assert 0 <= output["totals"]["wall_time_ms"] < 60_000
    assert merged["failed_batches"][0]["cause"] == "the function crashed"


def test_item_batcher_respects_bytes_and_count() -> None:
    batcher = {
        "MaxItemsPerBatchPath": "$.settings.n",
        "MaxInputBytesPerBatch": 1000,
        "BatchInput": {"request.$": "$.request"},
    }
    state = {"settings": {"n": 3}, "request": {"request_uri": "s3://b-1/r.json"}}
    items = [{"i": i, "pad": "x" * 300} for i in range(7)]
    batches = item_batches(items, batcher, state)
    assert [[it["i"] for it in b["Items"]] for b in batches] == [[0, 1], [2, 3], [4, 5], [6]]
    assert all(b["BatchInput"] == {"request": {"request_uri": "s3://b-1/r.json"}} for b in batches)
