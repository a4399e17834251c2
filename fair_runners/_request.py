"""Validate a request and get it ready to run: `parse_request` (the contract), `prepare` (everything that
needs no network: limits, the allowlist, credentials and their bindings, URL syntax), `PreparedRun` (the
runner to build, the options, the redactor, the URLs whose DNS names are checked before the run starts).

Nothing here imports AWS or LangChain at import time: the LLM runner is imported only when a request selects
it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from ._connectors import ConnectorSpec
from ._credentials import KeyRing, origin_of
from ._errors import InvalidRequest
from ._limits import check_payload, check_request
from ._netguard import parse_url, vet_url
from ._proxies import proxy_settings
from ._redact import Redactor, secrets_in_payload, use_redactor
from ._schemas import RunRequest
from ._settings import Settings
from ._text import MAX_WARNINGS, control_problem
from .engine import EngineOptions
from .runners._base import Runner


@dataclass(frozen=True)
class RunTarget:
    """Who a run talks to, with which credential: what its rate bucket and its cache entries belong to."""

    runner: str  # "alquimia" or "llm"
    origin: str  # the effective endpoint origin (scheme://host:port)
    target: str  # the connector class, or the agent's path
    model: str | None  # the model (LLM) or agent id
    credential: str | None  # the key sent (the cache keys only an HMAC of it); None for the AWS role
    deployment_key: bool  # a key (or role) the deployment holds: its budget is the deployer's
    budget_names: tuple[str, ...]  # FAIR_RUNNERS_RATE_LIMITS targets, most specific first
    params: dict[str, Any] = field(default_factory=dict)  # constructor params (LLM), for the cache key
    # The runner sees the provider's response headers (its rate limits): worth the pacer's probe. Not so
    # through boto3 (Bedrock) or an SDK's own client (Anthropic), whose successful responses keep them.
    reports_headers: bool = True


@dataclass
class PreparedRun:
    """A validated request with its runner factory, options and redactor, ready to execute."""

    request: RunRequest
    options: EngineOptions
    run_id: str
    redactor: Redactor
    warnings: list[str]
    settings: Settings
    _runner_args: dict[str, Any] = field(default_factory=dict)
    # (URL, field) pairs whose host names are resolved and checked before the run sends anything.
    _urls: list[tuple[str, str]] = field(default_factory=list)
    target: RunTarget | None = None
    lambda_env: bool = False  # in the Lambda the response cache is the deployment's DynamoDB table

    async def vet_targets(self) -> None:
        """Resolve the target URLs' host names off the event loop and check every address; raise
        `InvalidRequest` naming the field when one is not allowed (before any request is sent)."""
        for url, loc in self._urls:
            await vet_url(url, loc)

    def build_runner(self) -> Runner:
        """A fresh runner for one event loop (create inside the loop, use with `async with`)."""
        connect_s = min(self.settings.connect_timeout_s, self.options.turn_timeout_s)
        if self.request.mode == "llm":
            import httpx

            from .runners.llm import LLMRunner

            return LLMRunner(
                self._runner_args["model_class"],
                self._runner_args["params"],
                timeout=httpx.Timeout(self.options.turn_timeout_s, connect=connect_s),
                max_connections=self.options.max_concurrency,
                max_answer_bytes=self.settings.max_answer_bytes,
                transport=self._runner_args["transport"],
            )
        from .runners.alquimia import AlquimiaRunner

        return AlquimiaRunner(
            self._runner_args["target"],
            timeout_s=self.options.turn_timeout_s,
            connect_timeout_s=connect_s,
            max_connections=self.options.max_concurrency,
            max_answer_bytes=self.settings.max_answer_bytes,
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


def _bring_your_key(loc: str, where: str, keys: KeyRing, runner: str) -> dict[str, str]:
    held = keys.holders(runner)
    why = f" (this deployment's keys: {'; '.join(held)})" if held else ""
    return _missing(
        loc,
        f"required: {where} must come with its own key; a deployment key is only sent to the destination "
        f"it is bound to{why}",
    )


def _prepare_alquimia(request: RunRequest, redactor: Redactor, keys: KeyRing) -> dict[str, Any]:
    from .runners.alquimia import AlquimiaTarget, segment_problem

    config = request.config
    asked_url = config.base_url if config else None
    secret = config.api_key.get_secret_value() if config and config.api_key else None
    agent_id = config.agent_id if config else None
    problems = []
    if config is None:
        problems.append(_missing("config", "required: send `config` (Alquimia) or `connector` (LLM)"))
    base_url = asked_url
    api_key = secret
    deployment_key = False
    if not secret:
        bound = keys.for_alquimia(asked_url)
        deployment_key = bound is not None
        if bound is not None:
            api_key = bound.value
            base_url = asked_url or bound.base_url
        elif asked_url:
            problems.append(
                _bring_your_key("config.api_key", "a config.base_url of your own", keys, "alquimia")
            )
        else:
            problems.append(
                _missing(
                    "config.api_key",
                    "missing: send it (or deploy with env ALQUIMIA_API_KEY "
                    "and ALQUIMIA_BASE_URL, the agent that key belongs to)",
                )
            )
    if not base_url and not problems:
        problems.append(_missing("config.base_url", "missing: send it or set env ALQUIMIA_BASE_URL"))
    if not agent_id:
        problems.append(_missing("config.agent_id", "required"))
    if problems:
        raise InvalidRequest(
            f"incomplete Alquimia target: {problems[0]['loc']}: {problems[0]['msg']}", problems
        )
    assert base_url and api_key and agent_id
    redactor.add(api_key)
    parse_url(base_url, "config.base_url")
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
    run_target = RunTarget(
        runner="alquimia",
        origin=origin_of(base_url) or base_url,
        target=f"{target.root}/event/infer/{channel_id}/{agent_id}",
        model=agent_id,
        credential=api_key,
        deployment_key=deployment_key,
        budget_names=(f"alquimia:{agent_id}", "alquimia"),
    )
    return {"target": target, "urls": [(base_url, "config.base_url")], "run_target": run_target}


def _prepare_llm(request: RunRequest, redactor: Redactor, keys: KeyRing) -> dict[str, Any]:
    from ._connectors import check_params, load_chat_model_class, resolve_model_string, resolve_spec

    connector = request.connector
    assert connector is not None
    params = dict(connector.params)
    if connector.model is not None:
        class_path, params["model"] = resolve_model_string(connector.model)
    else:
        assert connector.class_path is not None
        class_path = connector.class_path
    spec = resolve_spec(class_path)  # before any import
    for name in spec.key_params:
        if isinstance(params.get(name), str):
            redactor.add(params[name])
    check_params(spec, params)
    url_param = spec.url_param
    asked_url = (params.get(url_param) or None) if url_param else None
    deployment_key = spec.transport == "boto3"  # the Lambda role's credentials
    if spec.key_env is not None and not any(params.get(name) for name in spec.key_params):
        bound = keys.for_llm(spec, asked_url)
        deployment_key = bound is not None
        if bound is None:
            where = (
                f"a connector.params.{url_param} of your own"
                if asked_url
                else f"connector.class_path {spec.canonical}"
            )
            problem = _bring_your_key("connector.params.api_key", where, keys, "llm")
            raise InvalidRequest("connector.params.api_key is missing", [problem])
        params["api_key"] = bound.value
        if not asked_url and url_param and bound.base_url:
            params[url_param] = bound.base_url
    # The endpoint is always passed explicitly, so no SDK reads a base URL from env by itself.
    endpoint = spec.deployment_url()
    if url_param and not params.get(url_param) and endpoint:
        params[url_param] = endpoint
    elif spec.url_field and endpoint:
        params[spec.url_field] = endpoint  # a deployer's choice (the request cannot name one)
    if params.get("api_key"):
        redactor.add(params["api_key"])
    model_class = load_chat_model_class(spec)
    if (
        not any(params.get(name) for name in spec.key_params)
        and not spec.builtin
        and _takes_a_key(model_class)
    ):
        # A class the deployer added gets no deployment key, and its SDK must not find one in env by itself.
        problem = _missing(
            "connector.params.api_key",
            f"required: {spec.canonical} was added by the deployer (env FAIR_RUNNERS_ALLOWED_CONNECTORS) "
            "and gets no deployment key",
        )
        raise InvalidRequest("connector.params.api_key is missing", [problem])
    from .runners.llm import check_model  # LangChain, only once the class_path has passed

    check_model(model_class, params, spec.transport)
    urls = []
    if url_param and params.get(url_param):
        urls.append((params[url_param], f"connector.params.{url_param}"))
    return {
        "model_class": model_class,
        "params": params,
        "urls": urls,
        "transport": spec.transport,
        "run_target": _llm_target(spec, params, deployment_key),
    }


def _llm_target(spec: ConnectorSpec, params: dict[str, Any], deployment_key: bool) -> RunTarget:
    from ._connectors import PROVIDERS

    model = params.get("model") if isinstance(params.get("model"), str) else None
    endpoint: str
    if spec.transport == "boto3":
        env = os.environ
        region = params.get("region_name") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        aws = f"https://bedrock-runtime.{region}.amazonaws.com"
        endpoint = env.get("AWS_ENDPOINT_URL_BEDROCK_RUNTIME") or aws
    else:
        asked = params.get(spec.url_param) if spec.url_param else params.get(spec.url_field or "")
        endpoint = str(asked or spec.deployment_url() or spec.canonical)
    credential = next((params[name] for name in spec.key_params if params.get(name)), None)
    provider = next((name for name, path in PROVIDERS.items() if path == spec.canonical), spec.canonical)
    secrets = set(spec.key_params)
    return RunTarget(
        runner="llm",
        origin=origin_of(str(endpoint)) or str(endpoint),
        target=spec.canonical,
        model=model,
        credential=credential if isinstance(credential, str) else None,
        deployment_key=deployment_key,
        budget_names=(f"{provider}:{model}", provider) if model else (provider,),
        params={k: v for k, v in params.items() if k not in secrets},
        reports_headers=spec.transport == "httpx",
    )


def _takes_a_key(model_class: type[Any]) -> bool:
    """True when the model class has an API key field (its SDK would look for one in env when not given)."""
    fields = getattr(model_class, "model_fields", {})
    return any(
        name.endswith("api_key") or str(getattr(info, "alias", "") or "").endswith("api_key")
        for name, info in fields.items()
    )


def prepare(
    request: RunRequest | Mapping[str, Any],
    *,
    settings: Settings | None = None,
    credentials: Mapping[str, str] | None = None,
    keys: KeyRing | None = None,
    lambda_env: bool = False,
) -> PreparedRun:
    """Validate everything that needs no network; raise `InvalidRequest` naming the field.

    Deployment keys come from env and `credentials` (values read from a secret store, by env name:
    `ALQUIMIA_API_KEY`, `LLM_API_KEY`), each bound to its destination (`_credentials`); `keys` replaces
    them (the command line binds the operator's keys to its `--base-url`). A key in the payload wins.
    """
    redactor = Redactor()
    redactor.add_env()
    use_redactor(redactor)  # log output and error envelopes of this run mask its keys
    keys = keys if keys is not None else KeyRing.from_env(credentials)
    for value in [*keys.values(), *(credentials or {}).values(), *proxy_settings().credentials()]:
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
    if lambda_env and request.options.cache != "off" and not os.environ.get("FAIR_RUNNERS_CACHE_TABLE"):
        raise InvalidRequest(
            "options.cache needs this deployment's cache table",
            [
                {
                    "loc": "options.cache",
                    "msg": "this deployment has no response cache (env FAIR_RUNNERS_CACHE_TABLE is not set): "
                    "send cache 'off', or deploy the template's cache table",
                }
            ],
        )
    settings = settings or Settings.from_env()
    unknown = request.unknown_keys()
    warnings = [f"unknown key {key!r} ignored" for key in unknown[:MAX_WARNINGS]]
    if len(unknown) > MAX_WARNINGS:
        warnings.append(f"and {len(unknown) - MAX_WARNINGS} more unknown keys ignored")
    if request.mode == "llm":
        if request.config is not None:
            warnings.append("both `connector` and `config` were given: `connector` wins (LLM mode)")
        runner_args = _prepare_llm(request, redactor, keys)
    else:
        runner_args = _prepare_alquimia(request, redactor, keys)
    urls = runner_args.pop("urls")
    run_target = runner_args.pop("run_target")
    if request.options.cache != "off" and request.mode == "llm":
        temperature = run_target.params.get("temperature")
        if not isinstance(temperature, int | float) or temperature > 0:
            shown = "unset (the provider's default)" if temperature is None else f"{temperature:g}"
            warnings.append(
                f"options.cache={request.options.cache}: recorded answers are replayed, not resampled "
                f"(temperature is {shown}); use cache 'refresh' or 'off' for fresh samples"
            )
    return PreparedRun(
        request=request,
        options=_resolve_options(request, settings),
        run_id=request.run_id or uuid.uuid4().hex,
        redactor=redactor,
        warnings=[redactor.redact(w) for w in warnings],
        settings=settings,
        _runner_args=runner_args,
        _urls=urls,
        target=run_target,
        lambda_env=lambda_env,
    )
