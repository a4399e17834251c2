"""The merge step: the Map's ResultWriter output -> one result file, datasets in input order, run totals.

ResultWriter writes `<prefix>/<map run id>/manifest.json`:

    {"DestinationBucket": "b", "MapRunArn": "...",
     "ResultFiles": {"SUCCEEDED": [{"Key": ".../SUCCEEDED_0.json", "Size": 123}],
                     "FAILED": [...], "PENDING": []}}

and each result file is a JSON array of child executions:

    [{"ExecutionArn": "...", "Input": "<JSON string: {Items, BatchInput}>", "Output": "<JSON string>",
      "Status": "SUCCEEDED", ...}, {"Status": "FAILED", "Error": "InvalidRequest", "Cause": "...", ...}]

A batch's `Output` is our answer; when it carries `result_uri` (it spilled), the full result is read from
there. Order comes from the dataset file the Map read (session ids are unique within a run). Sessions of a
failed batch come back unchanged except each turn is marked `[ERROR] batch failed: ...` (so re-posting the
result with `skip_answered` finishes them), and sessions no batch reported are marked the same way.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

from .._errors import InvalidRequest
from .._text import cap_warnings
from ._clients import AwsClients, clients
from ._s3 import S3Location, parse_documents, read_bytes, read_json, write_json
from ._settings import AwsSettings

_MAX_FILE = 512 * 1024 * 1024
_CAUSE_MAX = 300
_TOTAL_KEYS = (
    "turns",
    "successes",
    "failures",
    "skipped",
    "retries",
    "input_tokens",
    "output_tokens",
    "rate_limited_responses",
    "cache_hits",
)


def _loads(text: Any) -> Any:
    if isinstance(text, str):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return None
    return text


def _failed_copy(dataset: dict[str, Any], reason: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The dataset with every turn marked failed, and its summary."""
    marked = dict(dataset)
    turns = []
    records = []
    for batch in dataset.get("conversation") or []:
        turn = dict(batch)
        if not (
            isinstance(turn.get("assistant"), str)
            and turn["assistant"].strip()
            and not turn["assistant"].startswith("[ERROR] ")
        ):
            turn["assistant"] = f"[ERROR] {reason}"
            observation = turn.get("observation")
            turn["observation"] = f"{observation}\nError: {reason}" if observation else f"Error: {reason}"
        turns.append(turn)
        records.append(
            {
                "qa_id": str(turn.get("qa_id", "")),
                "status": "error",
                "latency_ms": None,
                "attempts": 0,
                "retry_wait_ms": 0.0,
                "error_type": "batch_failed",
                "input_tokens": 0,
                "output_tokens": 0,
            }
        )
    marked["conversation"] = turns
    summary = {
        "session_id": str(dataset.get("session_id", "")),
        "total_batches": len(turns),
        "successes": 0,
        "failures": len(turns),
        "skipped": 0,
        "total_execution_time_ms": 0.0,
        "avg_batch_time_ms": 0.0,
        "p50_batch_time_ms": 0.0,
        "p95_batch_time_ms": 0.0,
        "max_batch_time_ms": 0.0,
        "retries": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "rate_limited_responses": 0,
        "cache_hits": 0,
        "turns": records,
    }
    return marked, summary


class _Collected:
    def __init__(self) -> None:
        self.done: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        self.failed: dict[str, tuple[dict[str, Any], str]] = {}
        self.failed_batches: list[dict[str, Any]] = []
        self.incomplete_batches = 0
        self.modes: set[str] = set()
        self.warnings: list[str] = []


def _collect_succeeded(record: dict[str, Any], aws: AwsClients, got: _Collected) -> None:
    output = _loads(record.get("Output"))
    items = (_loads(record.get("Input")) or {}).get("Items") or []
    if isinstance(output, dict) and output.get("result_uri"):
        output = read_json(
            aws, S3Location.parse(output["result_uri"], "result_uri"), max_bytes=_MAX_FILE, loc="result_uri"
        )
    if not isinstance(output, dict) or not isinstance(output.get("datasets"), list):
        reason = "batch result lost (too large for the Map state and nowhere to write it)"
        got.failed_batches.append({"error": "ResultLost", "cause": reason, "sessions": len(items)})
        for item in items:
            got.failed[str(item.get("session_id"))] = (item, f"batch failed: ResultLost: {reason}")
        return
    if output.get("mode"):
        got.modes.add(str(output["mode"]))
    if output.get("complete") is False:
        got.incomplete_batches += 1
    summaries = {s.get("session_id"): s for s in output.get("summaries") or []}
    for dataset in output["datasets"]:
        sid = str(dataset.get("session_id"))
        got.done[sid] = (dataset, summaries.get(sid) or _failed_copy(dataset, "no summary")[1])
    for warning in output.get("warnings") or []:
        if warning not in got.warnings and len(got.warnings) < 50:
            got.warnings.append(warning)


