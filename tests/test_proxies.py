"""Env proxies (`HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY`, either case) for both runners and the AWS clients,
against a real forward proxy on 127.0.0.1: absolute-form for http targets, CONNECT for https ones, `NO_PROXY`
and `FAIR_RUNNERS_TRUST_ENV=0` bypass it, proxy credentials never come back, the target is still vetted."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fair_runners.testing import HostileBackend, LoopbackServer
from fair_runners.testing.proxy import ForwardProxy

from ._cli import cli_env, probe
from .conftest import alquimia_request, llm_request, make_datasets
from .helpers import api_event
from .security_support import LeakScan, invoke, leak_scan

__all__ = ["leak_scan"]

_PROXY_NAMES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "FAIR_RUNNERS_TRUST_ENV")


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[ForwardProxy]:
    for name in _PROXY_NAMES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    with ForwardProxy() as running:
        yield running


def _targets(proxy: ForwardProxy) -> list[str]:
    return [f"{entry.method} {entry.target}" for entry in proxy.log]


@pytest.mark.parametrize("name", ["HTTP_PROXY", "http_proxy"])
def test_both_runners_go_through_the_proxy_for_http_targets(
    agent: Any, llm: Any, proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv(name, proxy.url)
    first = invoke(api_event("POST", "/run", alquimia_request(agent, make_datasets(2, 2))))
    second = invoke(api_event("POST", "/run", llm_request(llm, make_datasets(2, 2))))
    assert first.body["totals"]["successes"] == 4 and second.body["totals"]["successes"] == 4
    seen = _targets(proxy)
    assert sum(t.startswith(f"POST {agent.url}/event/infer/chat/bot") for t in seen) == 4
    assert sum(t.startswith(f"GET {agent.url}/event/stream/") for t in seen) == 4
    assert seen.count(f"POST {llm.url}/v1/chat/completions") == 4
    assert len(seen) == 12


@pytest.mark.parametrize(
    "env",
    [
        {"NO_PROXY": "127.0.0.1"},
        {"no_proxy": "localhost,127.0.0.1:1,127.0.0.1"},
        {"NO_PROXY": "*"},
        {"FAIR_RUNNERS_TRUST_ENV": "0"},
    ],
)
def test_no_proxy_and_trust_env_off_go_direct(
    agent: Any, llm: Any, proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    first = invoke(api_event("POST", "/run", alquimia_request(agent, make_datasets(1, 2))))
    second = invoke(api_event("POST", "/run", llm_request(llm, make_datasets(1, 2))))
    assert first.body["totals"]["successes"] == 2 and second.body["totals"]["successes"] == 2
    assert proxy.log == []


def test_proxy_credentials_are_sent_to_the_proxy_and_never_come_back(
    agent: Any, monkeypatch: pytest.MonkeyPatch, leak_scan: LeakScan
) -> None:
    password = "pr0xy-Pw-Xq82Lm5Zt"
    for name in _PROXY_NAMES:
        monkeypatch.delenv(name, raising=False)
    with ForwardProxy(require_auth=("ops", password)) as guarded:
        host_port = guarded.url.split("://", 1)[1]
        monkeypatch.setenv("HTTP_PROXY", f"http://ops:{password}@{host_port}")
        outcome = invoke(api_event("POST", "/run", alquimia_request(agent, make_datasets(1, 2))))
        assert outcome.body["totals"]["successes"] == 2
        assert {entry.status for entry in guarded.log} == {200}
        assert all(entry.proxy_authorization for entry in guarded.log)
    assert password not in json.dumps(outcome.raw) and password not in leak_scan.text()


def test_a_proxied_target_is_still_vetted(proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    # The proxy would connect anywhere; the guard refuses the internal name before anything is sent.
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("FAIR_RUNNERS_ALLOWED_HOSTS", "")
    request = {
        "datasets": make_datasets(1, 1),
        "config": {"base_url": "https://metadata.test", "api_key": "k-Zq81Lm4Xc7Vb2Nn5", "agent_id": "a"},
    }
    outcome = invoke(api_event("POST", "/run", request))
    assert outcome.status == 400 and "metadata" in outcome.body["details"][0]["msg"]
    assert proxy.log == []


_HTTPS_PROBE = r"""
import json, sys
from handler.app import lambda_handler
class Context:
    aws_request_id = "proxy-probe"
    def get_remaining_time_in_millis(self):
        return 60000
answers = [lambda_handler(request, Context()) for request in json.loads(sys.stdin.read())]
print(json.dumps([[t["status"] for s in a["summaries"] for t in s["turns"]] for a in answers]))
"""


def test_https_targets_go_through_a_connect_tunnel(
    certificate: tuple[Path, Path], proxy: ForwardProxy
) -> None:
    # In a fresh interpreter whose default trust store is the test certificate (SSL_CERT_FILE), as a
    # deployment behind a corporate proxy with its own CA would have it.
    cert_path, key_path = certificate
    backend = HostileBackend()  # well-behaved: speaks both protocols over TLS
    with LoopbackServer(backend.app, ssl_certfile=str(cert_path), ssl_keyfile=str(key_path)) as server:
        url = server.url
        assert url.startswith("https://")
        key = "k-Zq81Lm4Xc7Vb2Nn5"
        requests = [
            {"datasets": make_datasets(2, 2), "config": {"base_url": url, "api_key": key, "agent_id": "bot"}},
            {
                "datasets": make_datasets(2, 2),
                "connector": {
                    "class_path": "langchain_openai.ChatOpenAI",
                    "params": {"model": "m", "base_url": f"{url}/v1", "api_key": key},
                },
            },
        ]
        env = cli_env(
            HTTPS_PROXY=proxy.url,
            NO_PROXY="",
            SSL_CERT_FILE=str(cert_path),
            FAIR_RUNNERS_ALLOWED_HOSTS=f"127.0.0.1:{server.port}",
        )
        statuses = probe(_HTTPS_PROBE, input=requests, env=env)
    assert statuses == [["ok"] * 4, ["ok"] * 4]
    assert {entry.method for entry in proxy.log} == {"CONNECT"}
    assert {entry.target for entry in proxy.log} == {f"127.0.0.1:{server.port}"}
    assert {r.step for r in backend.requests} == {"infer", "stream", "completion"}


def test_the_aws_clients_use_the_same_proxies(proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    from moto.server import ThreadedMotoServer

    from fair_runners.aws import AwsClients

    moto = ThreadedMotoServer(port=0, verbose=False)
    moto.start()
    try:
        host, port = moto.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        AwsClients().s3.list_buckets()
        assert any(entry.target.startswith(endpoint) for entry in proxy.log)
        proxied = len(proxy.log)
        monkeypatch.setenv("FAIR_RUNNERS_TRUST_ENV", "0")
        AwsClients().s3.list_buckets()
        monkeypatch.setenv("FAIR_RUNNERS_TRUST_ENV", "1")
        monkeypatch.setenv("NO_PROXY", host)
        AwsClients().s3.list_buckets()
        assert len(proxy.log) == proxied  # neither of the last two went through the proxy
    finally:
        moto.stop()
