"""Deployment keys from Secrets Manager / SSM (cached, redacted), and Idempotency-Key replay on DynamoDB."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from fair_runners import ConfigurationError, parse_request, prepare
from fair_runners.aws import AwsSettings, read_secret, reset_cache, resolve_credentials
from handler.app import lambda_handler

from ._aws import Aws, answer, moto_aws
from .conftest import ALQUIMIA_KEY, LLM_KEY, FakeLambdaContext, alquimia_request, llm_request, make_datasets
from .helpers import api_event


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    yield from moto_aws(monkeypatch)


@pytest.fixture
def aws_idem(monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    yield from moto_aws(monkeypatch, idempotency=True)


def _keyless_alquimia(agent: Any, sessions: int = 2) -> dict[str, Any]:
    request = alquimia_request(agent, make_datasets(sessions, 2))
    del request["config"]["api_key"]
    return request


@pytest.mark.parametrize("where", ["secretsmanager", "secretsmanager-json", "ssm"])
def test_alquimia_key_from_a_secret_store(
    agent: Any, aws: Aws, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    if where == "secretsmanager":
        aws.secretsmanager.create_secret(Name="prod/alquimia", SecretString=ALQUIMIA_KEY)
        monkeypatch.setenv("ALQUIMIA_API_KEY_SECRET", "prod/alquimia")
    elif where == "secretsmanager-json":
        aws.secretsmanager.create_secret(
            Name="prod/keys", SecretString=json.dumps({"alquimia": ALQUIMIA_KEY})
        )
        monkeypatch.setenv("ALQUIMIA_API_KEY_SECRET", "prod/keys#alquimia")
    else:
        aws.ssm.put_parameter(Name="/fair-runners/alquimia", Value=ALQUIMIA_KEY, Type="SecureString")
        monkeypatch.setenv("ALQUIMIA_API_KEY_SECRET", "ssm:/fair-runners/alquimia")
    monkeypatch.setenv("ALQUIMIA_BASE_URL", agent.url)  # the agent the deployment's key belongs to
    result = lambda_handler(_keyless_alquimia(agent), FakeLambdaContext())
    assert result["totals"]["successes"] == 4
    assert {r["authorization"] for r in agent.infer_requests()} == {f"Bearer {ALQUIMIA_KEY}"}
    assert ALQUIMIA_KEY not in json.dumps(result)


def test_llm_key_from_secrets_manager(llm: Any, aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    aws.secretsmanager.create_secret(Name="prod/llm", SecretString=LLM_KEY)
    monkeypatch.setenv("LLM_API_KEY_SECRET", "prod/llm")
    monkeypatch.setenv("LLM_BASE_URL", f"{llm.url}/v1")  # the endpoint the deployment's key belongs to
    request = llm_request(llm, make_datasets(1, 2))
    del request["connector"]["params"]["api_key"]
    result = lambda_handler(request, FakeLambdaContext())
    assert result["totals"]["successes"] == 2


def test_secret_values_are_cached_and_redacted(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    aws.secretsmanager.create_secret(Name="k", SecretString="secret-value-1234")
    first = read_secret("k", env_name="ALQUIMIA_API_KEY_SECRET", max_age=300)
    aws.secretsmanager.put_secret_value(SecretId="k", SecretString="rotated-value-5678")
    assert read_secret("k", env_name="ALQUIMIA_API_KEY_SECRET", max_age=300) == first  # cached
    reset_cache()  # what max_age expiry does in a warm Lambda
    assert read_secret("k", env_name="ALQUIMIA_API_KEY_SECRET", max_age=300) == "rotated-value-5678"
    monkeypatch.setenv("ALQUIMIA_API_KEY_SECRET", "k")
    monkeypatch.setenv("ALQUIMIA_BASE_URL", "https://public.test")
    request = {
        "datasets": make_datasets(1, 1),
        "config": {"base_url": "https://public.test", "agent_id": "a"},
    }
    credentials = resolve_credentials(parse_request(request), AwsSettings.from_env())
    prepared = prepare(request, credentials=credentials)
    assert prepared.redactor.redact("key=rotated-value-5678 here") == "key=*** here"


def test_a_missing_secret_is_a_configuration_error(
    agent: Any, aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALQUIMIA_API_KEY_SECRET", "does/not/exist")
    with pytest.raises(ConfigurationError) as info:
        lambda_handler(_keyless_alquimia(agent), FakeLambdaContext())
    assert "ALQUIMIA_API_KEY_SECRET" in str(info.value)
    assert agent.infer_requests() == []


def test_a_payload_cannot_name_a_secret(agent: Any, aws: Aws) -> None:
    aws.secretsmanager.create_secret(Name="prod/alquimia", SecretString=ALQUIMIA_KEY)
    request = _keyless_alquimia(agent)
    request["config"]["api_key_secret"] = "prod/alquimia"
    request["api_key_secret"] = "prod/alquimia"
    status, body = answer(lambda_handler(api_event("POST", "/run", request), FakeLambdaContext()))
    assert status == 400 and body["details"][0]["loc"] == "config.api_key"


def test_idempotency_key_replays_the_first_answer(agent: Any, aws_idem: Aws) -> None:
    request = alquimia_request(agent, make_datasets(2, 2))
    event = api_event("POST", "/run", request, {"Idempotency-Key": "k-1"})
    first = lambda_handler(event, FakeLambdaContext(request_id="a"))
    calls = len(agent.infer_requests())
    again = lambda_handler(event, FakeLambdaContext(request_id="b"))
    assert calls == 4 and len(agent.infer_requests()) == 4  # no second backend call
    assert json.loads(again["body"]) == json.loads(first["body"])
    assert again["headers"]["Idempotent-Replayed"] == "true"
    other = api_event(
        "POST", "/run", alquimia_request(agent, make_datasets(1, 1)), {"Idempotency-Key": "k-1"}
    )
    status, body = answer(lambda_handler(other, FakeLambdaContext()))
    assert status == 409 and "different request body" in body["error"]


def test_run_id_is_an_idempotency_key_for_post_runs(agent: Any, aws_idem: Aws) -> None:
    request = {**alquimia_request(agent, make_datasets(2, 1)), "run_id": "nightly-42"}
    first_status, first = answer(lambda_handler(api_event("POST", "/runs", request), FakeLambdaContext()))
    again_status, again = answer(lambda_handler(api_event("POST", "/runs", request), FakeLambdaContext()))
    assert first_status == again_status == 202 and again == first


def test_idempotent_answers_spill_past_the_dynamodb_item_size(agent: Any, aws_idem: Aws) -> None:
    datasets = make_datasets(3, 1)
    for dataset in datasets:
        dataset["conversation"][0]["query"] = "x" * 80_000
    event = api_event("POST", "/run", alquimia_request(agent, datasets), {"Idempotency-Key": "big"})
    status, first = answer(lambda_handler(event, FakeLambdaContext()))
    assert status == 200 and first["result_uri"].startswith("s3://") and "datasets" not in first
    status, again = answer(lambda_handler(event, FakeLambdaContext()))
    assert again == first and len(agent.infer_requests()) == 3


def test_idempotency_is_off_without_a_table(agent: Any, aws: Aws) -> None:
    event = api_event("POST", "/run", alquimia_request(agent, make_datasets(1, 1)), {"Idempotency-Key": "k"})
    lambda_handler(event, FakeLambdaContext())
    lambda_handler(event, FakeLambdaContext())
    assert len(agent.infer_requests()) == 2
