"""The `fair-runners` command line (typer): run, invoke, serve, demo."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .. import __version__
from . import _inputs
from ._display import stderr_console
from ._run_command import EXIT_BAD_INPUT, RunArgs, run_command

app = typer.Typer(
    name="fair-runners",
    help="Run Fair-Forge test conversations against Alquimia agents and LangChain chat models, locally.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_TARGET = "Target (keys come from env: ALQUIMIA_API_KEY, LLM_API_KEY or the provider's variable)"
_OPTIONS = "Run options"
_OUTPUT = "Output"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fair-runners {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Run Fair-Forge test conversations against Alquimia agents and LangChain chat models, locally."""


@app.command()
def run(
    request: Annotated[
        Path | None,
        typer.Argument(
            help="A request JSON, a JSON array of datasets, one dataset, or JSONL (one dataset per line); "
            "'-' reads stdin.",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="Write the result here; the format follows the extension "
            "(.json response, .jsonl datasets, .csv one row per turn). Default: stdout.",
            rich_help_panel=_OUTPUT,
        ),
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format", help="json, jsonl or csv (overrides the extension).", rich_help_panel=_OUTPUT
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="A run folder (--run-dir): send exactly the turns it has no record of, even after a crash "
            "(kill -9), and write the full result there. Or a previous result (.json or .jsonl): keep its "
            "answers, run only the missing or failed turns, write the merged result (-o, else back to it).",
            rich_help_panel=_OUTPUT,
        ),
    ] = None,
    run_dir: Annotated[
        Path | None,
        typer.Option(
            help="Record the run in this folder as it goes: records.jsonl (one line per finished turn, "
            "flushed), manifest.json, request.json, result.json. Resume it with --resume DIR.",
            rich_help_panel=_OUTPUT,
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            help="Let --run-dir start afresh in a folder that holds another run.", rich_help_panel=_OUTPUT
        ),
    ] = False,
    quiet: Annotated[
        bool, typer.Option("-q", "--quiet", help="No progress, no summary.", rich_help_panel=_OUTPUT)
    ] = False,
    connector_class: Annotated[
        str | None,
        typer.Option(
            help="LLM mode: allowlisted chat model class, e.g. langchain_groq.ChatGroq "
            f"(default with --model: {_inputs.DEFAULT_CONNECTOR}).",
            rich_help_panel=_TARGET,
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="LLM mode: the model name.", rich_help_panel=_TARGET)
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            help="LLM mode: extra constructor param KEY=VALUE (VALUE parsed as JSON when it is); repeatable.",
            rich_help_panel=_TARGET,
        ),
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option(help="The Alquimia base URL, or the LLM endpoint's base_url.", rich_help_panel=_TARGET),
    ] = None,
    agent_id: Annotated[str | None, typer.Option(help="Alquimia agent id.", rich_help_panel=_TARGET)] = None,
    channel_id: Annotated[
        str | None, typer.Option(help="Alquimia channel (default chat).", rich_help_panel=_TARGET)
    ] = None,
    api_version: Annotated[
        str | None, typer.Option(help="Alquimia API version path segment.", rich_help_panel=_TARGET)
    ] = None,
    max_concurrency: Annotated[
        int | None, typer.Option(min=1, help="Sessions in flight.", rich_help_panel=_OPTIONS)
    ] = None,
    turn_timeout: Annotated[
        float | None, typer.Option(min=0.001, help="Seconds per attempt.", rich_help_panel=_OPTIONS)
    ] = None,
    max_attempts: Annotated[
        int | None,
        typer.Option(min=1, help="Attempts per turn (transient errors).", rich_help_panel=_OPTIONS),
    ] = None,
    history: Annotated[
        bool | None,
        typer.Option(
            "--history/--no-history", help="LLM mode: send earlier turns.", rich_help_panel=_OPTIONS
        ),
    ] = None,
    skip_answered: Annotated[
        bool | None,
        typer.Option(
            "--skip-answered/--no-skip-answered",
            help="Keep turns that already have an answer.",
            rich_help_panel=_OPTIONS,
        ),
    ] = None,
    deadline: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="Stop after this many seconds; unstarted turns are skipped.",
            rich_help_panel=_OPTIONS,
        ),
    ] = None,
    run_id: Annotated[str | None, typer.Option(help="The run id.", rich_help_panel=_OPTIONS)] = None,
    rpm: Annotated[
        float | None,
        typer.Option(
            "--rpm",
            min=0.001,
            help="Requests per minute to pace to (the provider's limit).",
            rich_help_panel=_OPTIONS,
        ),
    ] = None,
    tpm: Annotated[
        float | None,
        typer.Option("--tpm", min=0.001, help="Tokens per minute to pace to.", rich_help_panel=_OPTIONS),
    ] = None,
    cache: Annotated[
        str | None,
        typer.Option(
            help="Response cache: use (replay hits, record misses), refresh (call and record), only (replay, "
            "send nothing). Local SQLite in FAIR_RUNNERS_CACHE_DIR or ~/.cache/fair-runners.",
            rich_help_panel=_OPTIONS,
        ),
    ] = None,
    cache_ttl: Annotated[
        float | None,
        typer.Option(min=1.0, help="Seconds a recorded answer may be replayed.", rich_help_panel=_OPTIONS),
    ] = None,
) -> None:
    """Run a request or a dataset file with the library (no Lambda), with live progress.

    Exit code 0: every turn answered; 1: some turns failed or were skipped; 2: bad input.
    """
    flags = _inputs.TargetFlags(
        connector_class=connector_class,
        model=model,
        params=list(param or []),
        base_url=base_url,
        agent_id=agent_id,
        channel_id=channel_id,
        api_version=api_version,
        max_concurrency=max_concurrency,
        turn_timeout_s=turn_timeout,
        max_attempts=max_attempts,
        history=history,
        skip_answered=skip_answered,
        run_id=run_id,
        requests_per_minute=rpm,
        tokens_per_minute=tpm,
        cache=cache,
        cache_ttl_s=cache_ttl,
    )
    args = RunArgs(request, flags, output, fmt, resume, deadline, quiet, run_dir, overwrite)
    raise typer.Exit(run_command(args, stderr_console()))


