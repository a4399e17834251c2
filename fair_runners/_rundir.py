"""Run artifacts that survive a crash: one folder per run, written as the run goes.

    DIR/request.json    the request as it was run (datasets, target, options), without any key
    DIR/manifest.json   run id, mode, target without secrets, options, package versions, start, end, counts
    DIR/records.jsonl   one line per finished turn, appended and flushed the moment it finishes
    DIR/result.json     the full result (the response object), written atomically at the end

A run killed at any point (Ctrl-C twice, out of memory, `kill -9`) leaves every finished turn in
`records.jsonl`; `resume_request(DIR)` rebuilds the request with those answers filled in and
`skip_answered` on, so a re-run sends exactly the turns that have no record (LLM mode rebuilds each
session's history from the recorded answers). Only the library and the command line write run folders:
it is never a request option, so no request can make the Lambda write local files. Keys are never written:
a resumed run takes them from env again.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from ._errors import InvalidRequest
from ._progress import ProgressEvent, TurnFinished
from ._redact import Redactor
from ._schemas import RunRequest, RunResult

REQUEST, MANIFEST, RECORDS, RESULT = "request.json", "manifest.json", "records.jsonl", "result.json"
FORMAT = 1
_PACKAGES = ("fair-runners", "langchain-core", "langchain-openai", "langchain-groq", "aiohttp", "httpx")
_SECRET_PARAMS = ("api_key", "azure_ad_token")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _write_atomic(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, encoding="utf-8") as temp:
        temp.write(text)
    os.replace(temp.name, path)


def _versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0]}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def stored_request(request: RunRequest, run_id: str) -> dict[str, Any]:
    """The request as it is written to `request.json`: its run id fixed, every key left out."""
    data = request.model_dump(mode="json", exclude_none=True)
    data["run_id"] = run_id
    if isinstance(data.get("config"), dict):
        data["config"].pop("api_key", None)
    connector = data.get("connector")
    if isinstance(connector, dict) and isinstance(connector.get("params"), dict):
        for name in _SECRET_PARAMS:
            connector["params"].pop(name, None)
    data.pop("datasets_uri", None)
    return data


class RunDirectory:
    """The artifacts of one run in a folder (see the module docstring)."""

    def __init__(self, path: Path, run_id: str, redactor: Redactor) -> None:
        self.path = path
        self.run_id = run_id
        self._redactor = redactor
        self._records: IO[str] | None = None
        self._status: dict[tuple[str, int], str] = {}  # (session id, turn index) -> last recorded status

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        request: RunRequest,
        run_id: str,
        redactor: Redactor,
        *,
        overwrite: bool,
    ) -> RunDirectory:
        """Start (or continue) the run `run_id` in `path`. A folder holding another run's manifest is refused
        unless `overwrite` (which starts it afresh)."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        manifest = _read_manifest(folder)
        resumes = 0
        if manifest is not None and manifest.get("run_id") != run_id:
            if not overwrite:
                raise InvalidRequest(
                    f"{folder} holds another run ({manifest.get('run_id')!r})",
                    [{"loc": "run_dir", "msg": "pick another folder, resume that run, or give --overwrite"}],
                )
            for name in (RECORDS, RESULT):
                (folder / name).unlink(missing_ok=True)
            manifest = None
        elif manifest is not None:
            resumes = int(manifest.get("resumes", 0)) + 1
        directory = cls(folder, run_id, redactor)
        if manifest is not None:
            directory._status = {key: entry.get("status", "") for key, entry in _recorded(folder).items()}
        _write_atomic(
            folder / REQUEST, json.dumps(stored_request(request, run_id), ensure_ascii=False, indent=1)
        )
        directory._manifest(
            request, status="running", started=(manifest or {}).get("started_at"), resumes=resumes
        )
        directory._records = (folder / RECORDS).open("a", encoding="utf-8")
        return directory

    def _manifest(
        self, request: RunRequest, *, status: str, started: str | None, resumes: int, ended: str | None = None
    ) -> None:
        target: dict[str, Any] = {"mode": request.mode}
        if request.connector is not None:
            params = {k: v for k, v in request.connector.params.items() if k not in _SECRET_PARAMS}
            target.update(
                class_path=request.connector.class_path, model=request.connector.model, params=params
            )
        elif request.config is not None:
            config = request.config
            target.update(
                base_url=config.base_url,
                agent_id=config.agent_id,
                channel_id=config.channel_id,
                api_version=config.api_version,
            )
        manifest = {
            "format": FORMAT,
            "run_id": self.run_id,
            "status": status,
            "target": self._redactor.redact_obj(target),
            "options": request.options.model_dump(mode="json"),
            "versions": _versions(),
            "started_at": started or _now(),
            "ended_at": ended,
            "resumes": resumes,
            "sessions": len(request.datasets),
            "turns": sum(len(d.conversation) for d in request.datasets),
            "recorded": {"ok": 0, "error": 0, "kept": 0} | Counter(self._status.values()),
        }
        self._request = request
        self._started = manifest["started_at"]
        self._resumes = resumes
        _write_atomic(self.path / MANIFEST, json.dumps(manifest, ensure_ascii=False, indent=1))

    def record(self, event: ProgressEvent) -> None:
        """A progress callback: append each finished turn (its outcome and its answer) and flush it. A turn a
        resumed run keeps because its answer is already on record is not written again."""
        if not isinstance(event, TurnFinished) or self._records is None or event.turn is None:
            return
        key = (event.session_id, event.index)
        if event.record.status == "kept" and self._status.get(key) in ("ok", "kept"):
            return
        line = {
            "session_id": event.session_id,
            "index": event.index,
            "qa_id": event.record.qa_id,
            "status": event.record.status,
            "assistant": event.turn.assistant,
            "observation": event.turn.observation,
            "record": event.record.model_dump(mode="json"),
            "at": time.time(),
        }
        text = json.dumps(self._redactor.redact_obj(line, patterns=False), ensure_ascii=False)
        self._records.write(text + "\n")
        self._records.flush()  # in the OS's hands now: a killed process loses nothing written
        self._status[key] = event.record.status

    def finish(self, result: RunResult) -> None:
        """Write the result and close the manifest."""
        body = self._redactor.redact_obj(result.model_dump(mode="json"), patterns=False)
        _write_atomic(self.path / RESULT, json.dumps(body, ensure_ascii=False))
        status = "complete" if result.complete else "incomplete"
        self._manifest(
            self._request, status=status, started=self._started, resumes=self._resumes, ended=_now()
        )
        self.close()

    def close(self) -> None:
        """Close the records file (what was written stays)."""
        if self._records is not None:
            self._records.close()
            self._records = None


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _recorded(folder: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """The last record of each turn in `folder`'s records, by (session id, turn index)."""
    try:
        lines = (folder / RECORDS).read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}
    records: dict[tuple[str, int], dict[str, Any]] = {}
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # the line being written when the process died
        if isinstance(entry, dict) and isinstance(entry.get("index"), int):
            records[(str(entry.get("session_id")), entry["index"])] = entry
    return records


def resume_request(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The request of the run in `path`, with every recorded answer filled in and `skip_answered` on: a run of
    it sends exactly the turns that have no answer on record. `InvalidRequest` when `path` holds no run."""
    folder = Path(path)
    try:
        request = json.loads((folder / REQUEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise InvalidRequest(
            f"{folder} holds no run to resume",
            [{"loc": "resume", "msg": f"no readable {REQUEST} in {folder}"}],
        ) from None
    answers = {key: e for key, e in _recorded(folder).items() if e.get("status") in ("ok", "kept")}
    options = request.setdefault("options", {})
    kept_before = bool(options.get("skip_answered"))  # the run itself kept answers the input carried
    for dataset in request.get("datasets") or []:
        for index, turn in enumerate(dataset.get("conversation") or []):
            entry = answers.get((str(dataset.get("session_id")), index))
            if entry is not None and entry.get("qa_id") == turn.get("qa_id"):
                turn["assistant"] = entry.get("assistant", "")
                turn["observation"] = entry.get("observation")
            elif not kept_before:
                turn["assistant"] = ""  # not answered in this run yet: send it, as the run would have
    options["skip_answered"] = True
    return dict(request)
