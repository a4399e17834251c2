"""Real concurrency for chat models without native async (`langchain_aws.ChatBedrockConverse`).

Such a model's `ainvoke` runs the sync call in the event loop's default executor, `min(32, cpus + 4)`
threads (5 on a one-vCPU Lambda), shared with everything else using that executor, so no more than ~5 turns
are ever in flight. `ThreadedInvoker` runs the model's public `invoke` on a pool of its own, sized to the
run's concurrency, and never touches the loop's default executor.

A thread cannot be cancelled: a cancelled turn's call runs on until the HTTP client gives up. Bound every
call from below, with the client's read and connect timeouts (`bedrock_client_config`), so that a hung
backend frees its thread after `read_timeout_s` at most.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import BaseMessage

if TYPE_CHECKING:
    from botocore.config import Config


class ThreadedInvoker:
    """Runs `model.invoke(messages)` on a thread pool of `max_workers` threads owned by this object."""

    def __init__(self, max_workers: int) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        self.max_workers = max_workers
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="fair-runners-model")
        self._closed = False

    async def ainvoke(self, model: BaseChatModel, messages: Sequence[BaseMessage]) -> BaseMessage:
        """`model.invoke(messages)` on this invoker's pool, awaited without blocking the loop.

        The caller's context variables (LangChain's tracing and callback context) are copied into the
        thread, as LangChain's own executor does. Cancelling the awaiting task stops waiting at once; the
        call itself ends when its client's timeout does. Raises `RuntimeError` after `close`.
        """
        if self._closed:
            raise RuntimeError("ThreadedInvoker.ainvoke called after close()")
        loop = asyncio.get_running_loop()
        call = functools.partial(model.invoke, list(messages))
        context = contextvars.copy_context()
        return await loop.run_in_executor(self._pool, context.run, call)

    def close(self) -> None:
        """Shut the pool down without waiting: queued calls are cancelled, running ones end on their own
        (bounded by the client's timeouts). Idempotent."""
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)


def has_native_async(model: BaseChatModel) -> bool:
    """True when the model's class implements its own async generation (overrides `_agenerate`), so
    `ainvoke` awaits real async I/O; False when `ainvoke` would run the sync call in the loop's default
    executor. Reads the class attribute, calls nothing."""
    return type(model)._agenerate is not BaseChatModel._agenerate


def bedrock_client_config(
    read_timeout_s: float, connect_timeout_s: float, max_pool_connections: int
) -> Config:
    """A botocore `Config` for a Bedrock runtime client used from `ThreadedInvoker`: the given timeouts,
    `max_pool_connections` connections (at least the invoker's `max_workers`, else urllib3 discards and
    reopens connections), and one attempt per call: botocore does not retry (the engine's retry policy
    does), and the `standard` mode is pinned so an `AWS_RETRY_MODE=adaptive` env cannot add client-side
    throttling sleeps.

    Pass it as `ChatBedrockConverse(config=...)` and set neither `timeout` nor `max_retries` there: the
    model merges those into the config and drops its timeouts or its retry limit.
    """
    for name, value in (("read_timeout_s", read_timeout_s), ("connect_timeout_s", connect_timeout_s)):
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    if max_pool_connections < 1:
        raise ValueError(f"max_pool_connections must be at least 1, got {max_pool_connections}")
    from botocore.config import Config

    return Config(
        read_timeout=read_timeout_s,
        connect_timeout=connect_timeout_s,
        max_pool_connections=max_pool_connections,
        retries={"total_max_attempts": 1, "mode": "standard"},
    )