@app.command()
def invoke(
    event: Annotated[Path, typer.Argument(help="The event JSON ('-' reads stdin).", show_default=False)],
    timeout: Annotated[
        float, typer.Option(min=0.001, help="The function timeout in seconds (the context's deadline).")
    ] = 900.0,
    function_name: Annotated[str, typer.Option(help="context.function_name.")] = "fair-runners",
    memory: Annotated[int, typer.Option(help="context.memory_limit_in_mb.")] = 1024,
    allow_host: Annotated[
        list[str] | None,
        typer.Option(
            help="Allow this backend HOST:PORT over plain http (appended to env FAIR_RUNNERS_ALLOWED_HOSTS); "
            "repeatable.",
        ),
    ] = None,
) -> None:
    """Run one event through the Lambda handler as Lambda would (the no-Docker `sam local invoke`).

    Prints the response JSON on stdout (logs on stderr). Exit code 0 when the handler returned, 1 when it
    raised or timed out (Lambda's error object is printed instead), 2 when the event file is unreadable.
    """
    from ._invoke import LambdaContext, dumps, load_handler, report_line
    from ._invoke import invoke as call

    console = stderr_console()
    _inputs.allow_hosts(list(allow_host or []))
    try:
        text = sys.stdin.read() if str(event) == "-" else event.read_text(encoding="utf-8")
        payload = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        console.print(f"error: {event}: {exc}", markup=False)
        raise typer.Exit(EXIT_BAD_INPUT) from None
    context = LambdaContext(timeout_s=timeout, function_name=function_name, memory_limit_in_mb=memory)
    outcome = call(load_handler(), payload, context)
    console.print(report_line(context, outcome), markup=False)
    typer.echo(dumps(outcome.error if outcome.error is not None else outcome.response))
    raise typer.Exit(1 if outcome.error is not None else 0)


@app.command()
def serve(
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free port).")] = 3000,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    timeout: Annotated[float, typer.Option(min=0.001, help="The function timeout per request (s).")] = 900.0,
    allow_host: Annotated[
        list[str] | None,
        typer.Option(
            help="Allow this backend HOST:PORT over plain http (appended to env FAIR_RUNNERS_ALLOWED_HOSTS); "
            "repeatable.",
        ),
    ] = None,
) -> None:
    """A local HTTP API: each request becomes an API Gateway v2 event for lambda_handler.

    The no-Docker `sam local start-api`: `curl -X POST localhost:3000/run -d @request.json`.
    """
    import uvicorn

    from ._invoke import load_handler
    from ._serve import LambdaProxy

    console = stderr_console()
    _inputs.allow_hosts(list(allow_host or []))
    if host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]warning:[/] listening on {host}: anyone who can reach it can run requests")
    proxy = LambdaProxy(load_handler(), timeout_s=timeout, log=lambda line: console.print(line, markup=False))
    console.print(
        f"lambda_handler behind an API Gateway v2 emulation on http://{host}:{port} "
        "(POST /run; every path goes to the handler). Ctrl-C stops.",
        markup=False,
    )
    uvicorn.run(proxy, host=host, port=port, log_level="warning", lifespan="off", access_log=False)


@app.command()
def demo(
    events: Annotated[
        Path | None,
        typer.Option(
            help="Run these event files (e.g. the repository's events/) instead of the bundled ones."
        ),
    ] = None,
    latency_ms: Annotated[float, typer.Option(min=0.0, help="Simulated backend latency per turn.")] = 40.0,
) -> None:
    """The embedded default: sample events through the real handler against bundled local backends."""
    from ._demo import bundled_events, events_from, run_demo

    console = Console(highlight=False, soft_wrap=True)
    files = bundled_events() if events is None else events_from(events)
    if not files:
        stderr_console().print(f"error: no *.json event files in {events}", markup=False)
        raise typer.Exit(EXIT_BAD_INPUT)
    os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "fair-runners-demo")
    raise typer.Exit(run_demo(files, latency_ms, console))
