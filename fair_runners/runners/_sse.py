"""An incremental server-sent-events decoder (the WHATWG parsing algorithm), fed with raw bytes.

Lines end at CRLF, LF or CR, even across chunk boundaries; `data` lines of one event are joined with newlines;
comments (`:`) and unknown fields are ignored; an event is dispatched at a blank line, and only when it has
data. Tested against httpx-sse as an oracle (tests/test_sse.py).
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event."""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Feed bytes with `feed()`, get the events completed so far; `close()` at end of stream."""

    __slots__ = ("_data", "_event", "_last_id", "_pending", "_retry", "_text", "_trailing_cr")

    def __init__(self) -> None:
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._trailing_cr = False
        self._data: list[str] = []
        self._event = ""
        self._last_id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Decode a chunk; return the events it completed."""
        text = self._text.decode(chunk)
        if not text:
            return []
        if self._trailing_cr:  # a CR at the end of the last chunk: drop the LF that may complete it
            self._trailing_cr = False
            if text[0] == "\n":
                text = text[1:]
        buffer = self._pending + text
        if "\r" in buffer:
            self._trailing_cr = buffer.endswith("\r")
            buffer = buffer.replace("\r\n", "\n").replace("\r", "\n")
        *lines, self._pending = buffer.split("\n")
        events: list[ServerSentEvent] = []
        for line in lines:
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def close(self) -> list[ServerSentEvent]:
        """End of stream: an unterminated event is discarded, as the spec says."""
        self._text.decode(b"", final=True)
        self._pending = ""
        self._data = []
        return []

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line[0] == ":":
            return None
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._last_id = value
        elif name == "retry" and value.isdigit() and value.isascii():
            self._retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        if not self._data:
            self._event = ""
            self._retry = None
            return None
        event = ServerSentEvent(
            data="\n".join(self._data), event=self._event or "message", id=self._last_id, retry=self._retry
        )
        self._data = []
        self._event = ""
        self._retry = None
        return event
