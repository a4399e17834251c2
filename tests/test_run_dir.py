"""Run folders: every finished turn recorded as it finishes, a run killed with SIGKILL resumed from them (no
recorded turn sent again, at most the turns in flight at the kill sent twice), the manifest, and a folder of
another run refused unless overwritten."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fair_runners import resume_request, run_sync

from ._cli import ROOT, cli, cli_env
from .conftest import ALQUIMIA_KEY, alquimia_request, make_datasets


def _records(folder: Path) -> list[dict[str, Any]]:
    path = folder / "records.jsonl"
    if not path.exists():
        return []
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            lines.append(json.loads(line))
    return lines


def test_a_run_killed_with_sigkill_resumes_from_its_records(agent: Any, tmp_path: Path) -> None:
    agent.latency_s = 0.05
    folder = tmp_path / "run"
    request = {
        "datasets": make_datasets(12, 5),
        "config": {"agent_id": "bot"},
        "options": {"max_concurrency": 4},
    }
    request_file = tmp_path / "request.json"
    request_file.write_text(json.dumps(request))
    env = cli_env(ALQUIMIA_API_KEY=ALQUIMIA_KEY)  # keys only from env: never written to the folder
    args = [sys.executable, "-m", "fair_runners.cli", "run", str(request_file), "--base-url", agent.url]
    first = subprocess.Popen(
        [*args, "--run-dir", str(folder), "-q"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while len(_records(folder)) < 20 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.02)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    recorded = {(r["session_id"], r["index"]) for r in _records(folder) if r["status"] == "ok"}
    assert 20 <= len(recorded) < 60, len(recorded)  # killed in the middle
    before = [(r["session_id"], r["query"]) for r in agent.infer_requests()]
    agent.requests.clear()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["status"] == "running" and ALQUIMIA_KEY not in json.dumps(manifest)
    assert ALQUIMIA_KEY not in (folder / "request.json").read_text()

    resumed = cli(
        "run", "--resume", str(folder), "--base-url", agent.url, "-q", ALQUIMIA_API_KEY=ALQUIMIA_KEY
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    after = [(r["session_id"], r["query"]) for r in agent.infer_requests()]
    sent_again = {(sid, int(q.split()[1])) for sid, q in after} & recorded
    assert sent_again == set()  # no turn that has a record was sent again
    in_flight_at_kill = set(before) & set(after)
    assert len(in_flight_at_kill) <= 4  # at most max_concurrency turns were sent twice
    result = json.loads((folder / "result.json").read_text())
    assert result["complete"] and result["totals"]["successes"] == 60
    assert [d["session_id"] for d in result["datasets"]] == [f"s{i}" for i in range(12)]
    for dataset in result["datasets"]:
        sid = dataset["session_id"]
        answers = [t["assistant"] for t in dataset["conversation"]]
        assert all(
            a.startswith("bot: turn ") and a.endswith(f"question {j} of {sid}") for j, a in enumerate(answers)
        )
    final = json.loads((folder / "manifest.json").read_text())
    assert final["status"] == "complete" and final["resumes"] == 1
    # every turn on record once: the resumed run appended the turns it sent, not the ones it kept
    keys = [(r["session_id"], r["index"]) for r in _records(folder)]
    assert len(keys) == len(set(keys)) == 60
    assert all(r["status"] == "ok" for r in _records(folder))
    assert final["recorded"] == {"ok": 60, "error": 0, "kept": 0}


def test_the_library_writes_a_run_folder(agent: Any, tmp_path: Path) -> None:
    folder = tmp_path / "lib-run"
    result = run_sync({**alquimia_request(agent, make_datasets(2, 3)), "run_id": "nightly-1"}, run_dir=folder)
    records = _records(folder)
    assert [
        (r["session_id"], r["index"], r["status"])
        for r in sorted(records, key=lambda r: (r["session_id"], r["index"]))
    ] == [(f"s{i}", j, "ok") for i in range(2) for j in range(3)]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["run_id"] == "nightly-1" and manifest["turns"] == 6 and manifest["recorded"]["ok"] == 6
    assert {"python", "fair-runners"} <= set(manifest["versions"])
    assert manifest["target"]["agent_id"] == "bot" and ALQUIMIA_KEY not in json.dumps(manifest)
    assert json.loads((folder / "result.json").read_text())["totals"] == result.totals.model_dump(mode="json")
    again = resume_request(folder)
    assert again["options"]["skip_answered"] is True
    assert all(t["assistant"] for d in again["datasets"] for t in d["conversation"])


def test_a_folder_of_another_run_is_refused_unless_overwritten(agent: Any, tmp_path: Path) -> None:
    folder = tmp_path / "taken"
    run_sync({**alquimia_request(agent, make_datasets(1, 1)), "run_id": "first"}, run_dir=folder)
    request_file = tmp_path / "other.json"
    request_file.write_text(json.dumps({**alquimia_request(agent, make_datasets(1, 1)), "run_id": "second"}))
    refused = cli("run", str(request_file), "--run-dir", str(folder), "-q")
    assert refused.returncode == 2 and "another run" in refused.stderr
    done = cli("run", str(request_file), "--run-dir", str(folder), "--overwrite", "-q")
    assert done.returncode == 0, done.stderr
    assert json.loads((folder / "manifest.json").read_text())["run_id"] == "second"
    assert len(_records(folder)) == 1
