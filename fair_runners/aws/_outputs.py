"""Make a result fit its channel: answer inline when it fits, else write it to S3 and answer summaries.

| channel  | limit            | why                                                             |
|----------|------------------|-----------------------------------------------------------------|
| `http`   | 6 MiB            | Lambda's synchronous response (API Gateway, Function URL)       |
| `invoke` | 6 MiB            | Lambda's synchronous response (`aws lambda invoke`, SDK)        |
| `state`  | 256 KiB          | a Step Functions state (a Distributed Map batch's output)       |

When idempotency is on, the answer is also stored in DynamoDB (400 KB items), so the limit becomes 350 KB.

A spilled answer has the same keys as the full one except `datasets`, plus `result_uri` (the full result)
and a warning. If even that is too big, the per-turn records are dropped from `summaries` (they are in the
file), then the summaries themselves. With nowhere to write (no `output_uri`, no env `RESULTS_BUCKET`),
`check_fits` refuses a request whose *input* already exceeds the limit before any backend call.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from enum import Enum
from typing import Any

from .._errors import PayloadTooLarge
from .._schemas import RunRequest
from .._text import cap_warnings
from ._s3 import S3Location, dumps
from ._settings import AwsSettings

MIB = 1024 * 1024
KIB = 1024
IDEMPOTENCY_ITEM_LIMIT = 350 * KIB

# Bytes a turn and a session add to the result beyond the input (summary record, answer markers).
_TURN_OVERHEAD = 220
_SESSION_OVERHEAD = 600


class Channel(Enum):
    """Where an answer travels, and how much it may carry."""

    HTTP = ("http", 6 * MIB)
    INVOKE = ("invoke", 6 * MIB)
    STATE = ("state", 256 * KIB)

    def __init__(self, label: str, limit: int) -> None:
        self.label = label
        self.limit = limit

    def describe(self) -> str:
        """Human name of the limit."""
        return {
            "http": "6 MB Lambda/API Gateway response limit",
            "invoke": "6 MB Lambda response limit",
            "state": "256 KB Step Functions state limit",
        }[self.label]


def encoded_size(body: Any, channel: Channel) -> int:
    """Bytes the answer takes on its channel (HTTP bodies are a JSON string inside the envelope)."""
    data = dumps(body)
    if channel is Channel.HTTP:
        # The body travels as a JSON string: quotes and backslashes are escaped once more.
        return len(json.dumps(data.decode("utf-8"), ensure_ascii=False).encode("utf-8")) + 256
    return len(data)


def limit_for(channel: Channel, *, idempotent: bool) -> int:
    """The byte budget of an answer on this channel."""
    return min(channel.limit, IDEMPOTENCY_ITEM_LIMIT) if idempotent else channel.limit


def destination(
    request: RunRequest, settings: AwsSettings, run_id: str, part: str = "result"
) -> S3Location | None:
    """Where this request's full result goes when it must spill: `output_uri`, else the results bucket."""
    if request.output_uri:
        base = S3Location.parse(request.output_uri, "output_uri", prefix=True)
        settings.check_bucket(base.bucket, "output_uri")
    elif settings.results_bucket:
        base = S3Location(settings.results_bucket, "results/")
    else:
        return None
    return base.child(f"{run_id}/{part}.json")


def estimate_result_bytes(request: RunRequest) -> int:
    """A lower bound of the result's size: the datasets come back, plus a record per turn and session."""
    datasets = dumps([d.model_dump(mode="json") for d in request.datasets])
    turns = sum(len(d.conversation) for d in request.datasets)
    return len(datasets) + turns * _TURN_OVERHEAD + len(request.datasets) * _SESSION_OVERHEAD


def check_fits(request: RunRequest, channel: Channel, *, can_spill: bool, idempotent: bool = False) -> None:
    """Refuse, before any backend call, a request whose result cannot fit and cannot be written to S3."""
    if can_spill:
        return
    limit = limit_for(channel, idempotent=idempotent)
    estimate = estimate_result_bytes(request)
    if estimate > limit:
        raise PayloadTooLarge(
            f"the result would be at least {estimate} bytes, over the {channel.describe()} "
            f"({limit} bytes here), and there is nowhere to write it",
            [
                {
                    "loc": "output_uri",
                    "msg": "give output_uri (s3://bucket/prefix/) or deploy with env RESULTS_BUCKET; "
                    "or send fewer datasets per request (POST /runs for large runs)",
                }
            ],
        )


def fit(
    body: dict[str, Any],
    channel: Channel,
    *,
    target: S3Location | None,
    write: Callable[[S3Location, bytes], object],
    idempotent: bool = False,
    always_write: bool = False,
) -> dict[str, Any]:
    """The answer for `channel`: the full result (`body`, a dumped `RunResult`), or summaries plus
    `result_uri` after writing it.

    `always_write` (a request that named `output_uri`) writes the full result to `target` whether or not it
    fits, and the answer carries `result_uri` next to the datasets when they fit. A failed write fails the
    request (the storage error propagates).
    """
    limit = limit_for(channel, idempotent=idempotent)
    written = False
    if always_write and target is not None:
        write(target, dumps(body))
        written = True
        body = {**body, "result_uri": target.uri}
    if encoded_size(body, channel) <= limit:
        return body
    compact = {k: v for k, v in body.items() if k != "datasets"}
    warnings = cap_warnings(list(compact.get("warnings", [])))
    if target is None:
        warnings.append(
            f"the datasets were left out: the result is over the {channel.describe()} and there is "
            "nowhere to write it (give output_uri or deploy with RESULTS_BUCKET)"
        )
        compact["result_uri"] = None
    else:
        if not written:
            write(target, dumps(body))
        warnings.append(
            f"the full result (with datasets) is at result_uri: it is over the {channel.describe()}"
        )
        compact["result_uri"] = target.uri
    compact["warnings"] = warnings
    if encoded_size(compact, channel) > limit:
        compact["summaries"] = [{**s, "turns": []} for s in compact["summaries"]]
        compact["warnings"].append("per-turn records were left out of summaries (see the result file)")
    if encoded_size(compact, channel) > limit:
        compact["summaries"] = []
        compact["warnings"].append("summaries were left out (see the result file); totals are complete")
    return compact
