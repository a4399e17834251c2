"""`RateLimitGate` in front of the real loopback servers: OpenAI-style 429s and headers; only gated calls
count."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
import pytest

from fair_runners.pacing import parse_rate_headers
from fair_runners.testing import AlquimiaAgent, LoopbackServer, OpenAICompatServer
from fair_runners.testing.ratelimit import RateLimitGate, default_token_cost, go_duration

KEY = "gate-key"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "x" * 40}]}


def _post(client: httpx.Client, body: dict[str, object] | None = None) -> httpx.Response:
    return client.post("/v1/chat/completions", json=body or CHAT, headers={"authorization": f"Bearer {KEY}"})


@pytest.fixture
def openai_gate() -> Iterator[tuple[RateLimitGate, httpx.Client]]:
    gate = RateLimitGate(OpenAICompatServer(api_key=KEY).app, requests_per_minute=60, burst_requests=3)
    with LoopbackServer(gate) as server, httpx.Client(base_url=server.url) as client:
        yield gate, client


def test_accepted_answers_are_the_apps_with_openai_rate_headers(
    openai_gate: tuple[RateLimitGate, httpx.Client],
) -> None:
    gate, client = openai_gate
    response = _post(client)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"].startswith("echo: ")  # the app, unchanged
    assert response.headers["x-ratelimit-limit-requests"] == "60"
    assert response.headers["x-ratelimit-remaining-requests"] == "59"
    assert response.headers["x-ratelimit-reset-requests"] in ("1s", "0.999s", "0.998s")
    assert "x-ratelimit-limit-tokens" not in response.headers
    signals = parse_rate_headers(response.headers)
    assert signals is not None and (signals.limit_requests, signals.remaining_requests) == (60, 59)
    assert gate.log.accepted == 1 and gate.log.rejected == 0


def test_over_the_burst_a_429_like_openais(openai_gate: tuple[RateLimitGate, httpx.Client]) -> None:
    gate, client = openai_gate
    statuses = [_post(client).status_code for _ in range(3)]
    refused = _post(client)
    assert statuses == [200, 200, 200] and refused.status_code == 429
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    assert refused.headers["retry-after"] == "1"  # whole seconds, rounded up
    assert 500 < int(refused.headers["retry-after-ms"]) <= 1000
    assert refused.headers["x-ratelimit-limit-requests"] == "60"
    signals = parse_rate_headers(refused.headers)
    assert signals is not None and signals.retry_after_s == pytest.approx(
        int(refused.headers["retry-after-ms"]) / 1000
    )
    assert (gate.log.accepted, gate.log.rejected) == (3, 1)
    assert gate.log.max_in_window(1.0) == 3 and gate.log.max_in_window(1.0, accepted_only=False) == 4


def test_the_apps_own_errors_pass_through() -> None:
    gate = RateLimitGate(OpenAICompatServer(api_key=KEY).app, requests_per_minute=600)
    with LoopbackServer(gate) as server, httpx.Client(base_url=server.url) as client:
        response = client.post("/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer wrong"})
        missing = client.post("/v1/nothing", json=CHAT)
    assert response.status_code == 401 and "x-ratelimit-remaining-requests" in response.headers
    assert missing.status_code == 404
    assert gate.log.accepted == 2  # both were gated POSTs


def test_only_the_alquimia_infer_call_counts_not_the_stream() -> None:
    agent = AlquimiaAgent(api_key=KEY)
    gate = RateLimitGate(agent.app, requests_per_minute=60, burst_requests=2)
    auth = {"authorization": f"Bearer {KEY}"}
    with LoopbackServer(gate) as server, httpx.Client(base_url=server.url, headers=auth) as client:
        streams = []
        for n in range(2):
            infer = client.post("/event/infer/web/bot", json={"query": f"q{n}", "session_id": "s"})
            assert infer.status_code == 200 and "x-ratelimit-remaining-requests" in infer.headers
            streams.append(infer.json()["stream_id"])
        for stream_id in streams:
            stream = client.get(f"/event/stream/{stream_id}", headers={"accept": "text/event-stream"})
            assert stream.status_code == 200 and "turn" in stream.text
            assert "x-ratelimit-remaining-requests" not in stream.headers
        refused = client.post("/event/infer/web/bot", json={"query": "q2", "session_id": "s"})
    assert refused.status_code == 429
    assert [r["step"] for r in agent.requests] == ["infer", "infer", "stream", "stream"]
    assert (gate.log.accepted, gate.log.rejected) == (2, 1)


def test_a_provider_that_sends_no_headers() -> None:
    gate = RateLimitGate(
        OpenAICompatServer(api_key=KEY).app, requests_per_minute=60, burst_requests=1, send_headers=False
    )
    with LoopbackServer(gate) as server, httpx.Client(base_url=server.url) as client:
        ok, refused = _post(client), _post(client)
    assert ok.status_code == 200 and refused.status_code == 429
    assert not any(name.startswith("x-ratelimit") for name in ok.headers)
    assert not any(name.startswith("x-ratelimit") for name in refused.headers)
    assert refused.headers["retry-after"] == "1"


def test_token_buckets_charge_prompt_and_max_tokens() -> None:
    gate = RateLimitGate(
        OpenAICompatServer(api_key=KEY).app,
        requests_per_minute=600,
        tokens_per_minute=6000,  # 100 per second
        burst_tokens=300,
    )
    body = {**CHAT, "max_tokens": 200}  # 40 characters -> 10 + 200
    assert default_token_cost(json.dumps(body).encode()) == 210
    with LoopbackServer(gate) as server, httpx.Client(base_url=server.url) as client:
        ok = _post(client, body)
        refused = _post(client, body)
        too_large = _post(client, {**CHAT, "max_tokens": 1000})
    assert ok.status_code == 200 and ok.json()["usage"]["prompt_tokens"] == 1  # the app read the same body
    assert ok.headers["x-ratelimit-limit-tokens"] == "6000"
    assert ok.headers["x-ratelimit-remaining-tokens"] == "5790"
    assert refused.status_code == 429 and 1000 < int(refused.headers["retry-after-ms"]) <= 1200
    assert too_large.status_code == 429 and "Request too large" in too_large.json()["error"]["message"]
    assert [a.tokens for a in gate.log.arrivals()] == [210, 210, 1010]


def test_custom_gating_and_a_thread_safe_log() -> None:
    gate = RateLimitGate(
        OpenAICompatServer(api_key=None).app,
        requests_per_minute=60_000,
        burst_requests=1000,
        gated=lambda path, method: path.endswith("/completions"),
    )
    with LoopbackServer(gate) as server:

        def client_thread() -> None:
            with httpx.Client(base_url=server.url) as client:
                for _ in range(5):
                    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
                    assert client.post("/v1/other", json=CHAT).status_code == 404

        threads = [threading.Thread(target=client_thread) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    arrivals = gate.log.arrivals()
    assert len(arrivals) == 40 and all(a.accepted for a in arrivals)
    assert [a.at for a in arrivals] == sorted(a.at for a in arrivals)
    assert gate.log.max_in_window(60.0) == 40
    gate.log.clear()
    assert gate.log.arrivals() == []


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0s"),
        (0.05, "0.05s"),
        (0.0201, "0.02s"),
        (1.0, "1s"),
        (1.5, "1.5s"),
        (360.0, "6m0s"),
        (3723.5, "1h2m3.5s"),
    ],
)
def test_reset_format(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text
