"""The embedded default: run the sample events through the real Lambda handler against local backends.

Starts the bundled Alquimia-protocol agent and OpenAI-compatible endpoint on 127.0.0.1 (no cloud account,
no API key), sends every event file through `handler.app.lambda_handler` as Lambda would, and prints each
session's summary. Run: `python -m fair_runners.demo [--events DIR] [--latency-ms 40]`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from .testing import AlquimiaAgent, LoopbackServer, OpenAICompatServer

AGENT_PLACEHOLDER = "127.0.0.1:8765"
LLM_PLACEHOLDER = "127.0.0.1:8766"


class FakeContext:
    """A Lambda context with a real deadline."""

    def __init__(self, timeout_s: float, name: str = "fair-runners-local") -> None:
        self._end = time.monotonic() + timeout_s
        self.function_name = name
        self.memory_limit_in_mb = 1024
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{name}"
        self.aws_request_id = f"local-{int(time.time() * 1000)}"

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the (simulated) Lambda timeout."""
        return max(0, int((self._end - time.monotonic()) * 1000))


def retarget(event: Any, agent_url: str, llm_url: str) -> Any:
    """Point an event's placeholder backend addresses at the running local servers."""
    text = json.dumps(event)
    text = text.replace(f"http://{AGENT_PLACEHOLDER}", agent_url).replace(
        f"http://{LLM_PLACEHOLDER}", llm_url
    )
    result = json.loads(text)
    body = result.get("body") if isinstance(result, dict) else None
    if isinstance(body, str) and result.get("isBase64Encoded"):
        import base64

        decoded = base64.b64decode(body).decode()
        decoded = decoded.replace(f"http://{AGENT_PLACEHOLDER}", agent_url)
        decoded = decoded.replace(f"http://{LLM_PLACEHOLDER}", llm_url)
        result["body"] = base64.b64encode(decoded.encode()).decode()
    return result


def _response_object(response: Any) -> dict[str, Any]:
    if isinstance(response, dict) and "statusCode" in response:
        body = json.loads(response["body"])
        body["_status"] = response["statusCode"]
        return body  # type: ignore[no-any-return]
    return response  # type: ignore[no-any-return]


def default_events_dir() -> Path:
    """`events/` of the source tree (the demo's default)."""
    return Path(__file__).resolve().parent.parent / "events"


def main(argv: list[str] | None = None) -> int:
    """Run the demo; exit 0 when every turn of every event was answered."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=Path, default=default_events_dir())
    parser.add_argument("--latency-ms", type=float, default=40.0, help="simulated backend latency per turn")
    args = parser.parse_args(argv)
    files = sorted(args.events.glob("*.json"))
    if not files:
        return 2
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    agent = AlquimiaAgent(latency_s=args.latency_ms / 1000)
    llm = OpenAICompatServer(latency_s=args.latency_ms / 1000)
    with LoopbackServer(agent.app) as agent_server, LoopbackServer(llm.app) as llm_server:
        hosts = f"{agent_server.host}:{agent_server.port},{llm_server.host}:{llm_server.port}"
        os.environ["FAIR_RUNNERS_ALLOWED_HOSTS"] = hosts
        from handler.app import lambda_handler

        failed = 0
        for path in files:
            event = retarget(json.loads(path.read_text()), agent_server.url, llm_server.url)
            started = time.perf_counter()
            result = _response_object(lambda_handler(event, FakeContext(60)))
            (time.perf_counter() - started) * 1000
            if not result.get("success", False):
                failed += 1
                continue
            for s in result["summaries"]:
                failed += s["failures"] + s["skipped"]
            result["datasets"][0]["conversation"][0]
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
