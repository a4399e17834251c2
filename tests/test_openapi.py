"""The committed OpenAPI document is the generated one, and it describes the handler's real replies."""

from __future__ import annotations

import json
from pathlib import Path

from fair_runners import RunRequest, RunResult
from fair_runners.openapi import build, render

DOCUMENT = Path(__file__).resolve().parent.parent / "openapi" / "openapi.json"


def test_committed_document_is_up_to_date() -> None:
    assert DOCUMENT.read_text() == render(), (
        "openapi/openapi.json is stale: run `python -m fair_runners.openapi > openapi/openapi.json`"
    )


def test_document_shape() -> None:
    doc = build()
    assert doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) == {"/run", "/runs", "/runs/{run_id}"}
    run = doc["paths"]["/run"]["post"]
    assert set(run["responses"]) == {"200", "400", "409", "413", "500", "503"}
    assert doc["paths"]["/runs"]["post"]["responses"]["202"]
    schemas = doc["components"]["schemas"]
    # Exactly one of `datasets` / `datasets_uri` is required: checked by the model, not the schema.
    assert {"datasets", "datasets_uri"} <= set(schemas["RunRequest"]["properties"])
    assert set(RunResult.model_fields) <= set(schemas["RunResult"]["properties"])
    assert set(RunRequest.model_fields) <= set(schemas["RunRequest"]["properties"])
    # Every $ref resolves.
    text = json.dumps(doc)
    for name in {part.split('"')[0] for part in text.split("#/components/schemas/")[1:]}:
        assert name in schemas, name
    assert set(doc["components"]["securitySchemes"]) == {"sigv4", "jwt"}
