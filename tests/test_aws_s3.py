"""S3 in and out: datasets_uri (JSON array, JSONL), request validation, spilling at the channel's size."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from fair_runners import InvalidRequest, PayloadTooLarge, parse_request
from fair_runners.aws import Channel, encoded_size
from handler.app import lambda_handler

from ._aws import BUCKET, Aws, answer, moto_aws
from .conftest import FakeLambdaContext, alquimia_request, make_datasets
from .helpers import api_event


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    yield from moto_aws(monkeypatch)


def _without_datasets(request: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**{k: v for k, v in request.items() if k != "datasets"}, **extra}


def test_exactly_one_of_datasets_and_datasets_uri() -> None:
    with pytest.raises(InvalidRequest) as neither:
        parse_request({"config": {"agent_id": "a"}})
    assert neither.value.details[0]["loc"] == "datasets"
    assert "datasets_uri" in neither.value.details[0]["msg"]
    with pytest.raises(InvalidRequest) as both:
        parse_request({"datasets": make_datasets(1, 1), "datasets_uri": "s3://bucket-a/x.json"})
    assert "not both" in both.value.details[0]["msg"]
    with pytest.raises(InvalidRequest) as bad_uri:
        parse_request({"datasets_uri": "https://example.com/x.json"})
    assert bad_uri.value.details[0]["loc"] == "datasets_uri"
    with pytest.raises(InvalidRequest) as bad_out:
        parse_request({"datasets": make_datasets(1, 1), "output_uri": "/tmp/out"})
    assert bad_out.value.details[0]["loc"] == "output_uri"


def test_library_refuses_an_unread_datasets_uri() -> None:
    from fair_runners import prepare

    with pytest.raises(InvalidRequest) as info:
        prepare({"datasets_uri": "s3://bucket-a/x.json", "config": {"agent_id": "a"}})
    assert info.value.details[0]["loc"] == "datasets_uri"


@pytest.mark.parametrize("form", ["json", "jsonl"])
def test_datasets_uri_json_and_jsonl(agent: Any, aws: Aws, form: str) -> None:
    datasets = make_datasets(sessions=4, turns=2)
    if form == "json":
        body = json.dumps(datasets).encode()
    else:
        body = ("\n".join(json.dumps(d) for d in datasets) + "\n\n").encode()
    aws.s3.put_object(Bucket=BUCKET, Key=f"in/data.{form}", Body=body)
    request = _without_datasets(alquimia_request(agent, []), datasets_uri=f"s3://{BUCKET}/in/data.{form}")
    result = lambda_handler(request, FakeLambdaContext())
    assert [d["session_id"] for d in result["datasets"]] == ["s0", "s1", "s2", "s3"]
    assert result["totals"]["successes"] == 8
    assert len(agent.infer_requests()) == 8


def test_datasets_uri_errors_name_the_field_before_any_backend_call(agent: Any, aws: Aws) -> None:
    base = _without_datasets(alquimia_request(agent, []))
    cases = {
        f"s3://{BUCKET}/missing.json": "does not exist",
        "s3://some-other-bucket/x.json": "not one this deployment uses",
    }
    aws.s3.put_object(Bucket=BUCKET, Key="bad.jsonl", Body=b'{"session_id": "a"}\n{oops\n')
    cases[f"s3://{BUCKET}/bad.jsonl"] = "line 2"
    aws.put_json("invalid.json", [{"session_id": "x", "assistant_id": "b", "conversation": [{"qa_id": "q"}]}])
    cases[f"s3://{BUCKET}/invalid.json"] = "datasets.0.conversation.0.query"
    for uri, expected in cases.items():
        response = lambda_handler(
            api_event("POST", "/run", {**base, "datasets_uri": uri}), FakeLambdaContext()
        )
        status, body = answer(response)
        assert status == 400, body
        assert expected in json.dumps(body), (uri, body)
    assert agent.infer_requests() == []


def test_datasets_uri_over_the_size_cap_is_413(agent: Any, aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIR_RUNNERS_MAX_INPUT_BYTES", "100")
    uri = aws.put_json("big.json", make_datasets(5, 5))
    response = lambda_handler(
        api_event("POST", "/run", _without_datasets(alquimia_request(agent, []), datasets_uri=uri)),
        FakeLambdaContext(),
    )
    status, body = answer(response)
    assert status == 413 and "FAIR_RUNNERS_MAX_INPUT_BYTES" in json.dumps(body)


def _long_datasets(sessions: int, query_chars: int) -> list[dict[str, Any]]:
    datasets = make_datasets(sessions=sessions, turns=1)
    for dataset in datasets:
        dataset["conversation"][0]["query"] = "q" * query_chars
    return datasets


def _map_event(agent: Any, datasets: list[dict[str, Any]], **batch: Any) -> dict[str, Any]:
    request = alquimia_request(agent, [])
    return {"Items": datasets, "BatchInput": {**_without_datasets(request), **batch}}


def test_map_batch_spills_at_256_kb(agent: Any, aws: Aws) -> None:
    limit = Channel.STATE.limit
    # Each session returns its query twice (input and echoed answer): ~2 * 30 KB per session.
    small = lambda_handler(
        _map_event(agent, _long_datasets(3, 30_000)), FakeLambdaContext(request_id="r-small")
    )
    assert "datasets" in small and "result_uri" not in small
    assert encoded_size(small, Channel.STATE) <= limit
    big = lambda_handler(_map_event(agent, _long_datasets(5, 30_000)), FakeLambdaContext(request_id="r-big"))
    assert "datasets" not in big
    assert big["result_uri"] == f"s3://{BUCKET}/results/{big['run_id']}/batches/r-big.json"
    assert encoded_size(big, Channel.STATE) <= limit
    full = aws.get_json(big["result_uri"].split(f"{BUCKET}/", 1)[1])
    assert encoded_size(full, Channel.STATE) > limit
    assert [d["session_id"] for d in full["datasets"]] == [f"s{i}" for i in range(5)]
    assert full["datasets"][4]["conversation"][0]["assistant"].endswith("q" * 100)
    assert big["summaries"] == full["summaries"] and big["totals"] == full["totals"]
    assert any("result_uri" in w for w in big["warnings"])


def test_output_uri_is_where_spills_go(agent: Any, aws: Aws) -> None:
    event = _map_event(agent, _long_datasets(5, 30_000), output_uri=f"s3://{BUCKET}/mine/here")
    big = lambda_handler(event, FakeLambdaContext(request_id="r1"))
    assert big["result_uri"] == f"s3://{BUCKET}/mine/here/{big['run_id']}/batches/r1.json"
    bad = _map_event(agent, _long_datasets(1, 10), output_uri="s3://not-ours/x/")
    with pytest.raises(InvalidRequest) as info:
        lambda_handler(bad, FakeLambdaContext())
    assert info.value.details[0]["loc"] == "output_uri"


def test_nowhere_to_write_fails_before_any_backend_call(agent: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RESULTS_BUCKET", raising=False)
    with pytest.raises(PayloadTooLarge) as info:
        lambda_handler(_map_event(agent, _long_datasets(3, 100_000)), FakeLambdaContext())
    assert "256 KB" in info.value.message and info.value.details[0]["loc"] == "output_uri"
    assert agent.infer_requests() == []


def test_http_spill_keeps_the_envelope_under_6_mb() -> None:
    from fair_runners import RunResult
    from fair_runners.aws import S3Location, fit

    datasets = _long_datasets(4, 1_000_000)
    for dataset in datasets:
        dataset["conversation"][0]["assistant"] = "a" * 700_000
    result = RunResult.model_validate(
        {
            "run_id": "r",
            "mode": "alquimia",
            "datasets": datasets,
            "summaries": [],
            "total_datasets": 4,
            "totals": {
                "sessions": 4,
                "turns": 4,
                "successes": 4,
                "failures": 0,
                "skipped": 0,
                "retries": 0,
                "input_tokens": 0,
                "output_tokens": 0,
                "wall_time_ms": 1.0,
            },
        }
    )
    written: dict[str, bytes] = {}
    target = S3Location("b-1", "results/r/result.json")
    answer_ = fit(
        result.model_dump(mode="json"),
        Channel.HTTP,
        target=target,
        write=lambda at, data: written.update({at.uri: data}),
    )
    assert answer_["result_uri"] == target.uri and len(written[target.uri]) > Channel.HTTP.limit
    # Under the limit nothing is written.
    result.datasets = result.datasets[:3]
    written.clear()
    assert "datasets" in fit(
        result.model_dump(mode="json"),
        Channel.HTTP,
        target=target,
        write=lambda at, d: written.update({at.uri: d}),
    )
    assert written == {}


def test_importing_the_library_and_handler_imports_no_boto3() -> None:
    import subprocess
    import sys

    code = (
        "import sys, fair_runners, fair_runners.aws\n"
        "assert 'boto3' not in sys.modules and 'botocore' not in sys.modules, 'AWS SDK imported eagerly'\n"
        "import handler.app, handler.merge\n"  # Powertools itself pulls in botocore, but not boto3
        "assert 'boto3' not in sys.modules, 'boto3 imported eagerly'\n"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parent.parent)
    )
