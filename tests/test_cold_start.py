"""The Alquimia path never loads LangChain or a provider SDK, from import to a finished run; env
`FAIR_RUNNERS_PRELOAD` moves an LLM deployment's LangChain import to init."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from .conftest import ROOT, alquimia_request, make_datasets

HEAVY = ("langchain", "langchain_core", "langchain_openai", "langchain_groq", "openai", "groq", "boto3")

SCRIPT = """
import json, sys
import handler.app
loaded_at_import = sorted(m for m in sys.modules if m.split('.')[0] in {heavy})
result = handler.app.lambda_handler(json.loads(sys.argv[1]), None)
loaded_after_run = sorted(m for m in sys.modules if m.split('.')[0] in {heavy})
ok = result["totals"]["successes"]
print(json.dumps({{"import": loaded_at_import, "run": loaded_after_run, "ok": ok}}))
"""


def test_alquimia_path_loads_no_langchain(agent: Any) -> None:
    request = alquimia_request(agent, make_datasets(sessions=2, turns=2))
    completed = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(heavy=set(HEAVY)), json.dumps(request)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report == {"import": [], "run": [], "ok": 4}


PRELOAD_SCRIPT = """
import sys
import handler.app
print(sorted(m for m in sys.modules if m in ("langchain_openai", "langchain_groq", "langchain_ollama")))
"""


def _import_with(preload: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FAIR_RUNNERS_PRELOAD": preload}
    return subprocess.run(
        [sys.executable, "-c", PRELOAD_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_preload_imports_the_named_providers_at_init() -> None:
    done = _import_with(" openai , langchain_groq.ChatGroq ")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "['langchain_groq', 'langchain_openai']"
    assert "WARNING" not in done.stdout + done.stderr


def test_preload_warns_of_names_it_will_not_import_and_the_function_still_starts() -> None:
    # not on the allowlist (not installed here either): a payload-independent deployment mistake, logged once
    done = _import_with("openai,os.system,langchain_ollama.ChatOllama")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "['langchain_openai']"
    warnings = [json.loads(line) for line in lines[:-1]]
    assert [w["level"] for w in warnings] == ["WARNING", "WARNING"]
    assert "'os.system' not loaded: not on the allowlist" in warnings[0]["message"]
    assert "'langchain_ollama.ChatOllama' not loaded" in warnings[1]["message"]
