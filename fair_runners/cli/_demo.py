"""`fair-runners demo`: the embedded default, no cloud account and no API key.

Starts the bundled Alquimia-protocol agent and OpenAI-compatible endpoint on 127.0.0.1, sends every sample
event (one per trigger, both modes) through the real `lambda_handler` as Lambda would, and prints each
session's summary. The sample events ship inside the package (`fair_runners/cli/demo_events/`, copies of
the repository's `events/`), so the demo works after a plain install; `--events DIR` runs other files.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import os
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from .._schemas import SessionSummary
from ._display import summary_table
from ._inputs import allow_hosts
from ._invoke import LambdaContext, invoke, load_handler

AGENT_PLACEHOLDER = "127.0.0.1:8765"
LLM_PLACEHOLDER = "127.0.0.1:8766"
AZURE_PLACEHOLDER = "127.0.0.1:8767"
# The package each provider's sample event needs (its extra), and the event files that use it.
_EXTRAS = {"direct_bedrock.json": "langchain_aws", "direct_anthropic.json": "langchain_anthropic"}


def bundled_events() -> list[tuple[str, str]]:
    """(name, text) of the sample events shipped in the package."""
    folder = resources.files("fair_runners.cli") / "demo_events"
    return sorted(
        (entry.name, entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".json")
    )


def events_from(directory: Path) -> list[tuple[str, str]]:
    """(name, text) of every `*.json` in `directory`."""
    return [(p.name, p.read_text(encoding="utf-8")) for p in sorted(directory.glob("*.json"))]


def _swap(text: str, agent_url: str, llm_url: str, azure_url: str | None) -> str:
    text = text.replace(f"http://{AGENT_PLACEHOLDER}", agent_url).replace(
        f"http://{LLM_PLACEHOLDER}", llm_url
    )
    return text.replace(f"http://{AZURE_PLACEHOLDER}", azure_url) if azure_url else text


def retarget(event: Any, agent_url: str, llm_url: str, azure_url: str | None = None) -> Any:
    """Point an event's placeholder backend addresses (also inside base64 bodies) at running servers."""
    result = json.loads(_swap(json.dumps(event), agent_url, llm_url, azure_url))
    body = result.get("body") if isinstance(result, dict) else None
    if isinstance(body, str) and result.get("isBase64Encoded"):
        decoded = _swap(base64.b64decode(body).decode(), agent_url, llm_url, azure_url)
        result["body"] = base64.b64encode(decoded.encode()).decode()
    return result


@contextlib.contextmanager
def provider_emulators(latency_s: float) -> Iterator[str]:
    """The Bedrock, Anthropic and Azure OpenAI emulators, with the deployer env that points the first two
    at them (and dummy AWS credentials the Bedrock emulator does not check); yields the Azure endpoint."""
    from ..testing import AnthropicEmulator, AzureOpenAIEmulator, BedrockEmulator, LoopbackServer

    bedrock = BedrockEmulator(latency_s=latency_s)
    anthropic = AnthropicEmulator(latency_s=latency_s, api_key=None)
    azure = AzureOpenAIEmulator(latency_s=latency_s, api_key=None)
    with (
        LoopbackServer(bedrock.app) as bedrock_server,
        LoopbackServer(anthropic.app) as anthropic_server,
        LoopbackServer(azure.app) as azure_server,
    ):
        env = {
            "AWS_ENDPOINT_URL_BEDROCK_RUNTIME": bedrock_server.url,
            "AWS_ACCESS_KEY_ID": "demo-access-key",
            "AWS_SECRET_ACCESS_KEY": "demo-secret-key-Pq80Jv3Xn6",
            "AWS_REGION": os.environ.get("AWS_REGION", "us-east-1"),
            "ANTHROPIC_BASE_URL": anthropic_server.url,
        }
        saved = {name: os.environ.get(name) for name in env}
        os.environ.update(env)
        allow_hosts([f"{azure_server.host}:{azure_server.port}"])
        try:
            yield azure_server.url
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def response_object(response: Any) -> tuple[int | None, Any]:
    """(HTTP status or None, the response object) of a handler's return value."""
    if isinstance(response, dict) and "statusCode" in response:
        body = response.get("body") or ""
        if response.get("isBase64Encoded"):
            body = base64.b64decode(body).decode()
        return int(response["statusCode"]), json.loads(body)
    return None, response


def run_demo(events: list[tuple[str, str]], latency_ms: float, console: Console) -> int:
    """Run each event through the handler against the local servers; 0 when every turn was answered."""
    from ..testing import AlquimiaAgent, LoopbackServer, OpenAICompatServer

    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    agent = AlquimiaAgent(latency_s=latency_ms / 1000)
    llm = OpenAICompatServer(latency_s=latency_ms / 1000)
    problems = 0
    with (
        LoopbackServer(agent.app) as agent_server,
        LoopbackServer(llm.app) as llm_server,
        provider_emulators(latency_ms / 1000) as azure_url,
    ):
        allow_hosts([f"{s.host}:{s.port}" for s in (agent_server, llm_server)])
        console.print(
            f"local Alquimia agent on {agent_server.url}, OpenAI-compatible endpoint on {llm_server.url}; "
            "Bedrock, Anthropic and Azure OpenAI emulators"
        )
        handler = load_handler()
        for name, text in events:
            needs = _EXTRAS.get(name)
            if needs is not None and importlib.util.find_spec(needs) is None:
                console.print(
                    f"== {escape(name)}: skipped ({needs} is not installed: pip install its extra)\n"
                )
                continue
            event = retarget(json.loads(text), agent_server.url, llm_server.url, azure_url)
            outcome = invoke(handler, event, LambdaContext(timeout_s=60, function_name="fair-runners-demo"))
            status, result = response_object(outcome.response)
            if outcome.error is not None or not isinstance(result, dict) or not result.get("success"):
                problems += 1
                error = outcome.error or (result if isinstance(result, dict) else {"error": result})
                console.print(f"[red]== {escape(name)}: failed[/] {escape(json.dumps(error)[:300])}")
                continue
            summaries = [SessionSummary.model_validate(s) for s in result["summaries"]]
            problems += sum(s.failures + s.skipped for s in summaries)
            http = f", HTTP {status}" if status is not None else ""
            title = f"== {escape(name)}  ({result.get('mode')} mode{http}, {outcome.duration_ms:,.0f} ms)"
            console.print(summary_table(summaries, title))
            first = result["datasets"][0]["conversation"][0]
            console.print(f"   first answer: {escape(repr(first.get('assistant')))}\n")
    verdict = "every turn answered" if problems == 0 else f"{problems} problems"
    console.print(f"{len(events)} events through lambda_handler: {verdict}")
    return 0 if problems == 0 else 1
