"""The Alquimia path never loads LangChain or a provider SDK, from import to a finished run."""

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
