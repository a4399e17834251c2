"""`fair-runners invoke` and `demo`: events through `lambda_handler` in a subprocess, as Lambda would."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest

from fair_runners.cli._demo import bundled_events, provider_emulators, response_object, retarget
from fair_runners.cli._invoke import LambdaContext, invoke
from fair_runners.testing import AlquimiaAgent, OpenAICompatServer

from ._cli import cli
from .conftest import EVENTS_DIR

EVENT_FILES = sorted(p.name for p in EVENTS_DIR.glob("*.json"))


@pytest.mark.parametrize("name", EVENT_FILES)
def test_invoke_every_sample_event(
    name: str, agent: AlquimiaAgent, llm: OpenAICompatServer, tmp_path: Path
) -> None:
    # The provider samples (Bedrock, Anthropic, Azure) run against their emulators, as the demo does.
    with provider_emulators(0.0) as azure_url:
        event = retarget(json.loads((EVENTS_DIR / name).read_text()), agent.url, llm.url, azure_url)  # type: ignore[attr-defined]
        path = tmp_path / name
        path.write_text(json.dumps(event))
        proc = cli("invoke", str(path), "--timeout", "60")
    assert proc.returncode == 0, proc.stderr
    status, result = response_object(json.loads(proc.stdout))  # stdout holds only the response
    if "statusCode" in event or "requestContext" in event:
        assert status == 200
    assert result["success"] and result["complete"]
    assert result["totals"]["turns"] == result["totals"]["successes"] > 0
    assert "REPORT RequestId: " in proc.stderr


def test_invoke_error_is_lambdas_error_object(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"datasets": []}))
    proc = cli("invoke", str(path))
    assert proc.returncode == 1
    error = json.loads(proc.stdout)
    assert error["errorType"] == "InvalidRequest" and "datasets" in error["errorMessage"]
    proc = cli("invoke", str(tmp_path / "missing.json"))
    assert proc.returncode == 2 and "missing.json" in proc.stderr


def test_invoke_context_deadline_is_real(agent: AlquimiaAgent, tmp_path: Path) -> None:
    """With --timeout 4 the handler stops its run in time (margin kept) and returns what it has."""
    agent.latency_s = 0.5
    event = json.loads((EVENTS_DIR / "direct_alquimia.json").read_text())
    event = retarget(event, agent.url, "http://unused")  # type: ignore[attr-defined]
    event["datasets"][0]["conversation"] *= 4  # 12 turns x 0.5 s in one session: longer than the timeout
    for i, turn in enumerate(event["datasets"][0]["conversation"]):
        turn = turn.copy()
        turn["qa_id"] = f"q{i}"
        event["datasets"][0]["conversation"][i] = turn
    path = tmp_path / "long.json"
    path.write_text(json.dumps(event))
    started = time.monotonic()
    proc = cli("invoke", str(path), "--timeout", "4", FAIR_RUNNERS_SAFETY_MARGIN_S="1")
    assert time.monotonic() - started < 15
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["complete"] is False and result["summaries"][0]["skipped"] > 0


def test_invoke_times_out_like_lambda() -> None:
    def slow(event: Any, context: LambdaContext) -> Any:
        time.sleep(2)
        return {"late": True}

    context = LambdaContext(timeout_s=0.2, function_name="f")
    assert context.get_remaining_time_in_millis() <= 200
    assert context.invoked_function_arn.endswith(":function:f") and context.aws_request_id
    outcome = invoke(slow, {}, context)
    assert outcome.response is None and outcome.error is not None
    assert outcome.error["errorType"] == "Sandbox.Timedout"
    assert outcome.duration_ms < 1500
    assert context.get_remaining_time_in_millis() == 0


def test_bundled_demo_events_match_the_repository() -> None:
    bundled = dict(bundled_events())
    assert bundled, "the package ships the demo's events"
    for name, text in bundled.items():
        assert json.loads(text) == json.loads((EVENTS_DIR / name).read_text()), name


def test_retarget_rewrites_base64_bodies() -> None:
    event = json.loads((EVENTS_DIR / "http_api_v2_llm_base64.json").read_text())
    moved = retarget(event, "http://127.0.0.1:1", "http://127.0.0.1:2")
    body = base64.b64decode(moved["body"]).decode()
    assert "http://127.0.0.1:2" in body and "8766" not in body


def test_demo_command_runs_every_bundled_event() -> None:
    proc = cli("demo", "--latency-ms", "0", timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name, _ in bundled_events():
        assert f"== {name}" in proc.stdout
    assert "events through lambda_handler: every turn answered" in proc.stdout
    assert '"_aws"' not in proc.stdout and "CloudWatchMetrics" not in proc.stdout  # no raw EMF in the story


def test_demo_with_no_events_is_bad_input(tmp_path: Path) -> None:
    proc = cli("demo", "--events", str(tmp_path))
    assert proc.returncode == 2 and "no *.json event files" in proc.stderr
