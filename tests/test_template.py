"""template.yaml passes cfn-lint and keeps its promises; the state machine definition is consistent."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import decode

import fair_runners
import fair_runners.aws

from ._aws import definition

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    parsed, problems = decode(str(TEMPLATE))
    assert not problems and parsed is not None
    return dict(parsed)


def test_cfn_lint_is_clean() -> None:
    import cfnlint.api

    matches = cfnlint.api.lint_file(TEMPLATE)
    assert [str(m) for m in matches] == []


def test_function_api_and_environment(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    assert template["Transform"] == "AWS::Serverless-2016-10-31"
    runner = resources["RunnerFunction"]["Properties"]
    assert runner["Handler"] == "handler.app.lambda_handler"
    assert resources["MergeFunction"]["Properties"]["Handler"] == "handler.merge.lambda_handler"
    assert template["Globals"]["Function"]["Runtime"] == "python3.11"
    assert template["Parameters"]["FunctionMemorySize"]["Default"] == 1024
    assert template["Parameters"]["FunctionTimeout"]["Default"] == 900
    env = {
        **template["Globals"]["Function"]["Environment"]["Variables"],
        **runner["Environment"]["Variables"],
    }
    for name in (
        "POWERTOOLS_SERVICE_NAME",
        "POWERTOOLS_METRICS_NAMESPACE",
        "LOG_LEVEL",
        "RESULTS_BUCKET",
        "STATE_MACHINE_ARN",
        "IDEMPOTENCY_TABLE",
        "ALQUIMIA_API_KEY_SECRET",
        "LLM_API_KEY_SECRET",
    ):
        assert name in env, name
    api = resources["HttpApi"]
    assert api["Type"] == "AWS::Serverless::HttpApi"
    paths = api["Properties"]["DefinitionBody"]["paths"]
    assert set(paths) == {"/run", "/runs", "/runs/{run_id}"}
    assert (
        set(paths["/run"]) == {"post"}
        and set(paths["/runs"]) == {"post"}
        and set(paths["/runs/{run_id}"]) == {"get"}
    )
    for operations in paths.values():
        for operation in operations.values():
            assert operation["security"] == {"Fn::If": ["UseJwt", [{"jwt": []}], [{"sigv4": []}]]}
    assert template["Parameters"]["AuthMode"]["Default"] == "IAM"
    assert template["Parameters"]["CorsAllowOrigin"]["Default"] == ""
    assert "*" not in str(api["Properties"]["CorsConfiguration"])
    assert api["Properties"]["DefaultRouteSettings"]["ThrottlingRateLimit"] == {"Ref": "ThrottlingRateLimit"}


def test_storage_is_private_and_expires(template: dict[str, Any]) -> None:
    bucket = template["Resources"]["ResultsBucket"]["Properties"]
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert bucket["LifecycleConfiguration"]["Rules"][0]["ExpirationInDays"] == {"Ref": "ResultRetentionDays"}
    table = template["Resources"]["IdempotencyTable"]["Properties"]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expiration", "Enabled": True}
    assert table["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]


def _statements(policies: list[Any]) -> list[dict[str, Any]]:
    found = []
    for policy in policies:
        for statement in policy.get("Statement", []):
            if "Fn::If" in statement:
                statement = statement["Fn::If"][1]
            found.append(statement)
    return found


def test_policies_are_least_privilege(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    runner = resources["RunnerFunction"]["Properties"]["Policies"]
    assert {"S3CrudPolicy": {"BucketName": {"Ref": "ResultsBucket"}}} in runner
    for statement in _statements(runner):
        assert statement["Effect"] == "Allow"
        assert statement["Resource"] != "*" and "*" not in str(statement["Action"]).replace("states:*", "")
    actions = {str(s["Action"]) for s in _statements(runner)}
    assert "states:StartExecution" in actions
    assert "secretsmanager:GetSecretValue" in actions and "ssm:GetParameter" in actions
    bedrock = next(s for s in _statements(runner) if s.get("Sid") == "BedrockInvokeListedModels")
    assert bedrock["Action"] == "bedrock:InvokeModel" and bedrock["Resource"] == {"Ref": "BedrockModelArns"}
    assert template["Parameters"]["BedrockModelArns"]["Default"] == ""  # no Bedrock access unless listed
    merge = resources["MergeFunction"]["Properties"]["Policies"]
    assert merge == [{"S3CrudPolicy": {"BucketName": {"Ref": "ResultsBucket"}}}]


def test_state_machine_resource_substitutes_every_placeholder(template: dict[str, Any]) -> None:
    machine = template["Resources"]["RunsStateMachine"]["Properties"]
    assert machine["DefinitionUri"] == "statemachine/runs.asl.json"
    text = (ROOT / machine["DefinitionUri"]).read_text()
    import re

    placeholders = set(re.findall(r"\$\{(\w+)\}", text))
    assert placeholders == set(machine["DefinitionSubstitutions"])
    for name in ("MaxItemsPerBatch", "MapMaxConcurrency", "ToleratedFailurePercentage"):
        assert machine["DefinitionSubstitutions"][name] == {"Ref": name}


def _error_names() -> set[str]:
    names = set()
    for module in (fair_runners, fair_runners.aws):
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, Exception):
                names.add(obj.__name__)
    return names


def test_state_machine_is_consistent() -> None:
    asl = definition()
    lambda_errors = {
        "Lambda.ServiceException",
        "Lambda.AWSLambdaException",
        "Lambda.SdkClientException",
        "Lambda.TooManyRequestsException",
    }
    ours = _error_names()
    assert {"InvalidRequest", "AwsServiceUnavailable", "ConfigurationError"} <= ours

    def check(machine: dict[str, Any]) -> None:
        states = machine["States"]
        assert machine["StartAt"] in states
        reachable = {machine["StartAt"]}
        for name, state in states.items():
            terminal = state["Type"] in ("Succeed", "Fail") or state.get("End") is True
            assert terminal != ("Next" in state), f"{name}: exactly one of Next/End"
            if "Next" in state:
                assert state["Next"] in states, name
                reachable.add(state["Next"])
            for catcher in state.get("Catch", []):
                assert catcher["Next"] in states
                reachable.add(catcher["Next"])
                for error in catcher["ErrorEquals"]:
                    assert error.startswith("States.") or error in ours | lambda_errors, error
            for retrier in state.get("Retry", []):
                for error in retrier["ErrorEquals"]:
                    assert error.startswith("States.") or error in ours | lambda_errors, error
                    assert error not in ("InvalidRequest", "PayloadTooLarge", "InternalError"), (
                        "never retry these"
                    )
            if state["Type"] == "Map":
                check(state["ItemProcessor"])
        assert reachable == set(states), f"unreachable: {set(states) - reachable}"

    check(asl)
    run_batch = asl["States"]["RunBatches"]["ItemProcessor"]["States"]["RunBatch"]
    retried = {e for r in run_batch["Retry"] for e in r["ErrorEquals"]}
    assert lambda_errors <= retried and "AwsServiceUnavailable" in retried
    map_state = asl["States"]["RunBatches"]
    assert map_state["ItemProcessor"]["ProcessorConfig"]["Mode"] == "DISTRIBUTED"
    assert map_state["ItemReader"]["ReaderConfig"]["InputType"] == "JSON"
    assert map_state["ItemBatcher"]["MaxInputBytesPerBatch"] <= 256 * 1024
    assert map_state["ResultWriter"]["Resource"] == "arn:aws:states:::s3:putObject"
    assert asl["States"]["MergeResults"]["Parameters"]["FunctionName"].startswith("arn:aws:lambda:")
    assert map_state["ResultPath"] == "$.map" and asl["States"]["MergeResults"]["End"] is True


def test_the_rate_and_cache_tables_match_the_library(template: dict[str, Any]) -> None:
    from fair_runners import cache, pacing

    resources = template["Resources"]
    for name, key, ttl in (
        ("RateTable", pacing.KEY_ATTRIBUTE, pacing.TTL_ATTRIBUTE),
        ("CacheTable", cache.KEY_ATTRIBUTE, cache.TTL_ATTRIBUTE),
    ):
        table = resources[name]["Properties"]
        assert table["KeySchema"] == [{"AttributeName": key, "KeyType": "HASH"}]
        assert table["TimeToLiveSpecification"] == {"AttributeName": ttl, "Enabled": True}
        assert table["BillingMode"] == "PAY_PER_REQUEST"
    env = resources["RunnerFunction"]["Properties"]["Environment"]["Variables"]
    assert env[pacing.ENV_TABLE] == {"Ref": "RateTable"}
    assert env[cache.TABLE_ENV] == {"Ref": "CacheTable"} and env[cache.BUCKET_ENV] == {"Ref": "ResultsBucket"}
    statements = {s.get("Sid"): s for s in _statements(resources["RunnerFunction"]["Properties"]["Policies"])}
    assert set(statements["SharedRateBudget"]["Action"]) == {
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
    }
    assert set(statements["ResponseCache"]["Action"]) == {"dynamodb:GetItem", "dynamodb:PutItem"}
    machine = json.loads((ROOT / "statemachine" / "runs.asl.json").read_text())
    batch_input = machine["States"]["RunBatches"]["ItemBatcher"]["BatchInput"]
    assert batch_input["fan_out.$"] == "$.settings.max_concurrency"  # the fallback share of a budget
