"""The library entry points: validate a request, build its runner, run it, shape the result.

`prepare()` does every check that needs no network (credentials, allowlist, limits) so a bad request fails
before any backend call; `run()` / `run_sync()` execute it. Nothing here imports AWS or LangChain at import
time: the LLM runner is imported only when a request selects it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from ._engine import Engine, EngineOptions
from ._errors import InvalidRequest
from ._events import Event, EventCallback, SessionFinished
from ._limits import check_payload, check_request
from ._netguard import check_url
from ._redact import Redactor, secrets_in_payload, use_redactor
from ._schemas import Dataset, RunRequest, RunResult, SessionSummary
from ._settings import Settings
from ._text import control_problem
from ._timing import Deadline
from .runners._base import Runner

if TYPE_CHECKING:
    import httpx


@dataclass
class PreparedRun:
    """A validated request with its runner factory, options and redactor, ready to execute."""

    request: RunRequest
    options: EngineOptions
    run_id: str
    redactor: Redactor
    warnings: list[str]
    settings: Settings
    # An httpx transport for the LLM runner's provider client (tests); the Alquimia runner uses aiohttp.
    transport: httpx.AsyncBaseTransport | None = None
    _runner_args: dict[str, Any] = field(default_factory=dict)

    def build_runner(self) -> Runner:
        """A fresh runner for one event loop (create inside the loop, use with `async with`)."""
        connect_s = min(self.settings.connect_timeout_s, self.options.turn_timeout_s)
        if self.request.mode == "llm":
            import httpx

            from .runners.llm import LLMRunner

            llm = LLMRunner(
                self._runner_args["model_class"],
                self._runner_args["params"],
                timeout=httpx.Timeout(self.options.turn_timeout_s, connect=connect_s),
                max_connections=self.options.max_concurrency,
                transport=self.transport,
            )
            # The provider SDKs cost ~1-2 ms of CPU a turn: spread the turns over the vCPUs there are. An
            # injected test transport lives in this process, so it keeps the run here too.
            workers = self.settings.worker_count(len(self.request.datasets))
            if workers > 1 and self.transport is None:
                from .runners._procs import ProcessRunner
                from .runners.llm import process_state

                return ProcessRunner(llm, workers, process_state())
            return llm
        from .runners.alquimia import AlquimiaRunner

        return AlquimiaRunner(
            self._runner_args["target"],
            timeout_s=self.options.turn_timeout_s,
            connect_timeout_s=connect_s,
            max_connections=self.options.max_concurrency,
        )


def parse_request(payload: Any) -> RunRequest:
    """Validate a payload into a `RunRequest`, or raise `InvalidRequest` naming each bad field."""
    if not isinstance(payload, Mapping):
        raise InvalidRequest(
            "the request must be a JSON object",
            [{"loc": "", "msg": f"expected an object, got {type(payload).__name__}"}],
        )
    check_payload(payload)
    try:
        return RunRequest.model_validate(payload)
    except ValidationError as exc:
        details = [
            {"loc": ".".join(str(part) for part in err["loc"]), "msg": err["msg"]}
            for err in exc.errors(include_url=False, include_input=False, include_context=False)
        ]
        first = details[0]
        more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
        raise InvalidRequest(
            f"invalid request: {first['loc'] or 'body'}: {first['msg']}{more}", details
        ) from None


def _resolve_options(request: RunRequest, settings: Settings) -> EngineOptions:
    options = request.options
    # The deployment default never exceeds the cap; only a value the caller sent can be refused.
    concurrency = options.max_concurrency or min(settings.max_concurrency, settings.max_concurrency_cap)
    if concurrency > settings.max_concurrency_cap:
        raise InvalidRequest(
            f"options.max_concurrency is over this deployment's cap of {settings.max_concurrency_cap}",
            [
                {
                    "loc": "options.max_concurrency",
                    "msg": f"must be <= {settings.max_concurrency_cap} "
                    f"(env FAIR_RUNNERS_MAX_CONCURRENCY_CAP), got {concurrency}",
                }
            ],
        )
    return EngineOptions(
        max_concurrency=concurrency,
        turn_timeout_s=options.turn_timeout_s or settings.turn_timeout_s,
        max_attempts=options.max_attempts or settings.max_attempts,
        history=options.history,
        skip_answered=options.skip_answered,
        backoff_base_s=settings.backoff_base_s,
        backoff_max_s=settings.backoff_max_s,
    )


def _missing(loc: str, msg: str) -> dict[str, str]:
    return {"loc": loc, "msg": msg}


def _prepare_alquimia(
    request: RunRequest, redactor: Redactor, credentials: Mapping[str, str]
) -> dict[str, Any]:
    from .runners.alquimia import AlquimiaTarget, segment_problem

    config = request.config
    base_url = (config.base_url if config else None) or os.environ.get("ALQUIMIA_BASE_URL")
    secret = config.api_key.get_secret_value() if config and config.api_key else None
    api_key = secret or credentials.get("ALQUIMIA_API_KEY") or os.environ.get("ALQUIMIA_API_KEY")
    agent_id = config.agent_id if config else None
    problems = []
    if config is None:
        problems.append(_missing("config", "required: send `config` (Alquimia) or `connector` (LLM)"))
    if not base_url:
        problems.append(_missing("config.base_url", "missing: send it or set env ALQUIMIA_BASE_URL"))
    if not api_key:
        problems.append(_missing("config.api_key", "missing: send it or set env ALQUIMIA_API_KEY"))
    if not agent_id:
        problems.append(_missing("config.agent_id", "required"))
    if problems:
        raise InvalidRequest(f"incomplete Alquimia target: {problems[0]['loc']} is missing", problems)
    assert base_url and api_key and agent_id
    redactor.add(api_key)
    check_url(base_url, "config.base_url")
    channel_id = (config.channel_id if config else None) or "chat"
    api_version = (config.api_version if config else None) or ""
    # Each is one piece of the agent's URLs (or, for the key, a header): never a way to another path.
    for loc, why in (
        ("config.api_key", control_problem(api_key)),
        ("config.agent_id", segment_problem(agent_id)),
        ("config.channel_id", segment_problem(channel_id)),
        ("config.api_version", segment_problem(api_version, several=True)),
    ):
        if why is not None:
            problems.append({"loc": loc, "msg": why})
    if problems:
        raise InvalidRequest(f"invalid Alquimia target: {problems[0]['loc']} {problems[0]['msg']}", problems)
    target = AlquimiaTarget(
        base_url=base_url, api_key=api_key, agent_id=agent_id, channel_id=channel_id, api_version=api_version
    )
    return {"target": target}


def _prepare_llm(request: RunRequest, redactor: Redactor, credentials: Mapping[str, str]) -> dict[str, Any]:
    from ._connectors import check_params, load_chat_model_class, resolve_api_key, resolve_spec

    connector = request.connector
    assert connector is not None
    spec = resolve_spec(connector.class_path)  # before any import
    params = dict(connector.params)
    if isinstance(params.get("api_key"), str):
        redactor.add(params["api_key"])
    check_params(spec, params)
    if params.get("api_key") in (None, "") and credentials.get("LLM_API_KEY"):
        params["api_key"] = credentials["LLM_API_KEY"]
    api_key = resolve_api_key(spec, params)
    if api_key:
        params["api_key"] = api_key
        redactor.add(api_key)
    model_class = load_chat_model_class(spec)
    from .runners.llm import check_model  # LangChain, only once the class_path has passed

    check_model(model_class, params)
    return {"model_class": model_class, "params": params}


def prepare(
    request: RunRequest | Mapping[str, Any],
    *,
    settings: Settings | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    credentials: Mapping[str, str] | None = None,
) -> PreparedRun:
    """Validate everything that needs no network; raise `InvalidRequest` naming the field.

    `credentials` are deployment keys read from a secret store (`ALQUIMIA_API_KEY`, `LLM_API_KEY`): they
    rank after a key in the payload and before the env variable of the same name, and are redacted.
    """
    redactor = Redactor()
    redactor.add_env()
    use_redactor(redactor)  # log output and error envelopes of this run mask its keys
    credentials = dict(credentials or {})
    for value in credentials.values():
        redactor.add(value)
    if not isinstance(request, RunRequest):
        for secret in secrets_in_payload(request):
            redactor.add(secret)
        request = parse_request(request)
    if not request.datasets:
        raise InvalidRequest(
            "datasets_uri must be resolved before running: the AWS layer reads it "
            "(fair_runners.aws.load_request), the library alone does not read S3",
            [{"loc": "datasets_uri", "msg": "not read: use the Lambda or fair_runners.aws.load_request"}],
        )
    check_request(request)
    settings = settings or Settings.from_env()
    warnings = [f"unknown key {key!r} ignored" for key in request.unknown_keys()]
    if request.mode == "llm":
        if request.config is not None:
            warnings.append("both `connector` and `config` were given: `connector` wins (LLM mode)")
        runner_args = _prepare_llm(request, redactor, credentials)
    else:
        runner_args = _prepare_alquimia(request, redactor, credentials)
    return PreparedRun(
        request=request,
        options=_resolve_options(request, settings),
        run_id=request.run_id or uuid.uuid4().hex,
        redactor=redactor,
        warnings=[redactor.redact(w) for w in warnings],
        settings=settings,
        transport=transport,
        _runner_args=runner_args,
    )


async def execute(
    prepared: PreparedRun,
    *,
    deadline: Deadline | None = None,
    on_event: EventCallback | None = None,
) -> RunResult:
    """Run a prepared request inside the current event loop."""
    request = prepared.request
    runner = prepared.build_runner()
    async with runner:
        engine = Engine(
            runner,
            prepared.options,
            deadline=deadline,
            redactor=prepared.redactor,
            on_event=on_event,
            use_history=request.mode == "llm",
        )
        outcome = await engine.run(request.datasets, prepared.run_id)
    from ._events import RunFinished

    if on_event is not None:
        try:
            on_event(RunFinished(prepared.run_id, outcome.complete, outcome.totals))
        except Exception:  # as in the engine: a broken progress callback must not break the run
            logging.getLogger("fair_runners.engine").exception("progress callback failed")
    warnings = list(prepared.warnings)
    if outcome.min_concurrency < prepared.options.max_concurrency:
        warnings.append(
            f"rate limited: concurrency was reduced to {outcome.min_concurrency} "
            f"(from {prepared.options.max_concurrency})"
        )
    if engine.circuit.reason:
        warnings.append(f"authentication failed; remaining turns were not sent: {engine.circuit.reason}")
    if not outcome.complete:
        warnings.append(
            "the run stopped at its deadline: re-post this response with options.skip_answered=true "
            "to finish the skipped turns"
        )
    return RunResult(
        success=True,
        complete=outcome.complete,
        run_id=prepared.run_id,
        mode=request.mode,
        datasets=outcome.datasets,
        summaries=outcome.summaries,
        total_datasets=len(outcome.datasets),
        totals=outcome.totals,
        warnings=warnings,
    )


async def run(
    request: RunRequest | Mapping[str, Any],
    *,
    deadline_s: float | None = None,
    on_event: EventCallback | None = None,
    settings: Settings | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> RunResult:
    """Validate and run a request; `deadline_s` bounds the whole run (skipped turns past it)."""
    prepared = prepare(request, settings=settings, transport=transport)
    return await execute(prepared, deadline=Deadline.after(deadline_s), on_event=on_event)


def run_sync(
    request: RunRequest | Mapping[str, Any],
    *,
    deadline_s: float | None = None,
    on_event: EventCallback | None = None,
    settings: Settings | None = None,
) -> RunResult:
    """Blocking `run()`, in a fresh event loop.

    Inside a running loop (a Jupyter notebook, an async service) the run gets its own loop on a worker
    thread, so the call still blocks and returns the result instead of failing.
    """

    def _run_in_new_loop() -> RunResult:
        return asyncio.run(run(request, deadline_s=deadline_s, on_event=on_event, settings=settings))

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _run_in_new_loop()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fair-runners") as pool:
        return pool.submit(_run_in_new_loop).result()


async def iter_sessions(
    request: RunRequest | Mapping[str, Any],
    *,
    deadline_s: float | None = None,
    on_event: EventCallback | None = None,
    settings: Settings | None = None,
) -> AsyncIterator[tuple[Dataset, SessionSummary]]:
    """Yield each session's (dataset, summary) as soon as it finishes, in completion order.

    `on_event`, when given, also receives every progress event (as with `run`).
    """
    prepared = prepare(request, settings=settings)
    queue: asyncio.Queue[Event | None] = asyncio.Queue()

    def _forward(event: Event) -> None:
        queue.put_nowait(event)
        if on_event is not None:
            on_event(event)

    task = asyncio.create_task(execute(prepared, deadline=Deadline.after(deadline_s), on_event=_forward))
    task.add_done_callback(lambda _: queue.put_nowait(None))
    try:
        while (event := await queue.get()) is not None:
            if isinstance(event, SessionFinished):
                yield event.dataset, event.summary
        await task
    finally:
        if not task.done():  # the caller stopped iterating early: stop the run too
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
