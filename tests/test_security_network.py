"""The network guard beyond the attack list: DNS answers, rebinding at connect time, redirects, allowlist."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from fair_runners import _netguard
from fair_runners._netguard import (
    BlockedAddress,
    Target,
    check_ip,
    parse_url,
    vet_url,
)
from fair_runners.runners._session import GuardedResolver, guarded_session
from fair_runners.testing import AlquimiaAgent, Fault, OpenAICompatServer

from .conftest import ALQUIMIA_KEY, alquimia_request, llm_request, make_datasets
from .security_support import LeakScan, assert_clean, assert_rejected, event_for, invoke, leak_scan

__all__ = ["leak_scan"]


def check_url(url: str, loc: str) -> Target:
    """`vet_url` (parse, then resolve off the event loop and check), from synchronous test code."""
    return asyncio.run(vet_url(url, loc))


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "::1",
        "::",
        "fd00:ec2::254",
        "fe80::1",
        "::ffff:8.8.8.8",
        "::8.8.8.8",
        "64:ff9b::808:808",
        "64:ff9b:1::808:808",
        "2002:808:808::1",
        "2001:0:808:808::1",
        "ff0e::1",
    ],
)
def test_non_public_addresses_are_blocked(address: str) -> None:
    with pytest.raises(BlockedAddress):
        check_ip(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.215.14", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    check_ip(ipaddress.ip_address(address))


def test_dns_name_with_public_answers_passes() -> None:
    target = check_url("https://public.test/v1", "config.base_url")
    assert (target.host, target.port, target.allowlisted) == ("public.test", 443, False)


def test_every_dns_answer_is_checked(_no_real_dns: dict[str, list[str]]) -> None:
    _no_real_dns["many.test"] = ["93.184.215.14", "2606:4700:4700::1111", "169.254.169.254"]
    with pytest.raises(Exception, match="metadata") as info:
        check_url("https://many.test", "config.base_url")
    assert "config.base_url" in str(info.value)


def test_slow_dns_is_refused_not_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def slow(host: str, port: int) -> list[str]:
        release.wait(5)
        return ["93.184.215.14"]

    monkeypatch.setattr(_netguard, "_resolve", slow)
    monkeypatch.setenv("FAIR_RUNNERS_DNS_TIMEOUT_S", "0.2")
    try:
        with pytest.raises(Exception, match="timed out"):
            check_url("https://slow.test", "config.base_url")
    finally:
        release.set()


def test_a_slow_dns_lookup_never_blocks_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    # The lookup waits on a DNS thread: another task keeps running (ticking every 10 ms) all the while.
    def slow(host: str, port: int) -> list[str]:
        threading.Event().wait(0.5)
        return ["93.184.215.14"]

    monkeypatch.setattr(_netguard, "_resolve", slow)

    async def scenario() -> tuple[int, Target]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        target = await vet_url("https://slow.test/v1", "config.base_url")
        done.set()
        await task
        return ticks, target

    ticks, target = asyncio.run(scenario())
    assert target.host == "slow.test"
    assert ticks >= 30  # ~50 ticks in 0.5 s; a blocked loop would have ticked once or not at all


def test_allowlist_entries_host_and_host_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIR_RUNNERS_ALLOWED_HOSTS", " Agent.Internal. ,10.0.0.5:8080,[::1]:9000")
    assert parse_url("http://agent.internal:1234/x", "u").allowlisted  # host: any port, http too
    assert parse_url("http://10.0.0.5:8080", "u").allowlisted
    assert parse_url("http://[::1]:9000", "u").allowlisted
    for url in ("http://10.0.0.5:8081", "https://[::1]:9001", "http://agent.internal.evil.test"):
        with pytest.raises(Exception, match="u is not an allowed URL"):
            check_url(url, "u")


def test_blocked_url_message_names_field_reason_and_fix() -> None:
    with pytest.raises(Exception) as info:
        check_url("https://169.254.169.254/latest", "config.base_url")
    text = str(info.value)
    assert "config.base_url" in text and "metadata" in text and "FAIR_RUNNERS_ALLOWED_HOSTS" in text


# ------------------------------------------------------------------------------------------ connect time


def test_connect_time_resolver_returns_only_checked_addresses() -> None:
    results = asyncio.run(GuardedResolver().resolve("public.test", 443))
    assert [(r["host"], r["port"]) for r in results] == [("93.184.215.14", 443)]  # what aiohttp connects to


@pytest.mark.parametrize("host", ["loopback.test", "metadata.test", "mixed.test", "nope.test"])
def test_connect_time_resolver_refuses_non_public_answers(host: str) -> None:
    with pytest.raises(OSError, match="network guard"):
        asyncio.run(GuardedResolver().resolve(host, 443))


@pytest.fixture
def tcp_listener() -> Iterator[tuple[int, list[Any]]]:
    """A bare TCP listener on 127.0.0.1 that counts connections (TLS or not, any byte at all)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.settimeout(0.1)
    accepted: list[Any] = []
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except (TimeoutError, OSError):
                continue
            accepted.append(conn.getpeername())
            conn.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield int(sock.getsockname()[1]), accepted
    stop.set()
    thread.join(2)
    sock.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "[::ffff:127.0.0.1]"])
