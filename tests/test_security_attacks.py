"""The attack list: SSRF address forms, class-path tricks and constructor-param tricks, through
`lambda_handler`. Every one is refused with a 400 naming the field, and the loopback servers (which record
every request) receive nothing."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest

from fair_runners.testing import AlquimiaAgent, OpenAICompatServer

from .conftest import ALQUIMIA_KEY, LLM_KEY, make_datasets
from .security_support import LeakScan, assert_clean, assert_rejected, event_for, invoke, leak_scan

__all__ = ["leak_scan"]

# `{port}` is the port of the loopback server the attack aims at (it would record any request).
SSRF_URLS = [
    "http://127.0.0.1:{port}",
    "https://127.0.0.1:{port}",
    "HTTP://127.0.0.1:{port}",
    "https://127.0.0.1.:{port}",
    "https://127.0.0.1:{port}#@good.example",
    "https://127.0.0.1:{port}?@good.example",
    "https://2130706433:{port}",
    "https://0x7f000001:{port}",
    "https://0x7f.1:{port}",
    "https://0x7F.0.0.1:{port}",
    "https://0177.0.0.1:{port}",
    "https://0177.1:{port}",
    "https://127.1:{port}",
    "https://127.0.1:{port}",
    "https://127.000.000.001:{port}",
    "https://0:{port}",
    "https://0.0.0.0:{port}",
    "https://[::1]:{port}",
    "https://[::]:{port}",
    "https://[0:0:0:0:0:0:0:1]:{port}",
    "https://[::ffff:127.0.0.1]:{port}",
    "https://[::ffff:7f00:1]:{port}",
    "https://[::127.0.0.1]:{port}",
    "https://[64:ff9b::127.0.0.1]:{port}",
    "https://[2002:7f00:1::]:{port}",
    "https://[2001:0:7f00:1::]:{port}",
    "https://[fe80::1%25lo]:{port}",
    "https://[fe80::1]:{port}",
    "https://[::1%lo]:{port}",
    "https://::1:{port}",
    "https://[::1:{port}",
    "https://localhost:{port}",
    "https://LOCALHOST:{port}",
    "https://localhost.:{port}",
    "https://app.localhost:{port}",
    "https://loopback.test:{port}",
    "https://LOOPBACK.TEST.:{port}",
    "https://loopback6.test:{port}",
    "https://mapped.test:{port}",
    "https://zero.test:{port}",
    "https://garbage.test:{port}",
    "https://no-such-name.test:{port}",
    "https://good.example@127.0.0.1:{port}",
    "https://good.example:pw@127.0.0.1:{port}",
    "https://127.0.0.1:{port}@good.example",
    "https://good.example%40127.0.0.1:{port}",
    "https://127.0.0.1:{port}\\@good.example",
    "https:\\\\127.0.0.1:{port}",
    "https:/127.0.0.1:{port}",
    "//127.0.0.1:{port}",
    "127.0.0.1:{port}",
    "https://%31%32%37.0.0.1:{port}",
    "https://127.0.0.1%2f:{port}",
    "https://\uff11\uff12\uff17.\uff10.\uff10.\uff11:{port}",  # fullwidth digits (NFKC -> 127.0.0.1)
    "https://127\u30020\u30020\u30021:{port}",  # ideographic full stops
    "https://\uff4cocalhost:{port}",  # fullwidth l
    "https://l\u200bocalhost:{port}",  # zero-width space
    "https://127.0.0.1 :{port}",
    " https://127.0.0.1:{port}",
    "https://127.0.0.1:{port}\n",
    "https://127.0.0.1\t:{port}",
    "https://127.0.0.1:0{port}",
    "https://127.0.0.1:{port}:{port}",
    "https://127.0.0.1:-1",
    "https://127.0.0.1:99999",
    "https://127.0.0.1:+{port}",
    "https://",
    "https://:{port}",
    "https://..:{port}",
    "https://a..b:{port}",
    "https://-bad-.example:{port}",
    "https://under_score.example:{port}",
    "file:///etc/passwd",
    "file://127.0.0.1/etc/passwd",
    "gopher://127.0.0.1:{port}/_GET",
    "ftp://127.0.0.1:{port}",
    "ws://127.0.0.1:{port}",
    "javascript:alert(1)",
    "data:text/plain,hello",
    "unix:///var/run/docker.sock",
    "https://169.254.169.254",
    "http://169.254.169.254/latest/meta-data/",
    "https://169.254.170.2/v2/credentials",
    "https://[fd00:ec2::254]",
    "https://[::ffff:169.254.169.254]",
    "https://[::ffff:a9fe:a9fe]",
    "https://[64:ff9b::a9fe:a9fe]",
    "https://metadata.test",
    "https://metadata6.test",
    "https://nat64.test",
    "https://metadata.google.internal",
    "https://instance-data",
    "https://10.0.0.1",
    "https://172.16.0.1",
    "https://172.31.255.255",
    "https://192.168.1.1",
    "https://100.64.0.1",
    "https://100.127.255.254",
    "https://cgnat.test",
    "https://private.test",
    "https://mixed.test",
    "https://224.0.0.1",
    "https://255.255.255.255",
    "https://240.0.0.1",
    "https://198.18.0.1",
    "https://192.0.2.1",
    "https://192.0.0.8",
    "https://[fc00::1]",
    "https://[fec0::1]",
    "https://[ff02::1]",
    "https://[2001:db8::1]",
    "https://[100::1]",
    "https://" + "a" * 2100 + ".example",
]

# Forms that name the allowlisted host exactly (scheme case, a final dot, a fragment or query that only
# looks like userinfo): legitimately allowed when that host is allowlisted, so left out of that run.
_SAME_HOST = {
    "http://127.0.0.1:{port}",
    "https://127.0.0.1:{port}",
    "HTTP://127.0.0.1:{port}",
    "https://127.0.0.1.:{port}",
    "https://127.0.0.1:{port}#@good.example",
    "https://127.0.0.1:{port}?@good.example",
}

TARGETS = ["alquimia", "openai", "groq"]


@pytest.fixture
def quiet_servers(
    agent: AlquimiaAgent, llm: OpenAICompatServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[AlquimiaAgent, OpenAICompatServer]]:
    """Both loopback servers running, and NOT allowlisted: any request reaching them is a failure."""
    monkeypatch.delenv("FAIR_RUNNERS_ALLOWED_HOSTS")
    yield agent, llm
    assert agent.requests == [], "a refused request reached the Alquimia server"
    assert llm.requests == [], "a refused request reached the OpenAI-compatible server"


def _port(server: Any) -> int:
    return int(str(server.url).rsplit(":", 1)[1])


def _request(target: str, url: str) -> dict[str, Any]:
    datasets = make_datasets(sessions=1, turns=1)
    if target == "alquimia":
        return {"datasets": datasets, "config": {"base_url": url, "api_key": ALQUIMIA_KEY, "agent_id": "bot"}}
    class_path = {"openai": "langchain_openai.ChatOpenAI", "groq": "langchain_groq.chat_models.ChatGroq"}
    params = {"model": "m", "api_key": LLM_KEY, "base_url": url}
    return {"datasets": datasets, "connector": {"class_path": class_path[target], "params": params}}


def _aim(template: str, target: str, servers: tuple[AlquimiaAgent, OpenAICompatServer]) -> str:
    agent, llm = servers
    url = template.replace("{port}", str(_port(agent if target == "alquimia" else llm)))
    return url + "/v1" if target == "openai" and "://" in url and not url.endswith("\n") else url


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("template", SSRF_URLS)
def test_ssrf_url_refused_before_any_connection(
    template: str,
    target: str,
    quiet_servers: tuple[AlquimiaAgent, OpenAICompatServer],
    leak_scan: LeakScan,
) -> None:
    url = _aim(template, target, quiet_servers)
    shape = ["http_v2", "direct", "rest_v1"][TARGETS.index(target)]
    outcome = invoke(event_for(shape, _request(target, url)))
    loc = "config.base_url" if target == "alquimia" else "connector.params.base_url"
    assert_rejected(outcome, loc)
    assert_clean(outcome.raw)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("template", [u for u in SSRF_URLS if u not in _SAME_HOST and "{port}" in u])
def test_ssrf_aliases_of_an_allowlisted_host_are_refused(
    template: str,
    target: str,
    quiet_servers: tuple[AlquimiaAgent, OpenAICompatServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With `127.0.0.1:PORT` allowlisted, only that spelling reaches it: no alias, encoding or DNS name."""
    agent, llm = quiet_servers
    server = agent if target == "alquimia" else llm
    monkeypatch.setenv("FAIR_RUNNERS_ALLOWED_HOSTS", f"127.0.0.1:{_port(server)}")
    outcome = invoke(event_for("http_v2", _request(target, _aim(template, target, quiet_servers))))
    assert_rejected(outcome, "config.base_url" if target == "alquimia" else "connector.params.base_url")


