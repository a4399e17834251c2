"""The sequential Fair-Forge baseline, run in its OWN virtualenv by `bench.py`; never imports fair_runners.

Alquimia mode uses the real `fair_forge.runners.AlquimiaRunner` from the `alquimia-fair-forge` package (one
`run_dataset` after another, a new client per turn, as the Fair-Forge runners Lambda does). LLM mode: the
package has no LLM runner, so this is the Fair-Forge runners Lambda's loop: one chat model, `ainvoke` per
turn, one turn after another, no history. `--fallback`: the same Alquimia loop with plain httpx (no
package). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from _workload import API_KEY, MODEL  # bench/ (stdlib only: this runs in the baseline's virtualenv)
from _workload import datasets as workload


def _datasets(sessions: int, turns: int) -> list[dict[str, Any]]:
    """The workload's datasets (`_workload.datasets`) with the fields Fair-Forge's schema wants."""
    found = workload(sessions, turns)
    for dataset in found:
        for batch in dataset["conversation"]:
            batch.update(assistant="", ground_truth_assistant="")
    return found


async def _alquimia(url: str, datasets: list[dict[str, Any]]) -> tuple[int, int]:
    # The package logs every batch (loguru, DEBUG, stderr): left as it is; bench.py discards stderr.
    from fair_forge.runners import AlquimiaRunner
    from fair_forge.schemas.common import Dataset

    runner = AlquimiaRunner(base_url=url, api_key=API_KEY, agent_id="bench", channel_id="chat")
    ok = failed = 0
    for raw in datasets:
        _, summary = await runner.run_dataset(Dataset.model_validate(raw))
        ok += summary["successes"]
        failed += summary["failures"]
    return ok, failed


async def _alquimia_fallback(url: str, datasets: list[dict[str, Any]]) -> tuple[int, int]:
    import httpx

    ok = failed = 0
    for dataset in datasets:
        for batch in dataset["conversation"]:
            async with httpx.AsyncClient(headers={"Authorization": f"Bearer {API_KEY}"}) as client:
                reply = await client.post(
                    f"{url}/event/infer/chat/bench",
                    params={"chat_history": 50, "agentspace": "_default"},
                    json={
                        "query": batch["query"],
                        "session_id": dataset["session_id"],
                        "extra_data": {},
                        "attachments": [],
                    },
                )
                stream_id = reply.json().get("stream_id")
                content = ""
                async with client.stream(
                    "GET",
                    f"{url}/event/stream/{stream_id}",
                    params={"response_only": "true"},
                    headers={"Accept": "text/event-stream"},
                ) as response:
                    async for line in response.aiter_lines():
                        if line.startswith("data:"):
                            content = json.loads(line[5:])["response"]["data"]["content"]
            if content:
                ok += 1
            else:
                failed += 1
    return ok, failed


async def _llm(url: str, datasets: list[dict[str, Any]]) -> tuple[int, int]:
    from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage
    from langchain_groq import ChatGroq

    model = ChatGroq(model=MODEL, api_key=API_KEY, base_url=url)  # type: ignore[call-arg]
    ok = failed = 0
    for dataset in datasets:
        for batch in dataset["conversation"]:
            messages: list[BaseMessage] = []
            if dataset["context"]:
                messages.append(SystemMessage(content=dataset["context"]))
            messages.append(HumanMessage(content=batch["query"]))
            try:
                reply = await model.ainvoke(messages)
                ok += bool(reply.content)
            except Exception:
                failed += 1
    return ok, failed


def main() -> None:
    """Run one baseline workload and print its wall time."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["alquimia", "llm"], required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--sessions", type=int, required=True)
    parser.add_argument("--turns", type=int, required=True)
    parser.add_argument("--fallback", action="store_true")
    args = parser.parse_args()
    if args.mode == "llm":
        run = _llm
    elif args.fallback:
        run = _alquimia_fallback
    else:
        run = _alquimia
    # Warm up as bench/_measure.py does (first-call imports), with a session id the timed run does not use.
    warmup = _datasets(1, 1)
    warmup[0]["session_id"] = "warmup"
    asyncio.run(run(args.url, warmup))
    started = time.perf_counter()
    ok, failed = asyncio.run(run(args.url, _datasets(args.sessions, args.turns)))
    wall = time.perf_counter() - started
    print(
        json.dumps({"mode": args.mode, "wall_s": round(wall, 4), "successes": ok, "failures": failed}),
        flush=True,
    )


if __name__ == "__main__":
    main()
