"""`fair-runners run`: a request or dataset file plus flags, through the library (no Lambda), with progress.

Exit codes: 0 every turn answered, 1 some turns failed or were skipped, 2 bad input (nothing was sent).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from .. import ConfigurationError, Deadline, InvalidRequest, RunResult, Settings, execute, prepare
from .._credentials import KeyRing, origin_of
from .._rundir import RunDirectory, resume_request
from . import _inputs, _outputs
from ._display import ProgressDisplay, pick_mode, print_result

EXIT_OK = 0
EXIT_INCOMPLETE = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


@dataclass
class RunArgs:
    """What the `run` command was asked to do."""

    request_file: Path | None
    flags: _inputs.TargetFlags
    output: Path | None = None
    fmt: str | None = None
    resume: Path | None = None
    deadline_s: float | None = None
    quiet: bool = False
    run_dir: Path | None = None
    overwrite: bool = False


def print_invalid(console: Console, exc: InvalidRequest) -> None:
    """The error and each field location, so the user can fix the file or the flags."""
    console.print(f"[red]error:[/] {escape(exc.message)}")
    for detail in exc.details:
        loc = detail.get("loc") or "(request)"
        console.print(f"  {escape(str(loc))}: {escape(str(detail.get('msg', '')))}")


def build_request(args: RunArgs) -> dict[str, Any]:
    """The request dict: the file (or the resumed result), the flags, the resumed answers."""
    if args.request_file is None and args.resume is None:
        raise InvalidRequest(
            "nothing to run: give a request or dataset file (or --resume RESULT.json)",
            [{"loc": "REQUEST", "msg": "missing"}],
        )
    if args.resume is not None and args.resume.is_dir():  # a run folder: its request and its records
        if args.request_file is not None:
            raise InvalidRequest(
                "--resume DIR resumes the run recorded there: give no request file",
                [{"loc": "REQUEST", "msg": "not with --resume DIR"}],
            )
        return _inputs.apply_flags(resume_request(args.resume), args.flags)
    previous: dict[str, Any] | None = None
    if args.resume is not None:
        previous = _inputs.as_request(_inputs.read_json_file(args.resume), str(args.resume))
    if args.request_file is not None:
        request = _inputs.as_request(_inputs.read_json_file(args.request_file), str(args.request_file))
    else:
        assert previous is not None
        request = {"datasets": []}
    request = _inputs.apply_flags(request, args.flags)
    if previous is not None:
        request = _inputs.merge_previous(request, previous)
    return request


def run_command(args: RunArgs, console: Console) -> int:
    """Run and report; the exit code."""
    try:
        fmt = _outputs.choose_format(args.output, args.fmt)
    except ValueError as exc:
        console.print(f"[red]error:[/] --format: {escape(str(exc))}")
        return EXIT_BAD_INPUT
    output = args.output
    run_dir = args.run_dir
    if args.resume is not None and args.resume.is_dir():
        run_dir = run_dir or args.resume  # the run goes on recording where it was
    elif output is None and args.resume is not None:
        output = args.resume  # --resume RESULT.json without -o updates the result file in place
        fmt = _outputs.choose_format(output, args.fmt)
    try:
        request = build_request(args)
        _inputs.allow_loopback_targets(request)
        # The operator's env keys go to the --base-url they gave, never to a URL read from a file.
        keys = (
            KeyRing.from_env(operator_origin=origin_of(args.flags.base_url)) if args.flags.base_url else None
        )
        prepared = prepare(request, settings=Settings.from_env(), keys=keys)
        folder = None
        if run_dir is not None:
            folder = RunDirectory.open(
                run_dir, prepared.request, prepared.run_id, prepared.redactor, overwrite=args.overwrite
            )
    except InvalidRequest as exc:
        print_invalid(console, exc)
        return EXIT_BAD_INPUT
    except ConfigurationError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")
        return EXIT_BAD_INPUT
    display = ProgressDisplay(console, pick_mode(console, args.quiet))
    try:
        with display:
            result: RunResult = asyncio.run(
                execute(
                    prepared,
                    deadline=Deadline.after(args.deadline_s),
                    on_progress=display.on_progress,
                    run_dir=folder,
                )
            )
    except KeyboardInterrupt:
        if folder is not None:
            console.print(
                f"interrupted: every finished turn is in {escape(str(folder.path))}/records.jsonl; "
                f"`fair-runners run --resume {escape(str(folder.path))}` finishes the run."
            )
        else:
            console.print(
                "interrupted: nothing was written. --run-dir DIR records every turn as it finishes; "
                "--deadline S stops a run in time and keeps its answers; --resume RESULT.json finishes one."
            )
        return EXIT_INTERRUPTED
    if output is not None or folder is None:
        _outputs.write(result, output, fmt)
    if not args.quiet:
        print_result(console, result)
        if output is not None and str(output) != "-":
            console.print(f"wrote {escape(str(output))} ({fmt})")
        if folder is not None:
            console.print(
                f"run folder: {escape(str(folder.path))} (records.jsonl, manifest.json, result.json)"
            )
    totals = result.totals
    return EXIT_OK if totals.successes == totals.turns else EXIT_INCOMPLETE
