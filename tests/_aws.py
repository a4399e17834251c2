"""moto-backed AWS for the AWS layer's tests: a results bucket, an idempotency table, the state machine."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from fair_runners.aws import use_clients

ROOT = Path(__file__).resolve().parent.parent
ASL = ROOT / "statemachine" / "runs.asl.json"
BUCKET = "fair-runners-results-test"
TABLE = "fair-runners-idempotency-test"
MACHINE = "fair-runners-test-runs"
REGION = "us-east-1"
SUBSTITUTIONS = {
    "RunnerFunctionArn": f"arn:aws:lambda:{REGION}:123456789012:function:fair-runners-runner",
    "MergeFunctionArn": f"arn:aws:lambda:{REGION}:123456789012:function:fair-runners-merge",
    "MaxItemsPerBatch": "25",
    "MapMaxConcurrency": "40",
    "ToleratedFailurePercentage": "5",
}


def definition(substitutions: dict[str, str] | None = None) -> dict[str, Any]:
    """The ASL definition with the template's DefinitionSubstitutions applied, as CloudFormation does."""
    text = ASL.read_text()
    for name, value in (substitutions or SUBSTITUTIONS).items():
        text = text.replace("${" + name + "}", value)
    return json.loads(text)  # type: ignore[no-any-return]


@dataclass
class Aws:
    """Handles on the mocked services."""

    s3: Any
    sfn: Any
    dynamodb: Any
    secretsmanager: Any
    ssm: Any
    machine_arn: str

    def get_json(self, key: str, bucket: str = BUCKET) -> Any:
        """An object of the results bucket, parsed."""
        return json.loads(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())

    def put_json(self, key: str, value: Any, bucket: str = BUCKET) -> str:
        """Write JSON; return its s3:// URI."""
        self.s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(value).encode())
        return f"s3://{bucket}/{key}"

    def keys(self, prefix: str = "") -> list[str]:
        """Keys under a prefix."""
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def fake_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """moto's dummy credentials and `REGION` in the env (never a developer's real ones)."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)


def moto_aws(monkeypatch: pytest.MonkeyPatch, *, idempotency: bool = False) -> Iterator[Aws]:
    """Start moto, create the deployment's resources, point the env at them; reset the clients after."""
    fake_credentials(monkeypatch)
    for name in ("RESULTS_BUCKET", "STATE_MACHINE_ARN", "IDEMPOTENCY_TABLE", "ALQUIMIA_API_KEY_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("LLM_API_KEY_SECRET", raising=False)
    with mock_aws():
        use_clients(None)
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET)
        dynamodb = boto3.client("dynamodb", region_name=REGION)
        dynamodb.create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        sfn = boto3.client("stepfunctions", region_name=REGION)
        machine_arn = sfn.create_state_machine(
            name=MACHINE,
            definition=json.dumps(definition()),
            roleArn="arn:aws:iam::123456789012:role/fair-runners-test-sfn",
        )["stateMachineArn"]
        monkeypatch.setenv("RESULTS_BUCKET", BUCKET)
        monkeypatch.setenv("STATE_MACHINE_ARN", machine_arn)
        if idempotency:
            monkeypatch.setenv("IDEMPOTENCY_TABLE", TABLE)
        yield Aws(
            s3=s3,
            sfn=sfn,
            dynamodb=dynamodb,
            secretsmanager=boto3.client("secretsmanager", region_name=REGION),
            ssm=boto3.client("ssm", region_name=REGION),
            machine_arn=machine_arn,
        )
    use_clients(None)


def answer(response: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """(status, parsed body) of an HTTP response."""
    return int(response["statusCode"]), json.loads(response["body"])
