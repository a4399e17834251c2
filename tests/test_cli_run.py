"""`fair-runners run` in a subprocess against the loopback servers: exit codes, formats, resume, flags."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from fair_runners.testing import AlquimiaAgent, Fault, OpenAICompatServer

from ._cli import cli
from .conftest import ALQUIMIA_KEY, LLM_KEY, make_datasets


def _write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


def _alquimia_flags(agent: AlquimiaAgent) -> list[str]:
    return ["--base-url", agent.url, "--agent-id", "bot"]  # type: ignore[attr-defined]


def test_dataset_array_plus_flags_exit_0_json(agent: AlquimiaAgent, tmp_path: Path) -> None:
    data = _write(tmp_path / "datasets.json", make_datasets(sessions=3, turns=2))
    out = tmp_path / "out.json"
    proc = cli("run", str(data), *_alquimia_flags(agent), "-o", str(out), ALQUIMIA_API_KEY=ALQUIMIA_KEY)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    assert result["success"] and result["complete"] and result["mode"] == "alquimia"
    answers = [b["assistant"] for b in result["datasets"][2]["conversation"]]
    assert answers == ["bot: turn 1 of s2: question 0 of s2", "bot: turn 2 of s2: question 1 of s2"]
    assert [s["successes"] for s in result["summaries"]] == [2, 2, 2]
    # Not a terminal: plain progress lines and the summary table on stderr, no escape codes.
    assert "session s1 done: 2 ok, 0 failed, 0 skipped" in proc.stderr
    assert "run finished (complete): 6/6 turns answered" in proc.stderr
    assert "total (3)" in proc.stderr and f"wrote {out} (json)" in proc.stderr
    assert "\x1b[" not in proc.stderr
    assert ALQUIMIA_KEY not in proc.stderr + proc.stdout


def test_failed_turns_exit_1_and_errors_listed(agent: AlquimiaAgent, tmp_path: Path) -> None:
    agent.add_fault(Fault("status", query="question 1 of s0", status=400, times=None))
    data = _write(tmp_path / "datasets.json", make_datasets(sessions=2, turns=2))
    proc = cli("run", str(data), *_alquimia_flags(agent), ALQUIMIA_API_KEY=ALQUIMIA_KEY)
    assert proc.returncode == 1
    result = json.loads(proc.stdout)  # no -o: the response JSON on stdout
    turn = result["summaries"][0]["turns"][1]
    assert turn["status"] == "error" and turn["error_type"] == "permanent"
    assert result["datasets"][0]["conversation"][1]["assistant"].startswith("[ERROR] ")
    assert "failed s0 / s0-q1: permanent after 1 attempt" in proc.stderr
    assert "failed s0 / s0-q1: [ERROR]" in proc.stderr


def test_deadline_skips_exit_1(agent: AlquimiaAgent, tmp_path: Path) -> None:
    agent.latency_s = 0.3
    data = _write(tmp_path / "datasets.json", make_datasets(sessions=1, turns=4))
    proc = cli(
        "run", str(data), *_alquimia_flags(agent), "--deadline", "0.5", "-q", ALQUIMIA_API_KEY=ALQUIMIA_KEY
    )
    assert proc.returncode == 1
    assert proc.stderr == ""  # --quiet
    result = json.loads(proc.stdout)
    assert result["complete"] is False and result["summaries"][0]["skipped"] >= 2


@pytest.mark.parametrize(
    ("content", "loc"),
    [
        ([{"session_id": "s1", "assistant_id": "bot", "conversation": [{"qa_id": "q1"}]}], "datasets.0"),
        ("{not json", "datasets.json:1:2"),
        ({"datasets": []}, "datasets"),
    ],
)
def test_bad_input_exit_2_with_locations(
    agent: AlquimiaAgent, tmp_path: Path, content: Any, loc: str
) -> None:
    path = tmp_path / "datasets.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    proc = cli("run", str(path), *_alquimia_flags(agent), ALQUIMIA_API_KEY=ALQUIMIA_KEY)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ")
    assert f"  {tmp_path / loc if ':' in loc else loc}" in proc.stderr
    assert proc.stdout == "" and agent.requests == []


def test_bad_input_field_location_in_conversation(agent: AlquimiaAgent, tmp_path: Path) -> None:
    datasets = make_datasets(sessions=1, turns=3)
    del datasets[0]["conversation"][2]["query"]
    data = _write(tmp_path / "d.json", datasets)
    proc = cli("run", str(data), *_alquimia_flags(agent), ALQUIMIA_API_KEY=ALQUIMIA_KEY)
    assert proc.returncode == 2
    assert "  datasets.0.conversation.2.query: Field required" in proc.stderr


def test_missing_key_and_conflicting_flags_exit_2(agent: AlquimiaAgent, tmp_path: Path) -> None:
    data = _write(tmp_path / "d.json", make_datasets(sessions=1, turns=1))
    proc = cli("run", str(data), *_alquimia_flags(agent))  # no ALQUIMIA_API_KEY in env
    assert proc.returncode == 2 and "config.api_key" in proc.stderr
    proc = cli("run", str(data), *_alquimia_flags(agent), "--model", "m", ALQUIMIA_API_KEY=ALQUIMIA_KEY)
    assert proc.returncode == 2 and "select different targets" in proc.stderr
    proc = cli("run", str(data), "--model", "m", "--param", "api_key=sk-secret")
    assert proc.returncode == 2 and "set env LLM_API_KEY" in proc.stderr
    proc = cli("run", str(data), "--max-attempts", "0")
    assert proc.returncode == 2  # typer's own range check


def test_jsonl_in_llm_flags_and_every_output_format(llm: OpenAICompatServer, tmp_path: Path) -> None:
    datasets = make_datasets(sessions=2, turns=2, context="Be brief.")
    datasets[0]["conversation"][0]["ground_truth_assistant"] = "expected, with a comma"
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(d) + "\n" for d in datasets))
    flags = [
        "--connector-class",
        "langchain_openai.ChatOpenAI",
        "--model",
        "test-model",
        "--base-url",
        f"{llm.url}/v1",  # type: ignore[attr-defined]
        "--no-history",
        "--param",
        "temperature=0",
        "--max-concurrency",
        "2",
    ]
    outputs = {fmt: tmp_path / f"out.{fmt}" for fmt in ("json", "jsonl", "csv")}
    for fmt, out in outputs.items():
        proc = cli("run", str(source), *flags, "-o", str(out), LLM_API_KEY=LLM_KEY)
        assert proc.returncode == 0, proc.stderr
        assert f"({fmt})" in proc.stderr
    assert LLM_KEY not in proc.stderr + proc.stdout
    result = json.loads(outputs["json"].read_text())
    assert result["mode"] == "llm" and result["summaries"][0]["input_tokens"] > 0
    expected = "echo: question 1 of s1 (history=0, system=yes)"  # --no-history: each turn alone
    assert result["datasets"][1]["conversation"][1]["assistant"] == expected
    assert all(r["model"] == "test-model" for r in llm.requests)

    lines = outputs["jsonl"].read_text().splitlines()
    assert [json.loads(line)["session_id"] for line in lines] == ["s0", "s1"]
    assert json.loads(lines[1])["conversation"][1]["assistant"] == expected

    rows = list(csv.DictReader(io.StringIO(outputs["csv"].read_text())))
    assert len(rows) == 4
    assert list(rows[0]) == [
        "session_id",
        "qa_id",
        "query",
        "answer",
        "ground_truth",
        "status",
        "latency_ms",
        "attempts",
        "error_type",
    ]
    assert rows[0]["ground_truth"] == "expected, with a comma"
    assert rows[3]["session_id"] == "s1" and rows[3]["answer"] == expected
    assert {r["status"] for r in rows} == {"ok"} and all(float(r["latency_ms"]) > 0 for r in rows)

    proc = cli("run", str(source), *flags, "--format", "csv", LLM_API_KEY=LLM_KEY)
    assert proc.returncode == 0 and proc.stdout.startswith("session_id,qa_id,query,answer")


def test_full_request_file_from_stdin(agent: AlquimiaAgent) -> None:
    request = {
        "datasets": make_datasets(sessions=1, turns=1),
        "config": {"base_url": agent.url, "agent_id": "bot", "api_key": ALQUIMIA_KEY},  # type: ignore[attr-defined]
        "options": {"max_attempts": 1},
    }
    proc = cli("run", "-", "--format", "jsonl", input=json.dumps(request))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["conversation"][0]["assistant"] == "bot: turn 1 of s0: question 0 of s0"


def test_resume_sends_only_missing_and_failed_turns(agent: AlquimiaAgent, tmp_path: Path) -> None:
    agent.add_fault(
        Fault("status", query="question 1 of s0", status=400, times=None),
        Fault("status", query="question 2 of s1", status=400, times=None),
    )
    data = _write(tmp_path / "d.json", make_datasets(sessions=2, turns=3))
    out = tmp_path / "out.json"
    first = cli("run", str(data), *_alquimia_flags(agent), "-o", str(out), ALQUIMIA_API_KEY=ALQUIMIA_KEY)
    assert first.returncode == 1
    before = json.loads(out.read_text())
    assert [s["failures"] for s in before["summaries"]] == [1, 1]

    agent.faults.clear()
    agent.requests.clear()
    merged_csv = tmp_path / "merged.csv"
    proc = cli(
        "run",
        str(data),
        *_alquimia_flags(agent),
        "--resume",
        str(out),
        "-o",
        str(merged_csv),
        ALQUIMIA_API_KEY=ALQUIMIA_KEY,
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(r["query"] for r in agent.infer_requests()) == ["question 1 of s0", "question 2 of s1"]
    rows = list(csv.DictReader(io.StringIO(merged_csv.read_text())))
    assert [r["status"] for r in rows] == ["kept", "ok", "kept", "kept", "kept", "ok"]
    assert not any(r["answer"].startswith("[ERROR]") for r in rows)
    assert rows[0]["answer"] == before["datasets"][0]["conversation"][0]["assistant"]

    # A result file alone resumes too (the target from flags), updated in place; nothing left to send.
    agent.requests.clear()
    proc = cli("run", *_alquimia_flags(agent), "--resume", str(out), ALQUIMIA_API_KEY=ALQUIMIA_KEY)
    assert proc.returncode == 0, proc.stderr
    assert len(agent.infer_requests()) == 2  # out.json still had the two failures
    agent.requests.clear()
    proc = cli("run", *_alquimia_flags(agent), "--resume", str(out), ALQUIMIA_API_KEY=ALQUIMIA_KEY)
    assert proc.returncode == 0 and agent.infer_requests() == []
    final = json.loads(out.read_text())
    assert final["totals"]["successes"] == 6 and final["complete"]


def test_loopback_targets_are_allowed_remote_ones_are_not(monkeypatch: pytest.MonkeyPatch) -> None:
    from fair_runners.cli._inputs import allow_hosts, allow_loopback_targets

    monkeypatch.setenv("FAIR_RUNNERS_ALLOWED_HOSTS", "10.0.0.1:80")
    allow_loopback_targets({"config": {"base_url": "http://127.0.0.1:8765/api"}})
    allow_loopback_targets({"connector": {"params": {"base_url": "http://localhost:9000/v1"}}})
    allow_loopback_targets({"config": {"base_url": "http://example.com:8080"}})
    allow_hosts(["127.0.0.1:8765", "agent.internal:8080"])
    assert os.environ["FAIR_RUNNERS_ALLOWED_HOSTS"] == (
        "10.0.0.1:80,127.0.0.1:8765,localhost:9000,agent.internal:8080"
    )