def _collect_failed(record: dict[str, Any], got: _Collected) -> None:
    error = str(record.get("Error") or record.get("Status") or "Failed")
    cause_doc = _loads(record.get("Cause"))
    cause = cause_doc.get("errorMessage") if isinstance(cause_doc, dict) else record.get("Cause")
    cause = str(cause or "")[:_CAUSE_MAX]
    items = (_loads(record.get("Input")) or {}).get("Items") or []
    got.failed_batches.append({"error": error, "cause": cause, "sessions": len(items)})
    for item in items:
        if isinstance(item, dict):
            got.failed[str(item.get("session_id"))] = (item, f"batch failed: {error}: {cause}".rstrip(": "))


def merge_records(
    order: list[dict[str, Any]], got: _Collected, *, run_id: str, wall_time_ms: float
) -> dict[str, Any]:
    """Assemble the merged result from the input datasets (for order) and the collected batches."""
    datasets: list[dict[str, Any]] = []
    summaries: list[dict[str, Any]] = []
    missing: list[str] = []
    for original in order:
        sid = str(original.get("session_id"))
        if sid in got.done:
            dataset, summary = got.done[sid]
        elif sid in got.failed:
            dataset, summary = _failed_copy(got.failed[sid][0], got.failed[sid][1])
        else:
            missing.append(sid)
            dataset, summary = _failed_copy(original, "batch failed: no result for this session")
        datasets.append(dataset)
        summaries.append(summary)
    totals: dict[str, Any] = {"sessions": len(datasets)}
    for key in _TOTAL_KEYS:
        source = "total_batches" if key == "turns" else key
        totals[key] = sum(int(s.get(source, 0)) for s in summaries)
    totals["wall_time_ms"] = round(wall_time_ms, 1)
    warnings = cap_warnings(list(got.warnings))
    complete = not got.failed_batches and not missing and got.incomplete_batches == 0
    if got.failed_batches:
        warnings.append(
            f"{len(got.failed_batches)} batch(es) failed: their turns are marked [ERROR]; re-post this "
            "result with options.skip_answered=true to finish them"
        )
    if missing:
        warnings.append(f"{len(missing)} session(s) had no result (the Map stopped early)")
    return {
        "success": True,
        "complete": complete,
        "run_id": run_id,
        "mode": sorted(got.modes)[0] if len(got.modes) == 1 else None,
        "datasets": datasets,
        "summaries": summaries,
        "total_datasets": len(datasets),
        "totals": totals,
        "warnings": warnings,
        "failed_batches": got.failed_batches,
        "missing_sessions": missing,
    }


def _elapsed_ms(started_at: Any) -> float:
    if isinstance(started_at, str):
        try:
            start = datetime.fromisoformat(started_at.replace("Z", "+00:00"))
            return max(0.0, (datetime.now(start.tzinfo) - start).total_seconds() * 1000)
        except ValueError:
            pass
    return 0.0


def merge_run(event: dict[str, Any], settings: AwsSettings, aws: AwsClients | None = None) -> dict[str, Any]:
    """Run the merge step on the state machine's state; return the (small) execution output."""
    aws = aws or clients()
    started = time.perf_counter()
    try:
        run_id = str(event["run_id"])
        details = event["map"]["ResultWriterDetails"]
        manifest_at = S3Location(str(details["Bucket"]), str(details["Key"]))
        datasets_at = S3Location(str(event["datasets"]["Bucket"]), str(event["datasets"]["Key"]))
        output = event["output"]
        result_at = S3Location(str(output["Bucket"]), f"{output['Prefix']}result.json")
    except (KeyError, TypeError) as exc:
        raise InvalidRequest(
            f"the merge step needs run_id, datasets, output and map.ResultWriterDetails: missing {exc}",
            [{"loc": "map.ResultWriterDetails", "msg": "pass the Map state's output at $.map"}],
        ) from None
    manifest = read_json(aws, manifest_at, max_bytes=_MAX_FILE, loc="manifest")
    bucket = str(manifest.get("DestinationBucket") or manifest_at.bucket)
    files = manifest.get("ResultFiles") or {}
    got = _Collected()
    for status in ("SUCCEEDED", "FAILED", "PENDING"):
        for entry in files.get(status) or []:
            records = read_json(
                aws, S3Location(bucket, str(entry["Key"])), max_bytes=_MAX_FILE, loc="results"
            )
            for record in records or []:
                if record.get("Status", status) == "SUCCEEDED":
                    _collect_succeeded(record, aws, got)
                else:
                    _collect_failed(record, got)
    order_data = read_bytes(
        aws, datasets_at, max_bytes=max(_MAX_FILE, settings.max_input_bytes), loc="datasets"
    )
    order = [d for d in parse_documents(order_data, datasets_at, "datasets") if isinstance(d, dict)]
    elapsed = _elapsed_ms(event.get("started_at")) or (time.perf_counter() - started) * 1000
    merged = merge_records(order, got, run_id=run_id, wall_time_ms=elapsed)
    write_json(aws, result_at, merged)
    return {
        "success": True,
        "run_id": run_id,
        "result_uri": result_at.uri,
        "complete": merged["complete"],
        "total_datasets": merged["total_datasets"],
        "totals": merged["totals"],
        "failed_batches": len(merged["failed_batches"]),
        "missing_sessions": len(merged["missing_sessions"]),
    }