def test_env_base_url_is_checked_too(
    quiet_servers: tuple[AlquimiaAgent, OpenAICompatServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    agent, _ = quiet_servers
    monkeypatch.setenv("ALQUIMIA_BASE_URL", f"http://localhost:{_port(agent)}")
    request = _request("alquimia", "")
    del request["config"]["base_url"]
    assert_rejected(invoke(event_for("http_v2", request)), "config.base_url")


# ----------------------------------------------------------------------------------------- class paths

CLASS_PATH_TRICKS = [
    "langchain_openai.chat_models.ChatOpenAI.__init__",
    "langchain_openai.chat_models.ChatOpenAI.model_validate",
    "langchain_openai.ChatOpenAI.__class__",
    "langchain_openai.chat_models.base.ChatOpenAI",
    "langchain_community.chat_models.ChatOpenAI",
    "langchain_core.language_models.chat_models.BaseChatModel",
    "langchain_core.language_models.fake_chat_models.FakeListChatModel",
    "langchain_openai..ChatOpenAI",
    ".langchain_openai.ChatOpenAI",
    "..langchain_openai.ChatOpenAI",
    "../langchain_openai.ChatOpenAI",
    "langchain_openai.ChatOpenAI.",
    "langchain_openai.ChatOpenAI..",
    "langchain_openai/ChatOpenAI",
    "langchain_openai:ChatOpenAI",
    "langchain_openai.chat_models:ChatOpenAI",
    "langchain_openai.chat_models.ChatOpenAI/../../os.system",
    "langchain_openai.chat_models.ChatOpenAI;import os",
    "langchain_openai.chat_models.ChatOpenAI#",
    "builtins.eval",
    "builtins.exec",
    "builtins.__import__",
    "__import__('os').system('id')",
    "os.system",
    "os.popen",
    "subprocess.Popen",
    "subprocess.run",
    "importlib.import_module",
    "pickle.loads",
    "pydoc.locate",
    "ctypes.CDLL",
    "code.interact",
    "http.server.HTTPServer",
    "fair_runners.testing.OpenAICompatServer",
    "fair_runners._connectors.load_chat_model_class",
    "typing.Any",
    " langchain_openai.ChatOpenAI",
    "langchain_openai.ChatOpenAI ",
    "\tlangchain_openai.ChatOpenAI",
    "langchain_openai.ChatOpenAI\n",
    "langchain_openai. ChatOpenAI",
    "langchain_openai.ChatOpenAI\x00",
    "langchain_openai.ChatOpenAI\x00.os.system",
    "LANGCHAIN_OPENAI.CHATOPENAI",
    "langchain_openai.chatopenai",
    "Langchain_openai.ChatOpenAI",
    "langchain_openai.chat_models.Chatopenai",
    "langchain_groq.ChatGROQ",
    "langchain_openai.ChatOpen\u0410I",  # Cyrillic A
    "langchain_openai.Chat\u041epenAI",  # Cyrillic O
    "langchain_\u043epenai.ChatOpenAI",  # Cyrillic o in the module
    "langchain_openai.ChatOpenA\u0406",  # Cyrillic I
    "\uff4cangchain_openai.ChatOpenAI",  # fullwidth l
    "langchain_openai\uff0eChatOpenAI",  # fullwidth full stop
    "langchain_openai.ChatOpenA\u2160",  # Roman numeral one (NFKC -> I)
    "langchain_openai.Chat\u200bOpenAI",  # zero-width space
    "langchain_openai.ChatOpenAI\u200d",  # zero-width joiner
    "\ufefflangchain_openai.ChatOpenAI",  # byte order mark
    "langchain_openai.ChatOpenAI\u00a0",  # no-break space
    "langchain_openai.ChatOpenAI\u0301",  # combining accent
    "lang\u00adchain_openai.ChatOpenAI",  # soft hyphen
    "langchain_openai.\U0001d402hatOpenAI",  # mathematical bold C (NFKC -> C)
    "langchain_openai.ChatOpenAI" * 2,
    "x" * 5000,
]


@pytest.mark.parametrize("class_path", CLASS_PATH_TRICKS)
def test_class_path_trick_refused_without_import(
    class_path: str,
    quiet_servers: tuple[AlquimiaAgent, OpenAICompatServer],
    imports: list[str],
    leak_scan: LeakScan,
) -> None:
    modules_before = set(sys.modules)
    request = _request("openai", "https://public.test/v1")
    request["connector"]["class_path"] = class_path
    outcome = invoke(event_for("http_v2", request))
    assert_rejected(outcome, "connector.class_path")
    assert imports == [], f"imported {imports}"
    assert set(sys.modules) - modules_before == set()


@pytest.mark.parametrize("class_path", ["builtins.eval", "os.system", "subprocess.Popen", "typing.Any"])
def test_deployer_added_non_chat_model_is_still_refused(
    class_path: str, quiet_servers: tuple[AlquimiaAgent, OpenAICompatServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even a class path the deployer adds must be a LangChain chat model; it is never called otherwise."""
    monkeypatch.setenv("FAIR_RUNNERS_ALLOWED_CONNECTORS", class_path)
    request = _request("openai", "https://public.test/v1")
    request["connector"]["class_path"] = class_path
    assert_rejected(invoke(event_for("direct", request)), "connector.class_path")


def test_allowlisted_class_path_reaches_the_server(agent: AlquimiaAgent, llm: OpenAICompatServer) -> None:
    """Control: the exact allowlisted name and an allowlisted host do work (the refusals above are real)."""
    request = _request("openai", f"{llm.url}/v1")  # type: ignore[attr-defined]
    outcome = invoke(event_for("http_v2", request))
    assert outcome.status == 200 and outcome.body["totals"]["successes"] == 1
    assert len(llm.requests) == 1


# ------------------------------------------------------------------------------------ constructor params

PARAM_TRICKS: list[tuple[str, Any]] = [
    ("http_client", {"base_url": "http://127.0.0.1"}),
    ("http_async_client", "httpx.AsyncClient()"),
    ("client", {}),
    ("async_client", None),
    ("root_client", 1),
    ("root_async_client", "x"),
    ("default_headers", {"X-Forwarded-For": "127.0.0.1"}),
    ("default_query", {"a": "b"}),
    ("openai_proxy", "http://127.0.0.1:3128"),
    ("groq_proxy", "http://127.0.0.1:3128"),
    ("proxy", "http://127.0.0.1:3128"),
    ("proxies", {"https": "http://127.0.0.1:3128"}),
    ("http_proxy", "http://127.0.0.1:3128"),
    ("model_kwargs", {"extra_headers": {"Authorization": "Bearer other"}}),
    ("extra_body", {"x": 1}),
    ("callbacks", ["builtins.print"]),
    ("callback_manager", {}),
    ("cache", True),
    ("rate_limiter", {}),
    ("custom_get_token_ids", "os.system"),
    ("metadata", {"a": 1}),
    ("tags", ["a"]),
    ("verbose", True),
    ("profile", {}),
    ("disabled_params", {"parallel_tool_calls": None}),
    ("tiktoken_model_name", "../../etc/passwd"),
    ("http_socket_options", [[1, 2, 3]]),
    ("__class__", "x"),
    ("_private", 1),
    ("__init__", "x"),
    ("openai_api_key", "another-key-123456"),
    ("groq_api_key", "another-key-123456"),
    ("openai_api_base", "http://127.0.0.1:1/v1"),
    ("groq_api_base", "http://127.0.0.1:1"),
    ("api_base", "http://127.0.0.1:1"),
    ("endpoint", "http://127.0.0.1:1"),
    ("azure_endpoint", "http://127.0.0.1:1"),
    ("model_name", "m"),
    ("request_timeout", 5),
    ("stop_sequences", ["x"]),
    ("ca_bundle", "/etc/ssl/private/key.pem"),
    ("cert_file", "/etc/passwd"),
    ("unknown_param", 1),
    ("model", {"name": "m"}),
    ("model", ["m"]),
    ("model", 5),
    ("model", "m" * 300),
    ("temperature", "hot"),
    ("temperature", True),
    ("temperature", -1),
    ("temperature", 99),
    ("temperature", [0.5]),
    ("top_p", 2),
    ("max_tokens", 1.5),
    ("max_tokens", True),
    ("max_tokens", 0),
    ("max_tokens", "100"),
    ("stop", [1, 2]),
    ("stop", {"a": "b"}),
    ("stop", ["x"] * 17),
    ("timeout", -1),
    ("timeout", 10_000),
    ("timeout", "5"),
    ("max_retries", 1000),
    ("max_retries", -1),
    ("seed", "1"),
    ("seed", 2**70),
    ("api_key", {"value": "k"}),
    ("api_key", ["k"]),
    ("api_key", 12345),
    ("base_url", 123),
    ("base_url", {"url": "https://public.test"}),
    ("base_url", "http://127.0.0.1:1/v1"),
]


@pytest.mark.parametrize("target", ["openai", "groq"])
@pytest.mark.parametrize(
    ("key", "value"), PARAM_TRICKS, ids=[f"{k}-{i}" for i, (k, _) in enumerate(PARAM_TRICKS)]
)
def test_connector_param_refused_naming_it(
    key: str, value: Any, target: str, llm: OpenAICompatServer, leak_scan: LeakScan
) -> None:
    request = _request(target, f"{llm.url}/v1" if target == "openai" else llm.url)  # type: ignore[attr-defined]
    request["connector"]["params"][key] = value
    outcome = invoke(event_for("http_v2", request))
    assert_rejected(outcome, f"connector.params.{key}")
    assert llm.requests == []


def test_every_refused_param_is_named(llm: OpenAICompatServer) -> None:
    request = _request("openai", f"{llm.url}/v1")  # type: ignore[attr-defined]
    request["connector"]["params"].update({"default_headers": {}, "model_kwargs": {}, "temperature": "x"})
    outcome = invoke(event_for("http_v2", request))
    locs = {d["loc"] for d in outcome.body["details"]}
    assert locs == {
        "connector.params.default_headers",
        "connector.params.model_kwargs",
        "connector.params.temperature",
    }


def test_safe_params_are_passed_through(llm: OpenAICompatServer) -> None:
    request = _request("openai", f"{llm.url}/v1")  # type: ignore[attr-defined]
    request["connector"]["params"].update(
        {"temperature": 0.2, "top_p": 0.9, "max_tokens": 64, "stop": ["END"], "timeout": 5, "seed": 7}
    )
    outcome = invoke(event_for("http_v2", request))
    assert outcome.status == 200 and outcome.body["totals"]["successes"] == 1
