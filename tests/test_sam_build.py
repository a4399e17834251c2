"""`sam build` produces an artifact whose handler imports in a clean interpreter and answers a sample event.

aws-sam-cli lives in its own virtualenv (`make sam-cli` -> .tools/sam-venv; `make test` depends on it). The
build runs without Docker (python3.11 on PATH) into a temporary directory; then `python -I` with only the
artifact directory on sys.path imports `handler.app` and runs events/ samples against the loopback agent.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT

SAM_CANDIDATES = [os.environ.get("FAIR_RUNNERS_SAM", ""), str(ROOT / ".tools" / "sam-venv" / "bin" / "sam")]


def _sam() -> str | None:
    for candidate in SAM_CANDIDATES:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("sam")


# What the Lambda python3.11 runtime provides besides the standard library (the artifacts rely on it).
RUNTIME_PACKAGES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3", "six.py")


def _requirements(name: str) -> list[str]:
    lines = [line.strip() for line in (ROOT / name).read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_requirements_match_pyproject() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    runner = sorted(d for d in project if not d.startswith("boto3"))  # boto3: the Lambda runtime's
    assert sorted(_requirements("requirements.txt")) == runner
    assert set(_requirements("requirements-merge.txt")) <= set(project)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sam = _sam()
    if sam is None:
        pytest.skip("aws-sam-cli is not installed: run `make sam-cli` (make test does)")
    if shutil.which("python3.11") is None:
        pytest.skip("sam build without Docker needs python3.11 on PATH")
    out = tmp_path_factory.mktemp("sam") / "build"
    env = {**os.environ, "SAM_CLI_TELEMETRY": "0", "SAM_CLI_CONTACT_TELEMETRY": "0"}
    process = subprocess.run(
        [
            sam,
            "build",
            "--template-file",
            str(ROOT / "template.yaml"),
            "--build-dir",
            str(out),
            "--build-in-source",
            "--no-cached",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert process.returncode == 0, process.stdout[-4000:] + process.stderr[-4000:]
    return out


_PROBE = r"""
import json, sys
sys.path[:] = [p for p in sys.path if 'site-packages' not in p and 'dist-packages' not in p]
sys.path.insert(0, sys.argv[1])
sys.path.append(sys.argv[2])  # what the Lambda runtime provides: boto3, botocore
import handler.app, handler.merge, fair_runners
assert handler.app.__file__.startswith(sys.argv[1]), handler.app.__file__
assert 'boto3' not in sys.modules, 'boto3 imported at handler import time'
class Context:
    aws_request_id = 'sam-build-probe'
    function_name = 'fair-runners'
    memory_limit_in_mb = 1024
    invoked_function_arn = 'arn:aws:lambda:us-east-1:123456789012:function:fair-runners'
    def get_remaining_time_in_millis(self):
        return 60000
answers = []
for event in json.loads(sys.stdin.read()):
    answers.append(handler.app.lambda_handler(event, Context()))
print(json.dumps(answers))
"""


@pytest.fixture(scope="module")
def lambda_runtime(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding what the python3.11 Lambda runtime provides on top of the standard library."""
    import botocore

    site = Path(botocore.__file__).resolve().parent.parent
    folder = tmp_path_factory.mktemp("lambda-runtime")
    for name in RUNTIME_PACKAGES:
        (folder / name).symlink_to(site / name)
    return folder


def _megabytes(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6


@pytest.mark.slow
def test_each_function_gets_only_what_it_needs(built: Path) -> None:
    runner, merge = built / "RunnerFunction", built / "MergeFunction"
    sizes = {"runner": _megabytes(runner), "merge": _megabytes(merge)}
    assert sizes["runner"] <= 100, sizes
    assert sizes["merge"] <= 25, sizes
    assert not (merge / "langchain_core").exists() and not (merge / "aiohttp").exists()
    assert not (runner / "botocore").exists() and not (runner / "fair_runners" / "testing").exists()


@pytest.mark.slow
def test_the_merge_artifact_imports_its_handler_alone(built: Path, lambda_runtime: Path) -> None:
    probe = (
        "import sys\n"
        "sys.path[:] = [p for p in sys.path if 'site-packages' not in p and 'dist-packages' not in p]\n"
        "sys.path.insert(0, sys.argv[1]); sys.path.append(sys.argv[2])\n"
        "import handler.merge\n"
        "assert handler.merge.__file__.startswith(sys.argv[1])\n"
        "print(sorted(m for m in ('aiohttp', 'httpx', 'langchain_core', 'openai') if m in sys.modules))\n"
    )
    process = subprocess.run(
        [sys.executable, "-I", "-c", probe, str(built / "MergeFunction"), str(lambda_runtime)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": os.environ.get("PATH", ""), "AWS_DEFAULT_REGION": "us-east-1"},
    )
    assert process.returncode == 0, process.stderr[-3000:]
    assert process.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_built_artifact_answers_a_sample_event(built: Path, agent: Any, lambda_runtime: Path) -> None:
    from fair_runners.demo import retarget

    from .conftest import load_event

    artifact = built / "RunnerFunction"
    assert (artifact / "handler" / "app.py").is_file() and (
        artifact / "fair_runners" / "__init__.py"
    ).is_file()
    assert (artifact / "pydantic_core").is_dir() and (artifact / "aws_lambda_powertools").is_dir()
    assert not (artifact / "tests").exists() and not (artifact / ".tools").exists()
    assert (built / "MergeFunction" / "handler" / "merge.py").is_file()
    template = (built / "template.yaml").read_text()
    assert re.search(r"CodeUri: RunnerFunction", template)
    events = [
        retarget(load_event(name), agent.url, agent.url)
        for name in ("http_api_v2_alquimia.json", "direct_alquimia.json", "map_batch_alquimia.json")
    ]
    env = {
        "PATH": os.environ.get("PATH", ""),
        "FAIR_RUNNERS_ALLOWED_HOSTS": os.environ.get("FAIR_RUNNERS_ALLOWED_HOSTS", ""),
        "POWERTOOLS_METRICS_NAMESPACE": "FairRunnersTest",
        "POWERTOOLS_SERVICE_NAME": "fair-runners",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    process = subprocess.run(
        [sys.executable, "-I", "-c", _PROBE, str(artifact), str(lambda_runtime)],
        input=json.dumps(events),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert process.returncode == 0, process.stderr[-4000:]
    last_line = process.stdout.strip().splitlines()[-1]
    http, direct, batch = json.loads(last_line)
    assert http["statusCode"] == 200
    body = json.loads(http["body"])
    assert body["success"] and body["totals"]["successes"] == 6
    assert direct["totals"]["failures"] == 0 and batch["totals"]["sessions"] == 3
    assert len(agent.infer_requests()) == body["totals"]["turns"] + direct["totals"]["turns"] + 9
