"""The OpenAPI document of the HTTP API, generated from the pydantic models of the contract.

    python -m fair_runners.openapi > openapi/openapi.json

`tests/test_openapi.py` checks that the committed file equals this output, so the document cannot drift
from the models. `POST /run` is served by `handler/app.py`; `POST /runs` and `GET /runs/{run_id}` (the
asynchronous runs, Step Functions) are described by `RunAccepted` / `RunStatus` below.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from . import __version__
from ._limits import Limits
from ._schemas import RunRequest, RunResult, RunTotals

_REF = "#/components/schemas/{model}"


class ErrorDetail(BaseModel):
    """One problem with a request: where (`loc`, dotted path) and what."""

    loc: str
    msg: str


class ErrorBody(BaseModel):
    """Every non-2xx reply. 500 carries only a request id, never internals."""

    model_config = ConfigDict(title="ErrorBody")

    success: Literal[False] = False
    error: str = Field(min_length=1)
    details: list[ErrorDetail] | None = None
    request_id: str | None = None


class MapProgress(BaseModel):
    """Item and batch counts of a running run's Distributed Map (from Step Functions)."""

    datasets_total: int
    datasets_succeeded: int
    datasets_failed: int
    datasets_running: int
    datasets_pending: int
    batches_total: int
    batches_succeeded: int
    batches_failed: int
    percent: float


class RunStatus(BaseModel):
    """`GET /runs/{run_id}`: where an asynchronous run stands, and its totals once finished."""

    model_config = ConfigDict(extra="forbid")

    success: bool = True
    run_id: str
    status: Literal["running", "succeeded", "failed"]
    execution_status: str | None = None
    started_at: str | None = None
    stopped_at: str | None = None
    status_url: str | None = None
    progress: MapProgress | None = None
    complete: bool | None = None
    total_datasets: int | None = None
    totals: RunTotals | None = None
    failed_batches: int | None = Field(default=None, description="Map batches that failed")
    missing_sessions: int | None = Field(default=None, description="sessions with no result")
    result_uri: str | None = None
    result_url: str | None = None
    result_url_expires_in_s: int | None = None
    error: str | None = None
    cause: str | None = None


class RunAccepted(RunStatus):
    """`POST /runs`: 202 when started; 200 with `already_started` when that run id already exists."""

    execution_arn: str | None = None
    warnings: list[str] = Field(default_factory=list)
    already_started: bool | None = None


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF.format(model="ErrorBody")}}},
    }


def build() -> dict[str, Any]:
    """The OpenAPI 3.1 document, as a dict (deterministic)."""
    mapping, defs = models_json_schema(
        [
            (RunRequest, "validation"),
            (RunResult, "serialization"),
            (ErrorBody, "serialization"),
            (RunAccepted, "serialization"),
            (RunStatus, "serialization"),
        ],
        ref_template=_REF,
    )

    def ref(model: type[BaseModel], mode: str) -> dict[str, Any]:
        return dict(mapping[(model, mode)])  # type: ignore[index]

    limits = Limits()
    body = {
        "required": True,
        "description": (
            "A Fair-Forge runners payload. Deployment limits (env): body "
            f"{limits.max_body_bytes} bytes (FAIR_RUNNERS_MAX_BODY_BYTES), {limits.max_datasets} datasets "
            f"(FAIR_RUNNERS_MAX_DATASETS), {limits.max_turns} turns (FAIR_RUNNERS_MAX_TURNS), query "
            f"{limits.max_query_chars} characters, context {limits.max_context_chars} characters, nesting "
            f"depth {limits.max_json_depth}. URLs must be https to public addresses unless allowlisted "
            "(FAIR_RUNNERS_ALLOWED_HOSTS); `connector.class_path` must be allowlisted."
        ),
        "content": {"application/json": {"schema": ref(RunRequest, "validation")}},
    }
    common = {
        "400": _error(
            "The request is invalid (bad JSON, a bad field, a refused URL, class path or parameter)."
        ),
        "413": _error("The request is over a deployment limit (named in `error`)."),
        "409": _error("The Idempotency-Key was reused with another body, or its first call is running."),
        "500": _error("A bug or a deployment misconfiguration; carries a request id only."),
        "503": _error("An AWS service (S3, DynamoDB, Step Functions) failed transiently: retry."),
    }
    run_id = {
        "name": "run_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "fair-runners",
            "version": __version__,
            "description": (
                "Run Fair-Forge test conversations against an Alquimia agent or an allowlisted LangChain "
                "chat model. Generated by `python -m fair_runners.openapi` from the pydantic models."
            ),
        },
        "security": [{"sigv4": []}, {"jwt": []}],
        "paths": {
            "/run": {
                "post": {
                    "operationId": "run",
                    "summary": "Run every turn synchronously (stops at ~27 s behind API Gateway)",
                    "requestBody": body,
                    "responses": {
                        "200": {
                            "description": "The datasets with answers, summaries and totals.",
                            "content": {"application/json": {"schema": ref(RunResult, "serialization")}},
                        },
                        **common,
                    },
                }
            },
            "/runs": {
                "post": {
                    "operationId": "startRun",
                    "summary": "Start an asynchronous run",
                    "requestBody": body,
                    "responses": {
                        "202": {
                            "description": "Accepted; poll `GET /runs/{run_id}`.",
                            "content": {"application/json": {"schema": ref(RunAccepted, "serialization")}},
                        },
                        "200": {
                            "description": "A run with this run id exists already (`already_started`).",
                            "content": {"application/json": {"schema": ref(RunAccepted, "serialization")}},
                        },
                        **common,
                    },
                }
            },
            "/runs/{run_id}": {
                "get": {
                    "operationId": "getRun",
                    "summary": "The status of an asynchronous run",
                    "parameters": [run_id],
                    "responses": {
                        "200": {
                            "description": "Where the run stands.",
                            "content": {"application/json": {"schema": ref(RunStatus, "serialization")}},
                        },
                        "404": _error("No run with this id."),
                        "500": common["500"],
                        "503": common["503"],
                    },
                }
            },
        },
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {
                "sigv4": {
                    "type": "apiKey",
                    "name": "Authorization",
                    "in": "header",
                    "description": "AWS IAM (SigV4-signed requests): the default.",
                    "x-amazon-apigateway-authtype": "awsSigv4",
                },
                "jwt": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "The documented alternative: an API Gateway JWT authorizer.",
                },
            },
        },
    }


def render() -> str:
    """The document as committed: sorted keys, 2-space indent, a final newline."""
    return json.dumps(build(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> None:
    """Print the document."""
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
