"""Backends that lie, through the whole handler: bombs and endless bodies fail their turn as `too_large` in
bounded memory, timeouts and the deadline fire whatever the backend sends, a cut stream is retried and never
stored as an answer, odd fields after a good answer are skipped with a note, and no 8-character run of a key
comes back from a backend that echoes it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fair_runners.testing import HostileBackend, LoopbackServer
from fair_runners.testing.hostile import DOTDOT_IDS, KEY_ECHO_VARIANTS

from ._cli import cli_env, probe
from .conftest import FakeLambdaContext, _allow, make_datasets
from .helpers import api_event
from .security_support import LeakScan, invoke, leak_scan

__all__ = ["leak_scan"]

KEY = "hk-Vq83Lz0Pw6Rm2Tx9Yc4Nb7"  # the caller's own key, which the hostile backend echoes back


@pytest.fixture
def hostile(monkeypatch: pytest.MonkeyPatch) -> Iterator[HostileBackend]:
    backend = HostileBackend()
    with LoopbackServer(backend.app) as server:
        backend.url = server.url  # type: ignore[attr-defined]
        _allow(monkeypatch, server)
        yield backend


def _request(backend: HostileBackend, mode: str, sessions: int = 1, **options: Any) -> dict[str, Any]:
    url = backend.url  # type: ignore[attr-defined]
    request: dict[str, Any] = {
        "datasets": make_datasets(sessions, 1),
        "options": {"max_attempts": 2, **options},
    }
    if mode == "alquimia":
        request["config"] = {"base_url": url, "api_key": KEY, "agent_id": "bot"}
    else:
        request["connector"] = {
            "class_path": "langchain_openai.ChatOpenAI",
            "params": {"model": "m", "base_url": f"{url}/v1", "api_key": KEY},
        }
    return request


def _turn(result: dict[str, Any], session: int = 0) -> tuple[dict[str, Any], str]:
    return result["summaries"][session]["turns"][0], result["datasets"][session]["conversation"][0][
        "assistant"
    ]


# ------------------------------------------------------------------------------------ bounded answers

SIZED = [
    ("alquimia", "gzip_bomb", "infer", {}),
    ("alquimia", "gzip_bomb", "stream", {}),
    ("llm", "gzip_bomb", "completion", {}),
    ("alquimia", "huge_body", "infer", {"size": 100 << 20}),
    ("alquimia", "huge_body", "stream", {"size": 100 << 20}),
    ("llm", "huge_body", "completion", {"size": 100 << 20}),
    ("llm", "huge_body", "completion", {"size": 300 << 20, "chunked": True}),
    ("alquimia", "endless_line", "stream", {"gzip": True}),
    ("alquimia", "endless_line", "stream", {}),
]


@pytest.mark.parametrize(("mode", "kind", "step", "params"), SIZED, ids=lambda v: str(v))
def test_an_oversized_reply_fails_its_turn_as_too_large_and_is_not_retried(
    hostile: HostileBackend, mode: str, kind: str, step: str, params: dict[str, Any]
) -> None:
    hostile.set(kind, step=step, **params)
    started = time.monotonic()
    result = invoke(api_event("POST", "/run", _request(hostile, mode))).body
    record, assistant = _turn(result)
    assert record["status"] == "error" and record["error_type"] == "too_large", assistant
    assert record["attempts"] == 1  # never retried
    assert "FAIR_RUNNERS_MAX_ANSWER_BYTES" in assistant
    assert time.monotonic() - started < 5


# Peak RSS of this process image: VmHWM, not ru_maxrss, which Linux carries over from the forking pytest.
_RSS_PROBE = r"""
import json, sys
from handler.app import lambda_handler
if sys.argv[1] == "llm":
    import langchain_openai  # loaded before the baseline: what is measured is the turn, not the import
def peak_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
class Context:
    aws_request_id = "rss-probe"
    def get_remaining_time_in_millis(self):
        return 60000
before = peak_mb()
result = lambda_handler(json.loads(sys.stdin.read()), Context())
after = peak_mb()
print(json.dumps({"before_mb": before, "after_mb": after,
                  "errors": [t["error_type"] for s in result["summaries"] for t in s["turns"]]}))
