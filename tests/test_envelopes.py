"""What comes back always fits its channel and goes where the caller asked: bounded warnings (480,000 unknown
keys), and `output_uri` honoured for `POST /run` and direct invokes even when the result fits."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from handler.app import lambda_handler

from ._aws import BUCKET, Aws, moto_aws
from .conftest import FakeLambdaContext, alquimia_request, make_datasets
from .helpers import api_event
from .security_support import invoke


def test_warnings_are_capped_whatever_the_request_holds(agent: Any) -> None:
    request = alquimia_request(agent, make_datasets(1, 1))
    request.update({f"{i:x}": 1 for i in range(480_000)})  # 480,000 unknown keys: a 5 MB request
    body = json.dumps(request, separators=(",", ":"))
    assert len(body) > 4_500_000
    outcome = invoke(api_event("POST", "/run", body))
    assert outcome.status == 200
    warnings = outcome.body["warnings"]
    assert len(warnings) <= 102 and warnings[-1].startswith("and ") and "more" in warnings[-1]
    assert len(outcome.raw["body"]) < 64 * 1024  # was a 15 MB body with 480,003 warnings


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    yield from moto_aws(monkeypatch)


@pytest.mark.parametrize("shape", ["http", "direct"])
def test_output_uri_is_honoured_when_the_result_fits(agent: Any, aws: Aws, shape: str) -> None:
    request = {
        **alquimia_request(agent, make_datasets(2, 2)),
        "output_uri": f"s3://{BUCKET}/run1/",
        "run_id": "r-1",
    }
    if shape == "http":
        outcome = invoke(api_event("POST", "/run", request))
        assert outcome.status == 200
        answer = outcome.body
    else:
        answer = lambda_handler(request, FakeLambdaContext())
    assert answer["result_uri"] == f"s3://{BUCKET}/run1/r-1/result.json"
    assert len(answer["datasets"]) == 2  # inline too: it fits
    stored = aws.get_json("run1/r-1/result.json")
    assert stored["datasets"] == answer["datasets"] and stored["totals"] == answer["totals"]


def test_a_failed_write_fails_the_request(agent: Any, aws: Aws) -> None:
    aws.s3.delete_bucket(Bucket=BUCKET)
    request = {**alquimia_request(agent, make_datasets(1, 1)), "output_uri": f"s3://{BUCKET}/run1/"}
    outcome = invoke(api_event("POST", "/run", request))
    assert outcome.status in (400, 503), outcome.body
    assert "output_uri" in json.dumps(outcome.body) or "S3" in outcome.body["error"]
