"""An incremental server-sent-events decoder (the WHATWG parsing algorithm), fed with raw bytes.

Lines end at CRLF, LF or CR, even across chunk boundaries; `data` lines of one event are joined with newlines;
comments (`:`) and unknown fields are ignored; an event is dispatched at a blank line, and only when it has
data. Tested against httpx-sse as an oracle (tests/test_sse.py).

Linear in what it is fed: an unterminated line is kept as a list of pieces, joined once when it ends, and
bounded by `max_line` characters; an event's data by `max_event` (`SSELimitExceeded` past either). Odd
field values are ignored rather than trusted: a `retry` of more than 10 digits, an `id` holding NUL.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

_BREAK = re.compile(r"\r\n|\r|\n")
_MAX_RETRY_DIGITS = 10


class SSELimitExceeded(ValueError):
    """A line or an event is longer than the decoder's limit."""


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event."""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Feed bytes with `feed()`, get the events completed so far; `close()` at end of stream."""

    __slots__ = (
        "_data",
        "_data_len",
        "_event",
        "_last_id",
        "_max_event",
        "_max_line",
        "_open",
        "_pending",
        "_pending_len",
        "_retry",
        "_text",
        "_trailing_cr",
        "ended_mid_event",
    )

    def __init__(self, *, max_line: int | None = None, max_event: int | None = None) -> None:
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending: list[str] = []
        self._pending_len = 0
        self._trailing_cr = False
        self._data: list[str] = []
        self._data_len = 0
        self._event = ""
        self._last_id: str | None = None
        self._retry: int | None = None
        self._open = False  # a field line arrived since the last dispatch
        self._max_line = max_line
        self._max_event = max_event
        # Set by `close()`: the stream ended after bytes of an event it never completed.
        self.ended_mid_event = False

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Decode a chunk; return the events it completed."""
        text = self._text.decode(chunk)
        if not text:
            return []
        if self._trailing_cr:  # a CR ended the last chunk: drop the LF that may complete it
            self._trailing_cr = False
            if text[0] == "\n":
                text = text[1:]
        events: list[ServerSentEvent] = []
        start = 0
        for match in _BREAK.finditer(text):
            piece = text[start : match.start()]
            if self._pending:
                self._pending.append(piece)
                line = "".join(self._pending)
                self._pending.clear()
                self._pending_len = 0
            else:
                line = piece
            start = match.end()
            self._check_line(len(line))
            event = self._line(line)
            if event is not None:
                events.append(event)
        if text.endswith("\r"):
            self._trailing_cr = True
        rest = text[start:]
        if rest:
            self._pending.append(rest)
            self._pending_len += len(rest)
            self._check_line(self._pending_len)
        return events

    def close(self) -> list[ServerSentEvent]:
        """End of stream: an unterminated event is discarded, as the spec says (so nothing is returned).
        `ended_mid_event` tells whether there was one: bytes after the last event boundary (an unterminated
        line, or fields with no blank line after them)."""
        tail = self._text.decode(b"", final=True)
        self.ended_mid_event = bool(self._pending or tail or self._open)
        self._pending.clear()
        self._pending_len = 0
        self._data = []
        self._data_len = 0
        self._open = False
        return []

    def _check_line(self, length: int) -> None:
        if self._max_line is not None and length > self._max_line:
            raise SSELimitExceeded(f"a stream line is longer than {self._max_line:,} characters")

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line[0] == ":":
            return None
        self._open = True
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._data_len += len(value) + 1
            if self._max_event is not None and self._data_len > self._max_event:
                raise SSELimitExceeded(f"a stream event is larger than {self._max_event:,} characters")
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._last_id = value
        elif name == "retry" and value.isascii() and value.isdigit() and len(value) <= _MAX_RETRY_DIGITS:
            self._retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        self._open = False
        if not self._data:
            self._event = ""
            self._retry = None
            return None
        event = ServerSentEvent(
            data="\n".join(self._data), event=self._event or "message", id=self._last_id, retry=self._retry
        )
        self._data = []
        self._data_len = 0
        self._event = ""
        self._retry = None
        return event
