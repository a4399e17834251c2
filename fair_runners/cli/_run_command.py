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
    if output is None and args.resume is not None:
        output = args.resume  # --resume without -o updates the result file in place
        fmt = _outputs.choose_format(output, args.fmt)
    try:
        request = build_request(args)
        _inputs.allow_loopback_targets(request)
        # The operator's env keys go to the --base-url they gave, never to a URL read from a file.
        keys = (
            KeyRing.from_env(operator_origin=origin_of(args.flags.base_url)) if args.flags.base_url else None
        )
        prepared = prepare(request, settings=Settings.from_env(), keys=keys)
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
                execute(prepared, deadline=Deadline.after(args.deadline_s), on_progress=display.on_progress)
            )
    except KeyboardInterrupt:
        console.print(
            "interrupted: nothing was written. --deadline S stops a run in time and keeps its answers; "
            "--resume RESULT.json finishes one."
        )
        return EXIT_INTERRUPTED
    _outputs.write(result, output, fmt)
    if not args.quiet:
        print_result(console, result)
        if output is not None and str(output) != "-":
            console.print(f"wrote {escape(str(output))} ({fmt})")
    totals = result.totals
    return EXIT_OK if totals.successes == totals.turns else EXIT_INCOMPLETE
