"""Write a result as the response JSON, JSONL (one dataset per line) or CSV (one row per turn)."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import Literal

from .._schemas import RunResult

Format = Literal["json", "jsonl", "csv"]
FORMATS: tuple[Format, ...] = ("json", "jsonl", "csv")

CSV_COLUMNS = (
    "session_id",
    "qa_id",
    "query",
    "answer",
    "ground_truth",
    "status",
    "latency_ms",
    "attempts",
    "error_type",
)


def choose_format(output: Path | None, explicit: str | None) -> Format:
    """`--format` when given, else the extension of `-o`, else JSON."""
    if explicit:
        name = explicit.lower().lstrip(".")
        for fmt in FORMATS:
            if fmt == name:
                return fmt
        raise ValueError(f"unknown format {explicit!r}: use one of {', '.join(FORMATS)}")
    suffix = output.suffix.lower().lstrip(".") if output is not None else ""
    for fmt in FORMATS:
        if fmt == suffix:
            return fmt
    return "json"


def render(result: RunResult, fmt: Format) -> str:
    """The result as text in `fmt`."""
    if fmt == "jsonl":
        return "".join(
            json.dumps(d.model_dump(mode="json"), ensure_ascii=False) + "\n" for d in result.datasets
        )
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(CSV_COLUMNS)
        for dataset, summary in zip(result.datasets, result.summaries, strict=True):
            for turn, record in zip(dataset.conversation, summary.turns, strict=True):
                writer.writerow(
                    (
                        dataset.session_id,
                        turn.qa_id,
                        turn.query,
                        turn.assistant,
                        turn.ground_truth_assistant,
                        record.status,
                        "" if record.latency_ms is None else f"{record.latency_ms:.1f}",
                        record.attempts,
                        record.error_type or "",
                    )
                )
        return buffer.getvalue()
    return result.model_dump_json(indent=2) + "\n"


def write(result: RunResult, output: Path | None, fmt: Format) -> None:
    """Write to `output` (atomically: a partial file never replaces a good one), or stdout when None/-."""
    text = render(result, fmt)
    if output is None or str(output) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    partial.write_text(text, encoding="utf-8", newline="")
    partial.replace(output)
