"""Turns the events of one OpenAI chat (or legacy completion) stream into Nova chunks.

The parser keeps what the final chunk needs (finish reason, usage, joined tool-call arguments) and
decides whether the stream ended properly; the driver owns the bytes and the HTTP.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nova import errors
from nova.drivers._errors import malformed
from nova.drivers.openai._wire import content_text, normalize_finish_reason, parse_tool_call
from nova.types import Chunk, ToolCallDelta, Usage

if TYPE_CHECKING:
    from nova.drivers.openai import OpenAIDriver

__all__ = ["StreamParser"]

# `data: [DONE]` as the last line of the body, even without the blank line that would dispatch it.
_DONE_AT_END = re.compile(rb"(?:^|[\r\n])data: ?\[DONE\][ \t]*[\r\n]*$")
_HEAD_LIMIT = 1 << 20


@dataclass
class StreamParser:
    driver: OpenAIDriver
    model: str
    id: str = ""
    events: int = 0
    raw_finish: str | None = None
    done: bool = False
    usage: Usage | None = None
    saw_content: bool = False
    saw_refusal: bool = False
    calls: dict[int, dict[str, str]] = field(default_factory=dict)  # index -> joined name and arguments
    head: bytes = b""  # the body's start while no event has come: it may be one JSON object instead
    tail: bytes = b""  # the body's last bytes, to find an unterminated [DONE]

    def saw_bytes(self, piece: bytes) -> None:
        self.tail = (self.tail + piece)[-64:]
        if not self.events and len(self.head) < _HEAD_LIMIT:
            self.head += piece

    def event(self, name: str, payload: str) -> Chunk | None:
        """The chunk for one SSE event, or None when it carries no text or tool-call fragment."""
        if payload.startswith("[DONE]"):
            self.done = True
            return None
        try:
            data = json.loads(payload)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            why = f"a stream event is not a JSON object: {payload[:200]!r}"
            raise malformed(why, driver=self.driver.name, model=self.model, status=200)
        if name == "error" or data.get("error"):
            raise self._mid_stream_error(data)
        self.events += 1
        self.id = self.id or str(data.get("id") or "")
        self.model = str(data.get("model") or self.model)
        usage = self.driver.chunk_usage(data)
        self.usage = usage if usage is not None else self.usage
        texts: list[str] = []
        deltas: list[ToolCallDelta] = []
        choices = data.get("choices")
        for choice in choices if isinstance(choices, list) else []:  # [] on the usage chunk
            if not isinstance(choice, dict) or choice.get("index", 0) not in (0, None):
                continue  # n > 1: only the first choice is followed
            delta = choice.get("delta")
            if isinstance(delta, dict):
                if content := content_text(delta.get("content")):
                    texts.append(content)
                    self.saw_content = True
                if delta.get("refusal"):
                    texts.append(str(delta["refusal"]))
                    self.saw_refusal = True
                deltas.extend(self._call_deltas(delta.get("tool_calls")))
            elif "text" in choice:  # legacy completions
                texts.append(content_text(choice.get("text")))
                self.saw_content = True
            if isinstance(choice.get("finish_reason"), str) and choice["finish_reason"]:
                self.raw_finish = choice["finish_reason"]
        text = "".join(texts)
        if not text and not deltas:
            return None
        return Chunk(text=text, tool_calls=tuple(deltas), model=self.model, id=self.id)

    def _call_deltas(self, raw: Any) -> list[ToolCallDelta]:
        deltas = []
        for item in raw if isinstance(raw, list) else []:
            if not isinstance(item, dict):
                continue
            function: dict[str, Any] = item["function"] if isinstance(item.get("function"), dict) else {}
            name = str(function.get("name") or "") or None
            arguments = function.get("arguments") or ""
            arguments = arguments if isinstance(arguments, str) else json.dumps(arguments)
            index = item.get("index")
            if not isinstance(index, int):  # some servers leave it out: a named fragment starts a call
                index = len(self.calls) if name or not self.calls else max(self.calls)
            call = self.calls.setdefault(index, {"name": "", "arguments": ""})
            call["name"] = name or call["name"]
            call["arguments"] += arguments
            call_id = str(item.get("id") or "") or None  # "" (Gemini) or missing: the id stays unknown
            deltas.append(ToolCallDelta(index=index, id=call_id, name=name, arguments=arguments))
        return deltas

    def _mid_stream_error(self, data: dict[str, Any]) -> errors.MidStreamError:
        kind = self.driver.map_error(200, data, json.dumps(data), {}, self.model)
        return errors.MidStreamError(
            f"the service sent an error mid-stream: {kind.message}",
            driver=self.driver.name,
            model=self.model,
            status_code=200,
            retryable=kind.retryable,
            type=kind.type,
            code=kind.code,
            retry_after=kind.retry_after,
            classified_as=type(kind).__name__,
            after_events=self.events,
        )

    def is_plain_body(self) -> bool:
        """No event came and the body looks like one JSON object (a server that ignored `stream`)."""
        return not self.events and not self.done and self.head.strip()[:1] == b"{"

    def final(self, *, done_marker_required: bool) -> Chunk:
        """The last chunk, with finish_reason and usage; raises if the stream did not end properly."""
        self.done = self.done or bool(_DONE_AT_END.search(self.tail))
        if not (self.done or (not done_marker_required and self.raw_finish is not None)):
            where = (
                "before any finish_reason"
                if self.raw_finish is None
                else "after finish_reason, before [DONE]"
            )
            raise errors.IncompleteStreamError(
                f"the stream ended {where} (after {self.events} events); the answer may be cut short",
                driver=self.driver.name,
                model=self.model,
                after_events=self.events,
            )
        for call in self.calls.values():  # raises if the joined arguments are not a JSON object
            parse_tool_call(
                "",
                call["name"],
                call["arguments"],
                self.raw_finish,
                driver=self.driver.name,
                model=self.model,
            )
        finish = normalize_finish_reason(self.raw_finish, has_tool_calls=bool(self.calls))
        if self.saw_refusal and not self.saw_content:
            finish = "content_filter"
        return Chunk(
            finish_reason=finish,
            raw_finish_reason=self.raw_finish,
            usage=self.usage or Usage(),
            model=self.model,
            id=self.id,
        )

    def replay_plain_body(self) -> list[Chunk]:
        """The chunks of a reply that came as one JSON body instead of events."""
        try:
            data = json.loads(self.head)
        except ValueError:
            raise errors.IncompleteStreamError(
                "the stream held no events and its body is cut-off JSON",
                driver=self.driver.name,
                model=self.model,
            ) from None
        if not isinstance(data, dict):
            raise malformed(
                "the stream's body is JSON but not an object", driver=self.driver.name, model=self.model
            )
        if data.get("error"):
            raise self.driver.map_error(200, data, self.head.decode("utf-8", "replace"), {}, self.model)
        r = self.driver.parse_response(data, self.model)
        deltas = tuple(
            ToolCallDelta(index=i, id=c.id or None, name=c.name, arguments=json.dumps(c.arguments))
            for i, c in enumerate(r.tool_calls)
        )
        return [
            Chunk(text=r.text, tool_calls=deltas, model=r.model, id=r.id),
            Chunk(
                finish_reason=r.finish_reason,
                raw_finish_reason=r.raw_finish_reason,
                usage=r.usage,
                model=r.model,
                id=r.id,
            ),
        ]
