"""The loopback servers on the wire: statuses, headers, bodies, fault kinds and request logs, exactly."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
from typing import Any

import pytest

from fair_runners.testing import AlquimiaAgent, Fault, OpenAICompatServer

from .conftest import ALQUIMIA_KEY, LLM_KEY, free_port

_AUTH = {"Authorization": f"Bearer {ALQUIMIA_KEY}"}
_LLM_AUTH = {"Authorization": f"Bearer {LLM_KEY}"}
_INFER_BODY = {"query": "hello", "session_id": "s1", "extra_data": {"k": 1}, "attachments": []}


def _call(
    url: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names, without `date` and `server`) and the whole body."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
        found = {k.lower(): v for k, v in response.getheaders() if k.lower() not in ("date", "server")}
        return response.status, found, data
    finally:
        conn.close()


def _json_headers(body: bytes) -> dict[str, str]:
    return {"content-type": "application/json", "content-length": str(len(body))}


def _infer(agent: Any, path: str = "/v2/event/infer/web/bot", **extra: str) -> str:
    status, _, body = _call(agent.url, "POST", path, json.dumps(_INFER_BODY).encode(), {**_AUTH, **extra})
    assert status == 200, body
    return str(json.loads(body)["stream_id"])


def test_alquimia_infer_then_stream(agent: AlquimiaAgent) -> None:
    payload = json.dumps(_INFER_BODY).encode()
    status, headers, body = _call(agent.url, "POST", "/v2/event/infer/web/bot?x=1&x=2", payload, _AUTH)
    assert status == 200 and headers == _json_headers(body)
    reply = json.loads(body)
    assert reply == {"stream_id": reply["stream_id"], "status": "queued"}
    assert body == json.dumps(reply, separators=(",", ":")).encode()
    stream = f"/v2/event/stream/{reply['stream_id']}?response_only=true"
    status, headers, body = _call(agent.url, "GET", stream, headers={**_AUTH, "Accept": "text/event-stream"})
    assert status == 200
    assert headers == {
        "cache-control": "no-cache",
        "content-type": "text/event-stream; charset=utf-8",
        "transfer-encoding": "chunked",
    }
    answer = "bot: turn 1 of s1: hello"
    cuts = [answer[:8], answer[:16], answer]  # three parts, as `chunks=3`
    expected = "".join(
        f"data: {json.dumps({'response': {'data': {'content': c}}, 'is_complete': False})}\n\n" for c in cuts
    )
    assert body.decode() == expected
    assert agent.requests == [
        {
            "step": "infer",
            "path": "/v2/event/infer/web/bot",
            "raw_path": "/v2/event/infer/web/bot",
            "query_params": {"x": "2"},
            "channel": "web",
            "agent_id": "bot",
            "session_id": "s1",
            "query": "hello",
            "extra_data": {"k": 1},
            "attachments": [],
            "authorization": f"Bearer {ALQUIMIA_KEY}",
        },
        {
            "step": "stream",
            "stream_id": reply["stream_id"],
            "path": f"/v2/event/stream/{reply['stream_id']}",
            "accept": "text/event-stream",
            "query_params": {"response_only": "true"},
        },
    ]
    assert agent.sessions == {"s1": ["hello"]}


def test_alquimia_raw_path_stays_percent_encoded(agent: AlquimiaAgent) -> None:
    _infer(agent, "/event/infer/web%3Achat/support%20bot%20%252e%252e")
    (infer,) = agent.infer_requests()
    assert infer["raw_path"] == "/event/infer/web%3Achat/support%20bot%20%252e%252e"
    assert infer["path"] == "/event/infer/web:chat/support bot %2e%2e"
    assert (infer["channel"], infer["agent_id"]) == ("web:chat", "support bot %2e%2e")


@pytest.mark.parametrize(
    ("method", "path", "status", "body"),
    [
        ("GET", "/event/infer/web/bot", 404, b'{"detail":"not found"}'),
        ("POST", "/event/stream/s1", 404, b'{"detail":"not found"}'),
        ("POST", "/", 404, b'{"detail":"not found"}'),
        ("GET", "/event/stream/nope", 404, b'{"detail":"unknown stream"}'),
        ("POST", "/event/infer/web/bot", 422, b'{"detail":"invalid json"}'),
    ],
)
def test_alquimia_refusals(agent: AlquimiaAgent, method: str, path: str, status: int, body: bytes) -> None:
    sent = b"{not json" if method == "POST" else None
    found = _call(agent.url, method, path, sent, _AUTH)
    assert found == (status, _json_headers(body), body)


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
@pytest.mark.parametrize("path", ["/event/infer/web/bot", "/event/stream/s1", "/"])
def test_alquimia_other_methods_are_405(agent: AlquimiaAgent, method: str, path: str) -> None:
    status, headers, body = _call(agent.url, method, path, headers=_AUTH)
    assert status == 405
    assert headers == {
        "allow": "GET, POST",
        "content-type": "text/plain; charset=utf-8",
        "content-length": "18",
    }
    assert body == (b"" if method == "HEAD" else b"Method Not Allowed")
    assert agent.requests == []


def test_alquimia_wrong_key_is_401_and_logged(agent: AlquimiaAgent) -> None:
    payload = json.dumps(_INFER_BODY).encode()
    found = _call(agent.url, "POST", "/event/infer/web/bot", payload, {"Authorization": "Bearer nope"})
    assert found == (401, _json_headers(b'{"detail":"invalid api key"}'), b'{"detail":"invalid api key"}')
    assert agent.requests[0]["authorization"] == "Bearer nope"
    status, _, _ = _call(agent.url, "GET", "/event/stream/s1", headers={"Authorization": "x"})
    assert status == 401 and [r["step"] for r in agent.requests] == ["infer", "stream"]


def test_alquimia_status_redirect_and_echo_faults(agent: AlquimiaAgent) -> None:
    agent.add_fault(Fault("status", status=429, retry_after=1.5))
    payload = json.dumps(_INFER_BODY).encode()
    status, headers, body = _call(agent.url, "POST", "/event/infer/a/b", payload, _AUTH)
    assert (status, body) == (429, b'{"detail":"injected 429"}')
    assert headers == {"retry-after": "1.5", **_json_headers(body)}
    agent.add_fault(Fault("redirect", status=302, location="http://elsewhere.test/x"))
    found = _call(agent.url, "POST", "/event/infer/a/b", payload, _AUTH)
    assert found == (302, {"location": "http://elsewhere.test/x", "content-length": "0"}, b"")
    agent.add_fault(Fault("echo", status=400))
    status, _, body = _call(agent.url, "POST", "/event/infer/a/b", payload, {**_AUTH, "X-Extra": "1"})
    echoed = json.loads(body)
    assert status == 400 and echoed["body"] == _INFER_BODY and echoed["error"] == "echo"
    assert (
        echoed["headers"]["authorization"] == f"Bearer {ALQUIMIA_KEY}" and echoed["headers"]["x-extra"] == "1"
    )


def test_alquimia_stream_faults(agent: AlquimiaAgent) -> None:
    agent.add_fault(Fault("malformed", phase="stream"))
    _, _, body = _call(agent.url, "GET", f"/event/stream/{_infer(agent)}", headers=_AUTH)
    assert body == b"data: {not json\n\ndata: [garbage]\n\n"
    agent.add_fault(Fault("answer", phase="stream", text="x\ud800y"))
    _, _, body = _call(agent.url, "GET", f"/event/stream/{_infer(agent)}", headers=_AUTH)
    assert body.endswith(b'data: {"response": {"data": {"content": "x\\ud800y"}}, "is_complete": false}\n\n')
    agent.add_fault(Fault("no_stream_id"))
    payload = json.dumps(_INFER_BODY).encode()
    assert _call(agent.url, "POST", "/event/infer/a/b", payload, _AUTH)[2] == b'{"status":"queued"}'


def test_alquimia_drop_cuts_the_stream_mid_body(agent: AlquimiaAgent) -> None:
    agent.add_fault(Fault("drop", phase="stream"))
    with pytest.raises(http.client.IncompleteRead) as cut:
        _call(agent.url, "GET", f"/event/stream/{_infer(agent)}", headers=_AUTH)
    assert cut.value.partial.startswith(b"data: ") and cut.value.partial.count(b"\n\n") == 1


_MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]


def test_openai_completion_on_both_paths(llm: OpenAICompatServer) -> None:
    payload = json.dumps({"model": "m1", "messages": _MESSAGES}).encode()
    for path in ("/v1/chat/completions", "/openai/v1/chat/completions"):
        status, headers, body = _call(llm.url, "POST", path, payload, _LLM_AUTH)
        assert status == 200 and headers == _json_headers(body)
        reply = json.loads(body)
        assert reply["model"] == "m1" and reply["object"] == "chat.completion"
        assert reply["choices"] == [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "echo: hi there (history=0, system=yes)"},
                "finish_reason": "stop",
            }
        ]
        assert reply["usage"] == {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}
    assert [r["path"] for r in llm.requests] == ["/v1/chat/completions", "/openai/v1/chat/completions"]
    first = llm.requests[0]
    assert set(first) == {"path", "model", "messages", "query", "authorization", "time"}
    assert (first["model"], first["messages"], first["query"]) == ("m1", _MESSAGES, "hi there")
    assert first["authorization"] == f"Bearer {LLM_KEY}"


@pytest.mark.parametrize(
    ("method", "path", "status", "body"),
    [
        ("POST", "/v1/chat/completions/", 404, b"Not Found"),
        ("POST", "/v2/chat/completions", 404, b"Not Found"),
        ("GET", "/", 404, b"Not Found"),
        ("GET", "/v1/chat/completions", 405, b"Method Not Allowed"),
        ("PUT", "/openai/v1/chat/completions", 405, b"Method Not Allowed"),
        ("HEAD", "/v1/chat/completions", 405, b""),
    ],
)
def test_openai_404_and_405(
    llm: OpenAICompatServer, method: str, path: str, status: int, body: bytes
) -> None:
    found_status, headers, found = _call(
        llm.url, method, path, b"{}" if method != "HEAD" else None, _LLM_AUTH
    )
    length = "18" if status == 405 else "9"
    assert (found_status, found) == (status, body)
    allow = {"allow": "POST"} if status == 405 else {}
    assert headers == {**allow, "content-type": "text/plain; charset=utf-8", "content-length": length}
    assert llm.requests == []


def _error(message: str, code: str) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": code, "code": code}}, separators=(",", ":")
    ).encode()


def test_openai_refusals_and_faults(llm: OpenAICompatServer) -> None:
    path = "/v1/chat/completions"
    found = _call(llm.url, "POST", path, b"{nope", _LLM_AUTH)
    assert found[0] == 400 and found[2] == _error("invalid JSON body", "invalid_request_error")
    payload = json.dumps({"model": "m", "messages": _MESSAGES}).encode()
    found = _call(llm.url, "POST", path, payload, {"Authorization": "Bearer bad"})
    assert found[0] == 401 and found[2] == _error("Incorrect API key provided", "invalid_api_key")
    streamed = json.dumps({"model": "m", "messages": _MESSAGES, "stream": True}).encode()
    assert _call(llm.url, "POST", path, streamed, _LLM_AUTH)[0] == 400
    llm.add_fault(Fault("status", status=503, retry_after=2))
    status, headers, body = _call(llm.url, "POST", path, payload, _LLM_AUTH)
    assert (status, body) == (503, _error("injected 503", "server_error"))
    assert headers == {"retry-after": "2", **_json_headers(body)}
    llm.add_fault(Fault("redirect", status=307, location="http://x.test/"))
    assert _call(llm.url, "POST", path, payload, _LLM_AUTH) == (
        307,
        {"location": "http://x.test/", "content-length": "0"},
        b"",
    )
    llm.add_fault(Fault("answer", text="a\ud800b"))
    status, headers, body = _call(llm.url, "POST", path, payload, _LLM_AUTH)
    assert status == 200 and headers == _json_headers(body) and b'"a\\ud800b"' in body
    llm.add_fault(Fault("echo_answer"))
    reply = json.loads(_call(llm.url, "POST", path, payload, _LLM_AUTH)[2])
    assert reply["choices"][0]["message"]["content"] == f"echo: hi there [auth: Bearer {LLM_KEY}]"
    assert len(llm.requests) == 6  # all but the invalid JSON


@pytest.mark.parametrize(
    ("module", "path", "body"),
    [
        ("alquimia_agent", "/event/infer/web/bot", _INFER_BODY),
        ("openai_compat", "/v1/chat/completions", {"model": "m", "messages": _MESSAGES}),
    ],
)
def test_cli_main_serves(module: str, path: str, body: dict[str, Any]) -> None:
    port = free_port()
    command = [sys.executable, "-m", f"fair_runners.testing.{module}", "--port", str(port), "--api-key", "k"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, f"{module} did not listen"
                time.sleep(0.05)
        found = _call(
            f"http://127.0.0.1:{port}", "POST", path, json.dumps(body).encode(), {"Authorization": "Bearer k"}
        )
        assert found[0] == 200, found  # the CLI's --api-key is the one checked
    finally:
        proc.terminate()
        proc.wait(timeout=10)
