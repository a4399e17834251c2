"""What goes back to the caller: the HTTP proxy response and the error body (always redacted)."""

from __future__ import annotations

import json
from typing import Any

from .._redact import current_redactor


def error_body(message: str, details: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    """`{"success": false, "error": ..., "details": [...]}` with every registered secret masked."""
    body: dict[str, Any] = {"success": False, "error": message}
    if details:
        body["details"] = details
    body.update(extra)
    redacted: dict[str, Any] = current_redactor().redact_obj(body)
    return redacted


def http_response(status: int, body: Any, request_id: str) -> dict[str, Any]:
    """An API Gateway / Function URL proxy response."""
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json", "X-Request-Id": request_id},
        "body": json.dumps(body, ensure_ascii=False, separators=(",", ":")),
        "isBase64Encoded": False,
    }
