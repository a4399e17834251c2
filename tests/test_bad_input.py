"""Bad input: a 400 (HTTP) or `InvalidRequest` (direct invoke) naming the field, and no backend call."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from fair_runners import InvalidRequest
from handler.app import lambda_handler

from .conftest import ALQUIMIA_KEY, FakeLambdaContext, alquimia_request, llm_request, make_datasets
from .helpers import http_event

Mutate = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutate:
    def mutate(request: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = request
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def _drop(path: str) -> Mutate:
    def mutate(request: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = request
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        del node[last]

    return mutate


def _duplicate_session(request: dict[str, Any]) -> None:
    request["datasets"][1]["session_id"] = request["datasets"][0]["session_id"]


ALQUIMIA_CASES: list[tuple[str, Mutate, str]] = [
    ("missing datasets", _drop("datasets"), "datasets"),
    ("empty datasets", _set("datasets", []), "datasets"),
    ("datasets not a list", _set("datasets", "s0"), "datasets"),
    ("dataset not an object", _set("datasets.0", 7), "datasets.0"),
    ("session_id not a string", _set("datasets.0.session_id", 12), "datasets.0.session_id"),
    ("empty session_id", _set("datasets.0.session_id", ""), "datasets.0.session_id"),
    ("missing query", _drop("datasets.0.conversation.1.query"), "datasets.0.conversation.1.query"),
    ("negative weight", _set("datasets.1.conversation.0.weight", -1), "datasets.1.conversation.0.weight"),
    ("conversation not a list", _set("datasets.0.conversation", {}), "datasets.0.conversation"),
    ("duplicate session ids", _duplicate_session, "datasets"),
    ("zero concurrency", _set("options.max_concurrency", 0), "options.max_concurrency"),
    ("concurrency not a number", _set("options.max_concurrency", "many"), "options.max_concurrency"),
    ("concurrency over the cap", _set("options.max_concurrency", 300), "options.max_concurrency"),
    ("negative timeout", _set("options.turn_timeout_s", -1), "options.turn_timeout_s"),
    ("zero attempts", _set("options.max_attempts", 0), "options.max_attempts"),
    ("misspelt option", _set("options.max_concurency", 4), "options.max_concurency"),
    ("history not a bool", _set("options.history", "sometimes"), "options.history"),
    ("no api_key anywhere", _drop("config.api_key"), "config.api_key"),
    ("no base_url anywhere", _drop("config.base_url"), "config.base_url"),
    ("no agent_id", _drop("config.agent_id"), "config.agent_id"),
    ("no target at all", _drop("config"), "config"),
    # Text that is not Unicode (an unpaired UTF-16 surrogate) and numbers JSON cannot carry.
    (
        "half an emoji in a query",
        _set("datasets.0.conversation.1.query", "smile \ud83d"),
        "datasets.0.conversation.1.query",
    ),
    (
        "lone surrogate in an unknown field",
        _set("datasets.1.conversation.0.note", "\udc00"),
        "datasets.1.conversation.0.note",
    ),
    ("lone surrogate in the context", _set("datasets.1.context", "a\ud800b"), "datasets.1.context"),
    ("lone surrogate in a key", _set("datasets.0.\ud800", 1), "datasets.0.\ufffd"),
    (
        "infinite weight",
        _set("datasets.1.conversation.0.weight", float("inf")),
        "datasets.1.conversation.0.weight",
    ),
    ("NaN in an unknown field", _set("datasets.0.score", float("nan")), "datasets.0.score"),
    # Pieces of the agent's URLs and its key header: never a way to another path, query or header.
    ("agent_id with a path", _set("config.agent_id", "../../admin/users"), "config.agent_id"),
    ("agent_id with a query", _set("config.agent_id", "bot?agentspace=finance#"), "config.agent_id"),
    ("agent_id dot-dot", _set("config.agent_id", ".."), "config.agent_id"),
    ("channel_id with a line break", _set("config.channel_id", "chat\r\nX-Injected: 1"), "config.channel_id"),
    ("api_version climbing out", _set("config.api_version", "v1/../../admin"), "config.api_version"),
    ("api_key with a line break", _set("config.api_key", "key\r\nX-Injected: 1"), "config.api_key"),
]

LLM_CASES: list[tuple[str, Mutate, str]] = [
    ("os.system", _set("connector.class_path", "os.system"), "connector.class_path"),
    ("subprocess.Popen", _set("connector.class_path", "subprocess.Popen"), "connector.class_path"),
    ("builtins.eval", _set("connector.class_path", "builtins.eval"), "connector.class_path"),
    ("not a chat model", _set("connector.class_path", "langchain_openai.OpenAI"), "connector.class_path"),
    ("empty class_path", _set("connector.class_path", ""), "connector.class_path"),
    ("no api key anywhere", _drop("connector.params.api_key"), "connector.params.api_key"),
    ("api key not a string", _set("connector.params.api_key", 5), "connector.params.api_key"),
    (
        "service-owned param",
        _set("connector.params.http_async_client", "x"),
        "connector.params.http_async_client",
    ),
    ("api key with a line break", _set("connector.params.api_key", "k\r\nX: 1"), "connector.params.api_key"),
    (
        "organization with a NUL",
        _set("connector.params.organization", "org\x00"),
        "connector.params.organization",
    ),
    ("model with a line break", _set("connector.params.model", "gpt\nX: 1"), "connector.params.model"),
]


@pytest.fixture
def no_backend_calls(agent: Any, llm: Any) -> Any:
    """Both loopback servers; the test asserts afterwards that neither was called."""
    yield agent, llm
    assert agent.requests == [] and llm.requests == []


def _check_400(request: Any, loc: str) -> None:
    # HTTP API (v2) event: a 400 envelope naming the field.
    response = lambda_handler(http_event(request), FakeLambdaContext())
    assert response["statusCode"] == 400, response["body"]
    body = json.loads(response["body"])
    assert body["success"] is False and body["error"]
    assert loc in [d["loc"] for d in body["details"]], body
    assert all(d["msg"] for d in body["details"])
    # Direct invoke: the typed exception, same details.
    with pytest.raises(InvalidRequest) as info:
        lambda_handler(copy.deepcopy(request), FakeLambdaContext())
    assert loc in [d["loc"] for d in info.value.details]
    assert type(info.value).__name__ == "InvalidRequest"


@pytest.mark.parametrize(("case", "mutate", "loc"), ALQUIMIA_CASES, ids=[c[0] for c in ALQUIMIA_CASES])
def test_alquimia_bad_input(no_backend_calls: Any, case: str, mutate: Mutate, loc: str) -> None:
    agent, _ = no_backend_calls
    request = alquimia_request(agent, make_datasets(sessions=2, turns=2))
    mutate(request)
    _check_400(request, loc)


@pytest.mark.parametrize(("case", "mutate", "loc"), LLM_CASES, ids=[c[0] for c in LLM_CASES])
def test_llm_bad_input(
    no_backend_calls: Any, imports: list[str], case: str, mutate: Mutate, loc: str
) -> None:
    _, llm = no_backend_calls
    request = llm_request(llm, make_datasets(sessions=2, turns=2))
    mutate(request)
    _check_400(request, loc)
    if loc == "connector.class_path":
        assert imports == []  # refused before anything was imported


def test_dangerous_class_paths_are_never_imported(llm: Any, imports: list[str]) -> None:
    for path in ("os.system", "subprocess.Popen", "os", "subprocess"):
        request = llm_request(llm, make_datasets(sessions=1, turns=1))
        request["connector"]["class_path"] = path
        with pytest.raises(InvalidRequest) as info:
            lambda_handler(request, FakeLambdaContext())
        assert "allowlist" in info.value.details[0]["msg"]
    assert imports == [] and llm.requests == []


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ("{not json", "body"),
        ("", "body"),
        ('{"datasets": [', "body"),
        ("[1, 2]", ""),
        ('"a string"', ""),
    ],
)
def test_http_body_that_is_not_a_json_object(no_backend_calls: Any, body: str, loc: str) -> None:
    for rest in (False, True):
        response = lambda_handler(http_event(body, rest=rest), FakeLambdaContext())
        assert response["statusCode"] == 400
        details = json.loads(response["body"])["details"]
        assert details[0]["loc"] == loc


def test_env_fallback_credentials_make_the_same_request_valid(
    agent: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = alquimia_request(agent, make_datasets(sessions=1, turns=1))
    del request["config"]["api_key"]
    monkeypatch.setenv("ALQUIMIA_API_KEY", ALQUIMIA_KEY)
    monkeypatch.setenv("ALQUIMIA_BASE_URL", agent.url)  # the agent the deployment's key belongs to
    result = lambda_handler(request, FakeLambdaContext())
    assert result["totals"]["successes"] == 1
    assert agent.infer_requests()[0]["authorization"] == f"Bearer {ALQUIMIA_KEY}"


def test_a_param_the_model_class_refuses_is_a_400(no_backend_calls: Any) -> None:
    # `reasoning_format` passes the connector rules (a string) but ChatGroq allows three values: the
    # model is built once when the request is prepared, so it is a 400, not a failure of every turn.
    _, llm = no_backend_calls
    request = llm_request(llm, make_datasets(sessions=16, turns=1), provider="groq")
    request["connector"]["params"]["reasoning_format"] = "bogus"
    _check_400(request, "connector.params.reasoning_format")


def test_numbers_json_cannot_carry_are_refused_by_name(no_backend_calls: Any) -> None:
    agent, _ = no_backend_calls
    body = json.dumps(alquimia_request(agent, make_datasets(sessions=2, turns=2)))
    overflow = body.replace('"query"', '"weight": 1e400, "query"', 1)  # parses to infinity
    response = lambda_handler(http_event(overflow), FakeLambdaContext())
    assert response["statusCode"] == 400
    details = json.loads(response["body"])["details"]
    assert details[0]["loc"] == "datasets.0.conversation.0.weight" and "finite" in details[0]["msg"]
    huge = body.replace('"query"', '"n": ' + "9" * 5000 + ', "query"', 1)  # over CPython's 4,300 digits
    response = lambda_handler(http_event(huge), FakeLambdaContext())
    assert response["statusCode"] == 400
    assert json.loads(response["body"])["details"][0]["loc"] == "body"


def test_a_key_with_a_line_break_is_not_echoed(no_backend_calls: Any) -> None:
    agent, _ = no_backend_calls
    request = alquimia_request(agent, make_datasets(sessions=1, turns=1))
    request["config"]["api_key"] = "sk-live-SECRET\r\nX-Injected: 1"
    response = lambda_handler(http_event(request), FakeLambdaContext())
    assert response["statusCode"] == 400
    assert "SECRET" not in response["body"] and "X-Injected" not in response["body"]


def test_request_uri_is_refused_over_http(no_backend_calls: Any) -> None:
    # A stored request holds another run's target (maybe its inline key): only the state machine reads it.
    agent, _ = no_backend_calls
    request = alquimia_request(agent, make_datasets(sessions=1, turns=1))
    del request["config"]
    request["request_uri"] = "s3://fr-results/runs/nightly/request.json"
    for rest in (False, True):
        response = lambda_handler(http_event(request, rest=rest), FakeLambdaContext())
        assert response["statusCode"] == 400, response["body"]
        assert json.loads(response["body"])["details"][0]["loc"] == "request_uri"