"""


@pytest.mark.parametrize(
    ("mode", "step", "params"),
    [("alquimia", "stream", {}), ("llm", "completion", {}), ("llm", "completion", {"kind": "huge_body"})],
    ids=["alquimia-bomb", "llm-bomb", "llm-300mb-chunked"],
)
def test_memory_stays_bounded_while_a_bomb_is_refused(
    hostile: HostileBackend, mode: str, step: str, params: dict[str, Any]
) -> None:
    # In a fresh interpreter: peak RSS over the whole invocation, four sessions hitting the bomb at once.
    kind = params.pop("kind", "gzip_bomb")
    if kind == "huge_body":
        params = {"size": 300 << 20, "chunked": True}
    hostile.set(kind, step=step, **params)
    env = cli_env(FAIR_RUNNERS_ALLOWED_HOSTS=f"127.0.0.1:{hostile.url.rsplit(':', 1)[1]}")  # type: ignore[attr-defined]
    report = probe(_RSS_PROBE, mode, input=_request(hostile, mode, sessions=4), env=env)
    assert report["errors"] == ["too_large"] * 4
    print(f"\n{mode} {kind}: peak RSS {report['before_mb']:.0f} -> {report['after_mb']:.0f} MB")
    # 1 GiB (or 300 MiB) per session before the cap (2 MiB a reply); measured growth 12-15 MB for the four.
    assert report["after_mb"] - report["before_mb"] < 50, report


# ----------------------------------------------------------------------------- timeouts that fire


@pytest.mark.parametrize(
    ("mode", "step"), [("alquimia", "infer"), ("alquimia", "stream"), ("llm", "completion")]
)
def test_the_turn_timeout_holds_against_a_slow_drip(hostile: HostileBackend, mode: str, step: str) -> None:
    import langchain_openai  # noqa: F401  # the clock is for the turn, not a first import (~1.3 s) in this process

    hostile.set("slow_drip", step=step, size=10_000, interval_s=0.02)
    started = time.monotonic()
    result = invoke(api_event("POST", "/run", _request(hostile, mode, turn_timeout_s=1, max_attempts=1))).body
    elapsed = time.monotonic() - started
    record, _ = _turn(result)
    assert record["error_type"] == "timeout"
    assert elapsed < 1 + 1, elapsed
    print(f"\nended after {elapsed:.2f} s")


def test_the_turn_timeout_holds_while_an_endless_stream_pours_in(
    hostile: HostileBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cap high enough that the timeout, not the cap, ends the turn: data keeps arriving the whole time.
    monkeypatch.setenv("FAIR_RUNNERS_MAX_ANSWER_BYTES", str(64 << 20))
    hostile.set("slow_drip", step="stream", size=50_000_000, interval_s=0.0005)
    started = time.monotonic()
    result = invoke(
        api_event("POST", "/run", _request(hostile, "alquimia", turn_timeout_s=1, max_attempts=1))
    )
    elapsed = time.monotonic() - started
    assert _turn(result.body)[0]["error_type"] == "timeout"
    assert elapsed < 2, elapsed
    print(f"\nended after {elapsed:.2f} s")


def test_the_api_gateway_deadline_holds(hostile: HostileBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAIR_RUNNERS_HTTP_DEADLINE_S", "3")
    hostile.set("slow_drip", step="stream", size=1_000_000, interval_s=0.01)
    started = time.monotonic()
    outcome = invoke(api_event("POST", "/run", _request(hostile, "alquimia", sessions=3, turn_timeout_s=60)))
    elapsed = time.monotonic() - started
    assert outcome.status == 200 and outcome.body["complete"] is False
    assert elapsed < 3 + 1, elapsed
    print(f"\nended after {elapsed:.2f} s")


def test_a_direct_invoke_ends_before_the_lambda_timeout(hostile: HostileBackend) -> None:
    from handler.app import lambda_handler

    hostile.set("slow_drip", step="completion", size=1_000_000, interval_s=0.01)
    started = time.monotonic()
    result = lambda_handler(_request(hostile, "llm", sessions=2, turn_timeout_s=60), FakeLambdaContext(6))
    elapsed = time.monotonic() - started
    assert result["complete"] is False
    assert elapsed < 6, elapsed  # the margin before Lambda's own timeout is kept
    print(f"\nended after {elapsed:.2f} s")


# --------------------------------------------------------------------------------- honest streams


@pytest.mark.parametrize(
    ("mode", "kind", "step", "params"),
    [
        ("alquimia", "truncated_event", "stream", {"variant": "line"}),
        ("alquimia", "truncated_event", "stream", {"variant": "mid"}),
        ("alquimia", "truncated_body", "stream", {}),
        ("alquimia", "truncated_body", "infer", {}),
        ("llm", "truncated_body", "completion", {}),
        ("llm", "truncated_body", "completion", {"chunked": True}),
    ],
    ids=lambda v: str(v),
)
def test_a_cut_reply_is_retried_and_never_stored_as_an_answer(
    hostile: HostileBackend, mode: str, kind: str, step: str, params: dict[str, Any]
) -> None:
    hostile.set(kind, step=step, **params)
    result = invoke(api_event("POST", "/run", _request(hostile, mode, max_attempts=3))).body
    record, assistant = _turn(result)
    assert record["status"] == "error" and record["error_type"] == "transient", assistant
    assert record["attempts"] == 3
    assert assistant.startswith("[ERROR] ")
    steps = [r.step for r in hostile.requests]
    assert steps.count(step) == 3


def test_odd_fields_after_a_good_answer_are_skipped_with_a_note(hostile: HostileBackend) -> None:
    hostile.set("odd_sse_fields", step="stream")
    result = invoke(api_event("POST", "/run", _request(hostile, "alquimia"))).body
    record, assistant = _turn(result)
    assert record["status"] == "ok" and assistant == hostile.answer
    assert any("malformed stream event" in w for w in result["warnings"]), result["warnings"]
    text = json.dumps(result)
    assert "Exceeds the limit" not in text and "RecursionError" not in text and "ValueError" not in text


@pytest.mark.parametrize("stream_id", DOTDOT_IDS, ids=lambda v: v[:12])
def test_a_stream_id_is_checked_before_it_goes_into_a_url(hostile: HostileBackend, stream_id: str) -> None:
    hostile.set("dotdot_stream_id", stream_id=stream_id)
    result = invoke(api_event("POST", "/run", _request(hostile, "alquimia"))).body
    record, assistant = _turn(result)
    assert record["error_type"] == "protocol" and "stream_id" in assistant
    assert [r.step for r in hostile.requests] == ["infer"]  # no stream request was made at all


# ----------------------------------------------------------------------------------- key fragments


def _runs(text: str, key: str, size: int = 8) -> list[str]:
    return [key[i : i + size] for i in range(len(key) - size + 1) if key[i : i + size] in text]


@pytest.mark.parametrize("variant", KEY_ECHO_VARIANTS)
@pytest.mark.parametrize(
    ("mode", "step"), [("alquimia", "infer"), ("alquimia", "stream"), ("llm", "completion")]
)
@pytest.mark.parametrize("status", [401, 400, 200])
def test_no_run_of_the_key_comes_back(
    hostile: HostileBackend, leak_scan: LeakScan, mode: str, step: str, status: int, variant: str
) -> None:
    hostile.set("key_echo", step=step, status=status, variant=variant)
    outcome = invoke(api_event("POST", "/run", _request(hostile, mode, sessions=2, max_attempts=1)))
    assert outcome.status == 200
    assert any(r.authorization == f"Bearer {KEY}" for r in hostile.requests)  # the echo did happen
    body = json.dumps(outcome.raw)
    assert _runs(body, KEY) == [], body[:600]
    assert _runs(leak_scan.text(), KEY) == []


def test_a_key_cut_by_the_error_limit_and_then_suffixed_is_masked(hostile: HostileBackend) -> None:
    # The key straddles the 300-byte cut of the error text; the engine then adds its own suffix.
    hostile.set("key_echo", step="infer", status=503, variant="cut")
    request = _request(hostile, "alquimia", max_attempts=2)
    from handler.app import lambda_handler

    result = lambda_handler(request, FakeLambdaContext(60))
    assert _runs(json.dumps(result), KEY) == []
