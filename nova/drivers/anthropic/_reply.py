"""Reads Messages API replies: a whole message, or the event stream of one, into Nova types."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from nova import errors
from nova.drivers._decoders import ServerSentEvent
from nova.drivers._errors import error_fields, malformed
from nova.types import Chunk, FinishReason, Response, ToolCall, ToolCallDelta, Usage

__all__ = ["StreamState", "finish_reason", "parse_response", "usage_from"]

_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# Error types worth another try when they arrive inside a stream (the SDK never retries these).
_RETRYABLE_STREAM_ERRORS = frozenset({"api_error", "timeout_error", "rate_limit_error"})

ErrorMapper = Callable[[int, Any, str], errors.NovaError]  # (status, body, raw text) -> error


def finish_reason(raw: str | None) -> FinishReason:
    """Anthropic's `stop_reason` as Nova's finish reason (`pause_turn` and unknown ones: other)."""
    return _FINISH.get(raw or "", "other")


def usage_from(raw: Any) -> Usage:
    """Nova usage from Anthropic's: input counts every prompt token, cached or not (OTel)."""
    raw = raw if isinstance(raw, dict) else {}

    def count(key: str) -> int:
        value = raw.get(key)
        return value if isinstance(value, int) and value > 0 else 0

    cache_read, cache_write = count("cache_read_input_tokens"), count("cache_creation_input_tokens")
    return Usage(
        input_tokens=count("input_tokens") + cache_read + cache_write,
        output_tokens=count("output_tokens"),
        cached_input_tokens=cache_read,
        cache_write_tokens=cache_write,
    )


def parse_response(
    data: dict[str, Any], *, driver: str, model: str, request_id: str | None = None
) -> Response:
    def bad(why: str) -> errors.NovaError:
        return malformed(why, driver=driver, model=model, status=200, request_id=request_id)

    content = data.get("content")
    if not isinstance(content, list):
        raise bad(f"reply has no content list: {json.dumps(data)[:200]!r}")
    text: list[str] = []
    calls: list[ToolCall] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            text.append(block["text"])
        elif block.get("type") == "tool_use":
            arguments = block.get("input") or {}
            if not isinstance(arguments, dict | str) or not isinstance(block.get("name"), str):
                raise bad(f"bad tool_use block: {json.dumps(block)[:200]!r}")
            call = {"id": str(block.get("id") or ""), "name": block["name"], "arguments": arguments}
            try:
                calls.append(ToolCall.model_validate(call))
            except ValueError as exc:
                raise bad(f"bad tool_use input ({exc})") from None
        # thinking, server_tool_use, … carry nothing a Response holds: skipped.
    raw_stop = data.get("stop_reason") if isinstance(data.get("stop_reason"), str) else None
    return Response(
        text="".join(text),
        finish_reason=finish_reason(raw_stop),
        raw_finish_reason=raw_stop,
        usage=usage_from(data.get("usage")),
        model=str(data.get("model") or model),
        driver=driver,
        id=str(data.get("id") or ""),
        tool_calls=tuple(calls),
    )


