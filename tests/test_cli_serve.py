"""`fair-runners serve`: a real HTTP client against the local API Gateway v2 emulation."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from fair_runners.cli._serve import LambdaProxy
from fair_runners.testing import AlquimiaAgent

from ._cli import ROOT, cli_env
from .conftest import ALQUIMIA_KEY, alquimia_request, free_port, make_datasets


@pytest.fixture
def served(agent: AlquimiaAgent, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`fair-runners serve` in a subprocess on a free port: (base URL, its stderr log file)."""
    port = free_port()
    log = tmp_path / "serve.log"
    with (
        log.open("w") as sink,
        subprocess.Popen(
            [sys.executable, "-m", "fair_runners.cli", "serve", "--port", str(port)],
            cwd=ROOT,
            env=cli_env(),
            stdout=sink,
            stderr=subprocess.STDOUT,
        ) as proc,
    ):
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    httpx.get(f"{url}/", timeout=1)
                    break
                except httpx.TransportError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"serve did not start: {log.read_text()}") from None
                    time.sleep(0.1)
            yield url, log
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def test_serve_answers_run_404_405_and_bad_json(served: tuple[str, Path], agent: AlquimiaAgent) -> None:
    url, log = served
    with httpx.Client(base_url=url, timeout=30) as client:
        response = client.post("/run", json=alquimia_request(agent, make_datasets(sessions=2, turns=2)))
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.headers["x-request-id"]
        body = response.json()
        assert body["success"] and body["totals"]["successes"] == 4
        assert body["datasets"][1]["conversation"][1]["assistant"] == "bot: turn 2 of s1: question 1 of s1"

        bad = client.post("/run", content=b"{not json", headers={"content-type": "application/json"})
        assert bad.status_code == 400
        assert bad.json()["success"] is False and "not valid JSON" in bad.json()["error"]

        invalid = client.post("/run", json={"datasets": []})
        assert invalid.status_code == 400 and invalid.json()["details"][0]["loc"] == "datasets"

        assert client.get("/run").status_code == 405
        assert client.post("/nowhere?x=1", json={}).status_code == 404
    lines = log.read_text()
    assert "POST /run -> 200 in " in lines and "POST /run -> 400 in " in lines and "GET /run -> 405" in lines
    assert ALQUIMIA_KEY not in lines


def test_event_shape_seen_by_the_handler() -> None:
    seen: list[dict[str, Any]] = []

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        seen.append(event)
        remaining = context.get_remaining_time_in_millis()
        return {
            "statusCode": 201,
            "headers": {"X-Remaining": str(remaining)},
            "cookies": ["a=1"],
            "body": json.dumps({"ok": True}),
        }

    with TestClient(LambdaProxy(handler, timeout_s=30)) as client:
        response = client.post(
            "/runs/abc?page=2&tag=a&tag=b",
            content=b"\x00\xffbinary",
            headers={"content-type": "application/octet-stream", "X-Trace": "t1", "Cookie": "c=1; d=2"},
        )
        text = client.put("/run", content="plain text", headers={"content-type": "text/plain"})
    assert response.status_code == 201 and response.json() == {"ok": True}
    assert 0 < int(response.headers["x-remaining"]) <= 30_000
    assert response.headers["set-cookie"] == "a=1"
    event = seen[0]
    assert event["version"] == "2.0" and event["routeKey"] == "$default"
    assert event["rawPath"] == "/runs/abc" and event["rawQueryString"] == "page=2&tag=a&tag=b"
    assert event["queryStringParameters"] == {"page": "2", "tag": "a,b"}
    assert event["headers"]["x-trace"] == "t1" and event["cookies"] == ["c=1", "d=2"]
    assert event["isBase64Encoded"] is True and event["body"] == "AP9iaW5hcnk="
    http = event["requestContext"]["http"]
    assert http["method"] == "POST" and http["path"] == "/runs/abc"
    assert event["requestContext"]["requestId"]
    assert ".lambda-url." not in event["requestContext"]["domainName"]
    assert text.status_code == 201
    assert seen[1]["isBase64Encoded"] is False and seen[1]["body"] == "plain text"
    assert seen[1]["requestContext"]["http"]["method"] == "PUT"


def test_handler_exception_is_api_gateways_500() -> None:
    def broken(event: Any, context: Any) -> Any:
        raise RuntimeError("boom")

    with TestClient(LambdaProxy(broken)) as client:
        response = client.post("/run", json={})
    assert response.status_code == 500 and response.json() == {"message": "Internal Server Error"}


def test_api_key_stays_out_of_the_log(agent: AlquimiaAgent) -> None:
    lines: list[str] = []
    from handler.app import lambda_handler

    with TestClient(LambdaProxy(lambda_handler, log=lines.append)) as client:
        response = client.post("/run", json=alquimia_request(agent, make_datasets(sessions=1, turns=1)))
    assert response.status_code == 200
    assert lines and lines[0].startswith("POST /run -> 200 in ")
    assert ALQUIMIA_KEY not in "".join(lines)
