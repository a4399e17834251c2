"""`ThreadedInvoker`: real concurrency for ChatBedrockConverse (no native async), measured in the Bedrock
emulator, against the default executor that plain `ainvoke` uses."""

from __future__ import annotations

import asyncio
import contextvars
import math
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage, HumanMessage

from fair_runners.runners._threaded import ThreadedInvoker, bedrock_client_config, has_native_async
from fair_runners.testing import Fault
from fair_runners.testing.bedrock import BedrockEmulator

from .providers_support import (
    Served,
    _bedrock_server,
    _provider_env,
    azure_model,
    bedrock_model,
    claude_model,
    fresh,
)

__all__ = ["_bedrock_server", "_provider_env"]  # fixtures from providers_support

CALLS = 32
LATENCY_S = 0.5
THREAD_PREFIX = "fair-runners-model"


@pytest.fixture
def bedrock(_bedrock_server: Served[BedrockEmulator]) -> Iterator[Served[BedrockEmulator]]:
    yield from fresh(_bedrock_server)


def questions() -> list[list[BaseMessage]]:
    return [[HumanMessage(content=f"question {i}")] for i in range(CALLS)]


def test_32_calls_are_in_flight_at_once_through_the_invoker(bedrock: Served[BedrockEmulator]) -> None:
    model = bedrock_model(
        endpoint_url=bedrock.url, config=bedrock_client_config(5.0, 2.0, CALLS), max_retries=None
    )
    invoker = ThreadedInvoker(max_workers=CALLS)

    async def batch() -> tuple[list[BaseMessage], float]:
        started = time.perf_counter()
        replies = await asyncio.gather(*(invoker.ainvoke(model, q) for q in questions()))
        return list(replies), time.perf_counter() - started

    timings: list[float] = []
    peaks: list[int] = []
    try:
        asyncio.run(batch())  # warm up: 32 threads, 32 pooled connections, botocore's first-call loading
        # Best of up to five: the machine is shared, and ~3 ms of CPU a call (botocore signs, serialises and
        # parses; LangChain wraps) is serialised by the GIL, so other load shows up directly in the batch.
        for _ in range(5):
            bedrock.emulator.reset()
            bedrock.emulator.latency_s = LATENCY_S
            replies, elapsed = asyncio.run(batch())
            expected = [f"echo: question {i} (history=0, system=no)" for i in range(CALLS)]
            assert [r.content for r in replies] == expected
            peaks.append(bedrock.emulator.peak_in_flight)
            timings.append(elapsed)
            if peaks[-1] == CALLS and elapsed < 1.3 * LATENCY_S:
                break
    finally:
        invoker.close()
    batches = ", ".join(f"{t:.3f}" for t in timings)
    print(f"\nThreadedInvoker(32): peaks in flight {peaks}, batches {batches} s")
    # Under other load the 32 starts can spread past the first replies; one clean batch shows the invoker
    # itself holds no call back (the default executor's cap is min(32, cpus + 4), 6 here).
    assert max(peaks) == CALLS, f"never all {CALLS} in flight at once: peaks {peaks}"
    assert min(timings) < 1.3 * LATENCY_S, f"32 calls of {LATENCY_S} s took {timings} s"


def test_plain_ainvoke_is_capped_by_the_default_executor(bedrock: Served[BedrockEmulator]) -> None:
    model = bedrock_model(
        endpoint_url=bedrock.url, config=bedrock_client_config(5.0, 2.0, CALLS), max_retries=None
    )
    assert not has_native_async(model)
    model.invoke("warm up")
    bedrock.emulator.reset()
    bedrock.emulator.latency_s = LATENCY_S

    async def batch() -> float:
        started = time.perf_counter()
        await asyncio.gather(*(model.ainvoke(q) for q in questions()))
        return time.perf_counter() - started

    elapsed = asyncio.run(batch())
    peak = bedrock.emulator.peak_in_flight
    default_workers = min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor's default size
    print(f"\nplain ainvoke (default executor): peak in flight {peak}, batch {elapsed:.3f} s")
    assert peak == default_workers < CALLS
    assert elapsed >= math.ceil(CALLS / peak) * LATENCY_S * 0.95  # one wave per `peak` calls