class StreamState:
    """Turns the Messages event stream into chunks, one event at a time; `finished` after
    `message_stop`, which yields the last chunk (finish reason and usage)."""

    _RAW_KEPT = 4096  # bytes kept while no event has come, to explain a reply that is no stream

    def __init__(self, *, driver: str, model: str, map_error: ErrorMapper) -> None:
        self.driver, self.model, self._map_error = driver, model, map_error
        self.id = ""
        self.usage: dict[str, Any] = {}
        self.stop_reason: str | None = None
        self.tools: dict[int, int] = {}  # content block index -> tool call index
        self.arguments: dict[int, list[str]] = {}
        self.finished = False
        self.seen_event = False
        self.raw = b""

    def note_raw(self, piece: bytes) -> None:
        if not self.seen_event and len(self.raw) < self._RAW_KEPT:
            self.raw += piece[: self._RAW_KEPT - len(self.raw)]

    def on_event(self, event: ServerSentEvent) -> Chunk | None:
        self.seen_event = True
        try:
            data = json.loads(event.data)
        except ValueError:
            raise self._malformed(f"event data is not JSON: {event.data[:200]!r}") from None
        if not isinstance(data, dict):
            raise self._malformed(f"event data is not an object: {event.data[:200]!r}")
        kind = event.event if event.event != "message" else str(data.get("type", ""))
        if kind == "error" or data.get("type") == "error":
            raise self._stream_error(data)
        if kind == "message_start":
            message = _dict(data.get("message"))
            self.id = str(message.get("id") or "")
            self.model = str(message.get("model") or self.model)
            self._take_usage(message.get("usage"))
        elif kind == "content_block_start":
            return self._block_start(data)
        elif kind == "content_block_delta":
            return self._block_delta(data)
        elif kind == "content_block_stop":
            self._block_stop(data)
        elif kind == "message_delta":
            delta = _dict(data.get("delta"))
            if isinstance(delta.get("stop_reason"), str):
                self.stop_reason = delta["stop_reason"]
            self._take_usage(data.get("usage"))
        elif kind == "message_stop":
            self.finished = True
            return self._chunk(
                finish_reason=finish_reason(self.stop_reason),
                raw_finish_reason=self.stop_reason,
                usage=usage_from(self.usage),
            )
        return None  # ping, and event types Anthropic may add later, are ignored as it asks

    def incomplete(self) -> errors.NovaError:
        """The error for a stream that ended before `message_stop`."""
        if not self.seen_event:
            # No event at all: perhaps a JSON error object sent with status 200.
            text = self.raw.decode("utf-8", errors="replace")
            try:
                body = json.loads(text)
            except ValueError:
                body = None
            if isinstance(body, dict) and body.get("error"):
                error = self._map_error(200, body, text)
                error.details["in_successful_reply"] = True
                return error
        where = "before message_stop" if self.seen_event else f"with no events (got {self.raw[:200]!r})"
        return errors.IncompleteStreamError(f"the stream ended {where}", driver=self.driver, model=self.model)

    def _block_start(self, data: dict[str, Any]) -> Chunk | None:
        block = data.get("content_block")
        if not isinstance(block, dict) or block.get("type") != "tool_use":
            return None
        index = self.tools.setdefault(_index(data), len(self.tools))
        self.arguments[_index(data)] = []
        delta = ToolCallDelta(index=index, id=str(block.get("id") or ""), name=str(block.get("name") or ""))
        return self._chunk(tool_calls=(delta,))

    def _block_delta(self, data: dict[str, Any]) -> Chunk | None:
        delta = _dict(data.get("delta"))
        block = _index(data)
        if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str) and delta["text"]:
            return self._chunk(text=delta["text"])
        if delta.get("type") == "input_json_delta" and block in self.tools:
            piece = delta.get("partial_json")
            if isinstance(piece, str) and piece:  # the first piece is often ""
                self.arguments[block].append(piece)
                return self._chunk(tool_calls=(ToolCallDelta(index=self.tools[block], arguments=piece),))
        return None  # thinking, signature and citation deltas carry nothing a Chunk holds

    def _block_stop(self, data: dict[str, Any]) -> None:
        pieces = self.arguments.pop(_index(data), None)
        if pieces:
            joined = "".join(pieces)
            try:
                ok = isinstance(json.loads(joined), dict)
            except ValueError:
                ok = False
            if not ok:
                raise self._malformed(f"tool input is not a JSON object: {joined[:200]!r}")

    def _take_usage(self, usage: Any) -> None:
        if isinstance(usage, dict):  # counts are cumulative: the latest value of each wins
            self.usage.update({k: v for k, v in usage.items() if v is not None})

    def _chunk(self, **fields: Any) -> Chunk:
        return Chunk(model=self.model, id=self.id, **fields)

    def _stream_error(self, data: dict[str, Any]) -> errors.NovaError:
        message, kind, code = error_fields(data, json.dumps(data))
        request_id = data.get("request_id") if isinstance(data.get("request_id"), str) else None
        if kind == "overloaded_error":
            # The service's own capacity, like a 529: the same class, so a retry or fallback treats
            # it the same; `mid_stream` tells that chunks may already have been delivered.
            return errors.OverloadedError(
                f"error event in the stream: {message}",
                driver=self.driver,
                model=self.model,
                status_code=200,
                request_id=request_id,
                type=kind,
                code=code,
                mid_stream=True,
            )
        return errors.MidStreamError(
            f"error event in the stream: {message}",
            driver=self.driver,
            model=self.model,
            request_id=request_id,
            type=kind,
            code=code,
            retryable=kind in _RETRYABLE_STREAM_ERRORS,
        )

    def _malformed(self, why: str) -> errors.NovaError:
        return malformed(why, driver=self.driver, model=self.model, status=200)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _index(data: dict[str, Any]) -> int:
    index = data.get("index")
    return index if isinstance(index, int) else -1