def test_connector_refuses_ip_literals_without_connecting(
    host: str, tcp_listener: tuple[int, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiohttp skips the resolver for IP literals: the connector checks them itself."""
    port, accepted = tcp_listener
    monkeypatch.delenv("FAIR_RUNNERS_ALLOWED_HOSTS", raising=False)

    async def get() -> None:
        async with guarded_session(2) as session:
            await session.get(f"http://{host}:{port}/")

    with pytest.raises(aiohttp.ClientConnectionError, match="network guard"):
        asyncio.run(get())
    assert accepted == []


def test_connector_lets_allowlisted_hosts_through(
    tcp_listener: tuple[int, list[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, accepted = tcp_listener
    monkeypatch.setenv("FAIR_RUNNERS_ALLOWED_HOSTS", f"127.0.0.1:{port}")

    async def get() -> None:
        async with guarded_session(2) as session:
            await session.get(f"http://127.0.0.1:{port}/")

    with pytest.raises(aiohttp.ClientError):  # the listener hangs up at once: but it was reached
        asyncio.run(get())
    assert accepted  # reached (aiohttp may retry an idempotent GET once on the hang-up)


@pytest.mark.parametrize("mode", ["alquimia", "llm"])
def test_dns_rebinding_is_caught_at_connect_time(
    mode: str,
    tcp_listener: tuple[int, list[Any]],
    _no_real_dns: dict[str, list[str]],
    monkeypatch: pytest.MonkeyPatch,
    leak_scan: LeakScan,
) -> None:
    """The name is public when `prepare()` checks it and loopback when the client connects: refused."""
    port, accepted = tcp_listener
    monkeypatch.delenv("FAIR_RUNNERS_ALLOWED_HOSTS", raising=False)
    answers = iter([["93.184.215.14"]])

    def rebinding(host: str, port: int) -> list[str]:
        return next(answers, ["127.0.0.1"])

    monkeypatch.setattr(_netguard, "_resolve", rebinding)
    # The system resolver (what an unguarded client would use) already answers with the loopback address.
    real_getaddrinfo = socket.getaddrinfo

    def system_resolver(host: Any, *args: Any, **kwargs: Any) -> Any:
        rebound = host in ("rebind.test", b"rebind.test")
        return real_getaddrinfo("127.0.0.1" if rebound else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", system_resolver)
    url = f"https://rebind.test:{port}"
    if mode == "alquimia":
        request: dict[str, Any] = {
            "datasets": make_datasets(1, 2),
            "config": {"base_url": url, "api_key": ALQUIMIA_KEY, "agent_id": "bot"},
        }
    else:
        request = {
            "datasets": make_datasets(1, 2),
            "connector": {
                "class_path": "langchain_openai.ChatOpenAI",
                "params": {"model": "m", "base_url": url, "api_key": "rebinding-test-key"},
            },
        }
    request["options"] = {"max_attempts": 2}
    outcome = invoke(event_for("direct", request))
    assert outcome.status == 200
    records = outcome.body["summaries"][0]["turns"]
    assert {r["status"] for r in records} == {"error"}
    assert accepted == [], "a connection reached the loopback listener"


# --------------------------------------------------------------------------------------------- redirects


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("phase", ["infer", "stream"])
def test_alquimia_redirect_is_not_followed(status: int, phase: str, agent: AlquimiaAgent) -> None:
    # The redirect points back at the agent itself, so following it would show up in its request log.
    location = f"{agent.url}/event/infer/chat/bot"  # type: ignore[attr-defined]
    agent.add_fault(Fault("redirect", status=status, location=location, phase=phase))  # type: ignore[arg-type]
    outcome = invoke(event_for("http_v2", alquimia_request(agent, make_datasets(1, 1))))
    assert outcome.status == 200
    turn = outcome.body["summaries"][0]["turns"][0]
    assert turn["status"] == "error" and turn["attempts"] == 1
    assert f"HTTP {status}" in outcome.body["datasets"][0]["conversation"][0]["assistant"]
    assert [r["step"] for r in agent.requests] == (["infer"] if phase == "infer" else ["infer", "stream"])


@pytest.mark.parametrize("status", [302, 307])
@pytest.mark.parametrize("provider", ["openai", "groq"])
def test_llm_redirect_is_not_followed(status: int, provider: str, llm: OpenAICompatServer) -> None:
    location = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
    llm.add_fault(Fault("redirect", status=status, location=location))
    outcome = invoke(event_for("http_v2", llm_request(llm, make_datasets(1, 1), provider=provider)))
    assert outcome.status == 200
    assert outcome.body["summaries"][0]["turns"][0]["status"] == "error"
    assert len(llm.requests) == 1
    assert_clean(outcome.raw)


def test_function_url_and_rest_refuse_the_same(agent: AlquimiaAgent, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAIR_RUNNERS_ALLOWED_HOSTS")
    request = alquimia_request(agent, make_datasets(1, 1))
    for shape in ("function_url", "rest_v1", "map_batch", "direct"):
        assert_rejected(invoke(event_for(shape, request)), "config.base_url")
    assert agent.requests == []
