"""Turn a file (a request, a dataset list, JSONL, a previous result) plus command-line flags into a request.

Accepted files, by content (not by name, except that `.jsonl` is always read line by line):

| file                               | read as                                                    |
|------------------------------------|------------------------------------------------------------|
| `{"datasets": [...], ...}`         | a full request (a previous response works too)             |
| `{"Items": [...], "BatchInput": …}`| a Step Functions Map batch                                 |
| `[{...dataset...}, ...]`           | the datasets of a request                                  |
| `{"session_id": ..., ...}`         | one dataset                                                |
| one JSON object per line (JSONL)   | one dataset per line                                       |

Flags fill in or override the target and options. API keys never come from flags: the library reads them
from env (`ALQUIMIA_API_KEY`, `LLM_API_KEY`, then the provider's own variable).
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .. import InvalidRequest
from .._schemas import Batch

DEFAULT_CONNECTOR = "langchain_openai.ChatOpenAI"
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_RESPONSE_ONLY_KEYS = ("success", "complete", "mode", "summaries", "total_datasets", "totals", "warnings")


@dataclass
class TargetFlags:
    """Command-line choices for the target and the options (None: not given)."""

    connector_class: str | None = None
    model: str | None = None
    params: list[str] = field(default_factory=list)
    base_url: str | None = None
    agent_id: str | None = None
    channel_id: str | None = None
    api_version: str | None = None
    max_concurrency: int | None = None
    turn_timeout_s: float | None = None
    max_attempts: int | None = None
    history: bool | None = None
    skip_answered: bool | None = None
    run_id: str | None = None
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    cache: str | None = None
    cache_ttl_s: float | None = None


def _bad(loc: str, msg: str, summary: str | None = None) -> InvalidRequest:
    return InvalidRequest(summary or f"{loc}: {msg}", [{"loc": loc, "msg": msg}])


def read_json_file(path: Path) -> Any:
    """JSON or JSONL from `path` ("-" reads stdin); raises `InvalidRequest` naming the line and column."""
    if str(path) == "-":
        import sys

        text = sys.stdin.read()
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise _bad(str(path), "no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise _bad(str(path), f"cannot read: {exc}") from None
    if path.suffix != ".jsonl":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            if exc.msg != "Extra data":  # "Extra data": several JSON values, i.e. JSONL
                raise _bad(
                    f"{path}:{exc.lineno}:{exc.colno}", f"invalid JSON: {exc.msg}", f"{path} is not JSON"
                ) from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise _bad(
                f"{path}:{number}:{exc.colno}", f"invalid JSON line: {exc.msg}", f"{path} is not JSONL"
            ) from None
    return rows


def as_request(data: Any, source: str) -> dict[str, Any]:
    """A request dict from any accepted file shape (see the module docstring)."""
    if isinstance(data, list):
        return {"datasets": data}
    if isinstance(data, dict):
        if "datasets" in data:
            return {k: v for k, v in data.items() if k not in _RESPONSE_ONLY_KEYS}
        if "Items" in data:
            batch_input = data.get("BatchInput") or {}
            if not isinstance(batch_input, dict):
                raise _bad("BatchInput", "must be an object")
            return {**batch_input, "datasets": data["Items"]}
        if "session_id" in data or "conversation" in data:
            return {"datasets": [data]}
    raise _bad(
        source,
        "expected a request object with `datasets`, a JSON array of datasets, one dataset, or JSONL",
        f"{source}: not a request or a dataset list",
    )


def _param(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise _bad("--param", f"expected KEY=VALUE, got {item!r}")
    if key.lower() in ("api_key", "openai_api_key", "groq_api_key", "google_api_key"):
        raise _bad(
            "--param", f"{key} cannot be given on the command line: set env LLM_API_KEY (or the provider's)"
        )
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def apply_flags(request: dict[str, Any], flags: TargetFlags) -> dict[str, Any]:
    """Merge the flags into a copy of `request`; flags win over the file."""
    request = copy.deepcopy(request)
    llm_flags = flags.connector_class or flags.model or flags.params
    alquimia_flags = flags.agent_id or flags.channel_id or flags.api_version
    if llm_flags and alquimia_flags:
        raise _bad(
            "flags",
            "--connector-class/--model/--param (LLM) and --agent-id/--channel-id/--api-version (Alquimia) "
            "select different targets: use one set",
        )
    has_connector = bool(request.get("connector"))
    if llm_flags or (has_connector and not alquimia_flags):
        connector = dict(request.get("connector") or {})
        params = dict(connector.get("params") or {})
        params.update(_param(item) for item in flags.params)
        spelled = isinstance(connector.get("model"), str) and not flags.connector_class
        if flags.model and spelled:  # the file names "<provider>:<model>": keep its provider
            connector["model"] = f"{connector['model'].partition(':')[0]}:{flags.model}"
        elif flags.model:
            params["model"] = flags.model
        if flags.base_url:
            params["base_url"] = flags.base_url
        if spelled:
            connector.pop("class_path", None)
        else:
            connector.pop("model", None)
            connector["class_path"] = (
                flags.connector_class or connector.get("class_path") or DEFAULT_CONNECTOR
            )
        connector["params"] = params
        request["connector"] = connector
        if llm_flags:
            request.pop("config", None)  # the command line chose the LLM target
    else:
        config = dict(request.get("config") or {})
        for key, value in (
            ("base_url", flags.base_url),
            ("agent_id", flags.agent_id),
            ("channel_id", flags.channel_id),
            ("api_version", flags.api_version),
        ):
            if value is not None:
                config[key] = value
        if config:
            request["config"] = config
        if alquimia_flags:
            request.pop("connector", None)
    options = dict(request.get("options") or {})
    option_flags: tuple[tuple[str, object], ...] = (
        ("max_concurrency", flags.max_concurrency),
        ("turn_timeout_s", flags.turn_timeout_s),
        ("max_attempts", flags.max_attempts),
        ("history", flags.history),
        ("skip_answered", flags.skip_answered),
        ("requests_per_minute", flags.requests_per_minute),
        ("tokens_per_minute", flags.tokens_per_minute),
        ("cache", flags.cache),
        ("cache_ttl_s", flags.cache_ttl_s),
    )
    for name, flag in option_flags:
        if flag is not None:
            options[name] = flag
    if options:
        request["options"] = options
    if flags.run_id:
        request["run_id"] = flags.run_id
    return request


def merge_previous(request: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    """`request` with the answers of a previous result filled in, ready for `skip_answered`.

    A turn (matched by session and `qa_id`) takes the previous version when that one holds a real answer;
    failed (`[ERROR] ...`), empty and skipped turns keep the request's version so they are sent again.
    Sessions of the previous result that the request lacks are added, so a result file alone resumes too.
    """
    answered: dict[tuple[str, str], dict[str, Any]] = {}
    extra_sessions = []
    known = {d.get("session_id") for d in request.get("datasets") or [] if isinstance(d, dict)}
    for dataset in previous.get("datasets") or []:
        if not isinstance(dataset, dict):
            continue
        if dataset.get("session_id") not in known:
            extra_sessions.append(dataset)
            continue
        for turn in dataset.get("conversation") or []:
            if isinstance(turn, dict) and _has_answer(turn):
                answered[(str(dataset.get("session_id")), str(turn.get("qa_id")))] = turn
    datasets = []
    for dataset in request.get("datasets") or []:
        if isinstance(dataset, dict) and isinstance(dataset.get("conversation"), list):
            sid = str(dataset.get("session_id"))
            conversation = [
                answered.get((sid, str(t.get("qa_id"))), t) if isinstance(t, dict) else t
                for t in dataset["conversation"]
            ]
            dataset = {**dataset, "conversation": conversation}
        datasets.append(dataset)
    options = {**(request.get("options") or {}), "skip_answered": True}
    return {**request, "datasets": datasets + extra_sessions, "options": options}


def _has_answer(turn: dict[str, Any]) -> bool:
    try:
        return Batch.model_validate(turn).has_answer()
    except ValueError:
        return False


def allow_loopback_targets(request: dict[str, Any]) -> None:
    """Add the loopback hosts the request targets to env FAIR_RUNNERS_ALLOWED_HOSTS.

    On the command line the operator chose the target, so a local agent or model server over plain http
    (`http://127.0.0.1:8765`) is allowed; remote hosts still need https.
    """
    urls = [
        (request.get("config") or {}).get("base_url"),
        ((request.get("connector") or {}).get("params") or {}).get("base_url"),
        None if request.get("config") else os.environ.get("ALQUIMIA_BASE_URL"),
    ]
    hosts = []
    for url in urls:
        if not isinstance(url, str):
            continue
        parts = urlsplit(url)
        if parts.hostname in _LOOPBACK:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            hosts.append(f"{parts.hostname}:{port}")
    allow_hosts(hosts)


def allow_hosts(hosts: list[str]) -> None:
    """Append `hosts` (`host:port`) to env FAIR_RUNNERS_ALLOWED_HOSTS: backends allowed over plain http."""
    if hosts:
        current = [h for h in os.environ.get("FAIR_RUNNERS_ALLOWED_HOSTS", "").split(",") if h]
        os.environ["FAIR_RUNNERS_ALLOWED_HOSTS"] = ",".join(dict.fromkeys([*current, *hosts]))