class ThreadNames(BaseCallbackHandler):
    """Records the thread, and a context variable's value, where each chat model call starts."""

    def __init__(self, var: contextvars.ContextVar[str]) -> None:
        self.var = var
        self.seen: list[tuple[str, str]] = []

    def on_chat_model_start(self, serialized: dict[str, Any], messages: Any, **kwargs: Any) -> None:
        self.seen.append((threading.current_thread().name, self.var.get("unset")))


def test_calls_run_on_the_invokers_threads_with_the_callers_context(bedrock: Served[BedrockEmulator]) -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("fair_runners_test_var")
    names = ThreadNames(var)
    model = bedrock_model(endpoint_url=bedrock.url, callbacks=[names])
    invoker = ThreadedInvoker(max_workers=2)

    async def run() -> str:
        var.set("from the caller")
        await invoker.ainvoke(model, [HumanMessage(content="hello")])
        loop = asyncio.get_running_loop()
        return (await loop.run_in_executor(None, threading.current_thread)).name

    try:
        default_thread = asyncio.run(run())
    finally:
        invoker.close()
    assert len(names.seen) == 1
    thread, value = names.seen[0]
    assert thread.startswith(THREAD_PREFIX) and value == "from the caller"
    assert not default_thread.startswith(THREAD_PREFIX)  # the loop's default executor is left alone


def test_a_cancelled_call_frees_its_thread_after_the_read_timeout(bedrock: Served[BedrockEmulator]) -> None:
    bedrock.emulator.add_fault(Fault(kind="hang"))
    model = bedrock_model(
        endpoint_url=bedrock.url, config=bedrock_client_config(0.5, 0.5, 1), max_retries=None
    )
    invoker = ThreadedInvoker(max_workers=1)

    async def cancel_it() -> float:
        task = asyncio.ensure_future(invoker.ainvoke(model, [HumanMessage(content="hang")]))
        await asyncio.sleep(0.2)
        started = time.perf_counter()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.perf_counter() - started

    waited = asyncio.run(cancel_it())
    invoker.close()
    assert waited < 0.1  # the caller stops waiting at once
    deadline = time.monotonic() + 3
    while (
        any(t.name.startswith(THREAD_PREFIX) for t in threading.enumerate()) and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert not [t.name for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]
    assert len(bedrock.emulator.requests) == 1


def test_close_refuses_new_calls_and_bad_arguments_are_refused(bedrock: Served[BedrockEmulator]) -> None:
    invoker = ThreadedInvoker(max_workers=1)
    invoker.close()
    invoker.close()  # idempotent
    model = bedrock_model(endpoint_url=bedrock.url)
    with pytest.raises(RuntimeError, match="after close"):
        asyncio.run(invoker.ainvoke(model, [HumanMessage(content="late")]))
    assert bedrock.emulator.requests == []
    with pytest.raises(ValueError, match="max_workers"):
        ThreadedInvoker(max_workers=0)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="read_timeout_s"):
            bedrock_client_config(bad, 1.0, 4)
    with pytest.raises(ValueError, match="max_pool_connections"):
        bedrock_client_config(1.0, 1.0, 0)


def test_bedrock_client_config_reaches_the_client(bedrock: Served[BedrockEmulator]) -> None:
    model = bedrock_model(
        endpoint_url=bedrock.url, config=bedrock_client_config(7.5, 1.5, 48), max_retries=None
    )
    config = model.client.meta.config
    assert (config.read_timeout, config.connect_timeout, config.max_pool_connections) == (7.5, 1.5, 48)
    assert config.retries == {"total_max_attempts": 1, "mode": "standard"}
    # Setting max_retries as well makes ChatBedrockConverse merge a config of its own that drops the timeouts.
    clobbered = bedrock_model(
        endpoint_url=bedrock.url, config=bedrock_client_config(7.5, 1.5, 48), max_retries=0
    )
    assert clobbered.client.meta.config.read_timeout is None


def test_has_native_async() -> None:
    assert not has_native_async(bedrock_model(endpoint_url="http://127.0.0.1:9"))
    assert has_native_async(claude_model("http://127.0.0.1:9"))
    assert has_native_async(azure_model("http://127.0.0.1:9"))
