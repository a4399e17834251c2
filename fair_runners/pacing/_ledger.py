"""The shared budget's DynamoDB item: its key (`bucket_id`) and its format.

Table: partition key `bucket` (S), on-demand, TTL attribute `expires_at` (epoch seconds). One item per budget:

    {"bucket": "rl1-<hmac>", "version": 7, "expires_at": 1700003600,
     "holders": {"<holder id>": {"rpm": 150.0, "tpm": 7500.0, "until": 1700000005.2}, ...}}
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

KEY_ATTRIBUTE = "bucket"
TTL_ATTRIBUTE = "expires_at"

Holders = dict[str, tuple[float, float, float]]  # holder -> (requests/min, tokens/min, until epoch)


def bucket_id(origin: str, connector: str, model: str | None, key: str | None) -> str:
    """The budget's id: HMAC-SHA256 keyed by the API key over origin, connector class and model.

    The key itself never leaves the process; without it the id cannot be recomputed. `origin` is
    `scheme://host[:port]` (case and a trailing slash do not matter).
    """
    message = json.dumps([origin.strip().rstrip("/").lower(), connector, model or ""], separators=(",", ":"))
    secret = key.encode() if key else b"fair-runners:no-key"
    return "rl1-" + hmac.new(secret, message.encode(), hashlib.sha256).hexdigest()


def decode(item: dict[str, Any] | None) -> tuple[int, Holders]:
    """(version, holders) of an item as DynamoDB returns it; (0, {}) for none."""
    if not item:
        return 0, {}
    try:
        holders: Holders = {}
        for holder, entry in item.get("holders", {}).get("M", {}).items():
            fields = entry["M"]
            holders[holder] = (
                float(fields["rpm"]["N"]),
                float(fields["tpm"]["N"]),
                float(fields["until"]["N"]),
            )
    except (KeyError, TypeError, ValueError, AttributeError):  # a damaged map: start it again
        holders = {}
    try:
        return int(item["version"]["N"]), holders
    except (KeyError, TypeError, ValueError):
        return 0, holders


def encode(bucket: str, version: int, holders: Holders, expires: float) -> Any:
    """The item to write."""
    entries = {
        holder: {"M": {"rpm": _number(rpm), "tpm": _number(tpm), "until": _number(until)}}
        for holder, (rpm, tpm, until) in holders.items()
    }
    return {
        KEY_ATTRIBUTE: {"S": bucket},
        "version": {"N": str(version)},
        TTL_ATTRIBUTE: {"N": str(int(expires))},
        "holders": {"M": entries},
    }


def _number(value: float) -> dict[str, str]:
    return {"N": f"{value:.6f}"}
