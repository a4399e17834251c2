"""`fair-runners invoke`: one event through the Lambda entry point (`fair_runners.edge.lambda_app`) as Lambda
would run it.

The no-Docker `sam local invoke`: a context whose deadline is real (`get_remaining_time_in_millis` counts
down from `--timeout`), the handler's logs on stderr and its response JSON on stdout; an exception becomes
Lambda's `{"errorType", "errorMessage"}` object, and a handler still running at the timeout is abandoned
with Lambda's "Task timed out" error.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_FUNCTION_NAME = "fair-runners"
Handler = Callable[[Any, Any], Any]


@dataclass
class LambdaContext:
    """The attributes and methods of the Python Lambda context object, with a real countdown."""

    timeout_s: float = 900.0
    function_name: str = DEFAULT_FUNCTION_NAME
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 1024
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    region: str = "us-east-1"
    log_group_name: str = ""
    log_stream_name: str = ""
    invoked_function_arn: str = ""
    identity: Any = None
    client_context: Any = None
    _started: float = field(default_factory=time.monotonic, repr=False)

    def __post_init__(self) -> None:
        self.log_group_name = self.log_group_name or f"/aws/lambda/{self.function_name}"
        self.log_stream_name = self.log_stream_name or f"{time.strftime('%Y/%m/%d')}/[$LATEST]local"
        self.invoked_function_arn = (
            self.invoked_function_arn
            or f"arn:aws:lambda:{self.region}:123456789012:function:{self.function_name}"
        )

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the function's timeout."""
        return max(0, int((self._started + self.timeout_s - time.monotonic()) * 1000))


@dataclass
class Invocation:
    """How one invocation ended: `response`, or Lambda's error object in `error`."""

    response: Any = None
    error: dict[str, Any] | None = None
    duration_ms: float = 0.0


def load_handler() -> Handler:
    """The runner function's `lambda_handler` (what `handler/app.py` names), its import-time log handlers
    bound to stderr (stdout is for results)."""
    with contextlib.redirect_stdout(sys.stderr):
        from ..edge.lambda_app import lambda_handler
    return lambda_handler


def invoke(handler: Handler, event: Any, context: LambdaContext, grace_s: float = 0.0) -> Invocation:
    """Call `handler(event, context)` on a worker thread, giving up at the context's timeout (+ grace)."""
    outcome = Invocation()
    started = time.perf_counter()

    def target() -> None:
        try:
            outcome.response = handler(event, context)
        except Exception as exc:
            outcome.error = {
                "errorMessage": str(exc),
                "errorType": type(exc).__name__,
                "requestId": context.aws_request_id,
                "stackTrace": traceback.format_tb(exc.__traceback__)[-5:],
            }

    # The handler prints (metrics, logs) to stdout as Lambda's runtime would capture them: send them to
    # stderr so stdout carries only the response.
    with contextlib.redirect_stdout(sys.stderr):
        worker = threading.Thread(target=target, name=f"lambda-{context.aws_request_id}", daemon=True)
        worker.start()
        worker.join(max(0.0, context.get_remaining_time_in_millis() / 1000) + grace_s)
    outcome.duration_ms = (time.perf_counter() - started) * 1000
    if worker.is_alive():
        outcome.response = None
        outcome.error = {
            "errorMessage": f"Task timed out after {context.timeout_s:.2f} seconds",
            "errorType": "Sandbox.Timedout",
            "requestId": context.aws_request_id,
        }
    return outcome


def report_line(context: LambdaContext, outcome: Invocation) -> str:
    """Lambda's REPORT log line."""
    return (
        f"REPORT RequestId: {context.aws_request_id}\tDuration: {outcome.duration_ms:.2f} ms\t"
        f"Memory Size: {context.memory_limit_in_mb} MB"
    )


def dumps(value: Any) -> str:
    """JSON for the terminal."""
    return json.dumps(value, indent=2, ensure_ascii=False)
