"""Bodies of the hostile backend: where an answer sits in each protocol step, key echoes, odd SSE events,
and a response that stops mid-body."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterable, Mapping
from typing import Literal

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

Step = Literal["infer", "stream", "completion"]
KeyEchoVariant = Literal["prefix", "middle", "urlencoded", "json_escaped", "base64", "cut", "all"]
KEY_ECHO_VARIANTS: tuple[KeyEchoVariant, ...] = (
    "prefix",
    "middle",
    "urlencoded",
    "json_escaped",
    "base64",
    "cut",
    "all",
)

_COMPLETION_HEAD = (
    '{"id": "chatcmpl-hostile", "object": "chat.completion", "created": 0, "model": "hostile", '
    '"choices": [{"index": 0, "message": {"role": "assistant", "content": "'
)
_COMPLETION_TAIL = (
    '"}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}'
)


def json_text(text: str) -> str:
    """`text` as the inside of a JSON string (escaped, without the quotes)."""
    return json.dumps(text)[1:-1]


def answer_shape(step: Step, stream_id: str) -> tuple[bytes, bytes]:
    """What goes before and after the (JSON-escaped) answer text in a successful reply of `step`.

    infer: `{"stream_id": ..., "status": "queued", "detail": "<text>"}`; stream: one SSE event
    `data: {"response": {"data": {"content": "<text>"}}, "is_complete": false}`; completion: an OpenAI
    chat completion whose message content is the text.
    """
    if step == "infer":
        head = f'{{"stream_id": "{json_text(stream_id)}", "status": "queued", "detail": "'
        return head.encode(), b'"}'
    if step == "stream":
        return b'data: {"response": {"data": {"content": "', b'"}}, "is_complete": false}\n\n'
    return _COMPLETION_HEAD.encode(), _COMPLETION_TAIL.encode()


def error_shape(step: Step) -> tuple[bytes, bytes]:
    """Before and after the message of an error reply: `{"detail": ...}` (Alquimia), OpenAI's `error`."""
    if step == "completion":
        return b'{"error": {"message": "', b'", "type": "invalid_request_error", "code": "invalid_api_key"}}'
    return b'{"detail": "', b'"}'


def answer_body(step: Step, stream_id: str, text: str) -> bytes:
    """A well-formed reply of `step` answering `text`."""
    head, tail = answer_shape(step, stream_id)
    return head + json_text(text).encode() + tail


def credential(authorization: str | None) -> str:
    """The key in an Authorization header (`Bearer <key>` -> `<key>`)."""
    scheme, _, key = (authorization or "").partition(" ")
    return key if key else scheme


def key_echo(key: str, variant: KeyEchoVariant, head: bytes, cut_at: int) -> str:
    """A message (already JSON-escaped) that leaks `key` the way `variant` says; `head` is what precedes
    the message in the body, so that for `cut` the key straddles byte `cut_at` of the body."""
    middle = len(key) // 2
    messages: dict[KeyEchoVariant, str] = {
        "prefix": json_text(f"Invalid credentials {key[:16]}..."),
        "middle": json_text(f"Credential check failed near ...{key[max(0, middle - 8) : middle + 8]}..."),
        "urlencoded": json_text("Rejected: api_key=" + "".join(f"%{b:02X}" for b in key.encode())),
        "json_escaped": json_text("Invalid key ") + "".join(f"\\u{ord(c):04x}" for c in key),
        "base64": json_text(f"Invalid token {base64.b64encode(key.encode()).decode()}"),
    }
    if variant == "all":
        return " | ".join(messages.values())
    if variant != "cut":
        return messages[variant]
    lead = "Invalid credentials "
    pad = cut_at - middle - len(head) - len(lead)
    if len(key) < 2 or pad < 0:
        raise ValueError(
            f"key_echo variant 'cut': cut_at={cut_at} is too small for a {len(key)}-character key after a "
            f"{len(head)}-byte body head; give cut_at >= {len(head) + len(lead) + middle} (and a key of 2+)"
        )
    return json_text(lead + "." * pad + key + " was rejected")


_DEEP = 200_000


def odd_events(event: bytes) -> list[bytes]:
    """`event` (a valid answer), then: a `retry:` of 5,000 digits, a 200,000-deep nested JSON array as
    data, a `retry:` that is not a number, and an `id:` holding a NUL (on `event` again)."""
    return [
        event,
        b"retry: " + b"9" * 5000 + b"\n\n",
        b"data: " + b"[" * _DEEP + b"]" * _DEEP + b"\n\n",
        b"retry: 12abc\n\n",
        b"id: a\x00b\n" + event,
    ]


class CutResponse(StreamingResponse):
    """Sends status, headers and `content`, then returns without ending the body: the server (uvicorn)
    closes the connection. With a Content-Length header the body falls short of it; without one (chunked)
    the final 0-chunk never comes."""

    def __init__(
        self,
        content: AsyncIterable[bytes],
        headers: Mapping[str, str],
        media_type: str,
        status_code: int = 200,
    ) -> None:
        super().__init__(content, status_code, headers, media_type)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for part in self.body_iterator:
            await send({"type": "http.response.body", "body": part, "more_body": True})
