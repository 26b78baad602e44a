"""Incremental decoders for streamed replies: Server-Sent Events and newline-delimited JSON.

Both work on raw bytes as they arrive: a read may end inside a UTF-8 character or between the
`\\r` and `\\n` of a line ending, so lines are split on bytes and decoded only when whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["LineDecoder", "SSEDecoder", "ServerSentEvent"]


class LineDecoder:
    """Splits a byte stream into lines ending in CR, LF or CRLF."""

    def __init__(self) -> None:
        self._buffer = b""
        self._pending_cr = False  # the last read ended with CR: an LF next belongs to it

    def feed(self, data: bytes) -> Iterator[str]:
        if not data:  # an empty read must not forget a CR waiting for its LF
            return
        if self._pending_cr and data.startswith(b"\n"):
            data = data[1:]
        self._pending_cr = False
        buffer = self._buffer + data
        start = 0
        i = 0
        n = len(buffer)
        while i < n:
            byte = buffer[i]
            if byte == 0x0A or byte == 0x0D:
                yield buffer[start:i].decode("utf-8", errors="replace")
                if byte == 0x0D:
                    if i + 1 < n and buffer[i + 1] == 0x0A:
                        i += 1
                    elif i + 1 == n:
                        self._pending_cr = True
                start = i + 1
            i += 1
        self._buffer = buffer[start:]

    def close(self) -> str | None:
        """The unterminated rest of the stream, if any."""
        rest, self._buffer = self._buffer, b""
        return rest.decode("utf-8", errors="replace") if rest else None


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    event: str
    data: str


class SSEDecoder:
    """WHATWG event-stream parsing: `:` comments and unknown fields ignored, several `data:` lines
    joined with newlines, an event dispatched only on a blank line. An event not terminated when
    the stream ends is discarded."""

    def __init__(self) -> None:
        self._lines = LineDecoder()
        self._event = ""
        self._data: list[str] = []

    def feed(self, data: bytes) -> Iterator[ServerSentEvent]:
        for line in self._lines.feed(data):
            if not line:
                if self._data:
                    yield ServerSentEvent(self._event or "message", "\n".join(self._data))
                self._event, self._data = "", []
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if name == "data":
                self._data.append(value)
            elif name == "event":
                self._event = value
