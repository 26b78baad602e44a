"""Talks to Ollama's native API: `/api/chat` and `/api/generate`, streams as newline-delimited JSON.

Request mapping:
- messages keep their role and text; `ImagePart`s must be base64 `data:` URLs (Ollama takes
  images inline, it fetches nothing) and go to the message's `images` list; assistant tool calls
  become `{"function": {"name", "arguments": {…}}}`; a tool message carries `tool_name`, from
  `Message.name` or else the name of the call its `tool_call_id` answers.
- `temperature`, `top_p`, `seed`, `stop` go into `options`; `max_tokens` becomes `num_predict`.
- `response_format` {"type": "json_object"} becomes `"format": "json"`; a `json_schema` format
  sends its schema as `format`.
- `extra` is merged into the body unchanged (`keep_alive`, `think`, `format`, …), except that an
  `extra["options"]` dict is merged *into* the mapped options (its keys win) instead of replacing
  them. `stream` is always set by the call (`stream()` or not), whatever `extra` says.
- `tool_choice` has no Ollama equivalent: "none" leaves the tools out; other values are ignored.

`stream()` of a `CompletionRequest` streams `/api/generate` (its lines carry `response` text).

Replies carry no id, so `Response.id` is "". Tool calls without an id get `call_<n>` (n counts the
calls of one reply from 0). Thinking text and the nanosecond durations are not exposed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from pydantic import ValidationError

from nova import errors
from nova.drivers._decoders import LineDecoder
from nova.drivers._errors import error_fields, malformed
from nova.drivers.base import HTTPDriver
from nova.types import (
    ChatRequest,
    Chunk,
    CompletionRequest,
    FinishReason,
    ImagePart,
    Message,
    Response,
    ToolCall,
    ToolCallDelta,
    Usage,
)

__all__ = ["OllamaDriver"]

# Ollama's own wording: "the input length exceeds the context length" (400 on /api/chat with
# truncate=false, 500 from older servers), so the status alone does not say it.
_CONTEXT_WORDS = ("context length", "context window", "context size")
_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length"}


class OllamaDriver(HTTPDriver):
    """Ollama's native API. No key is needed; `api_key`, if given, is sent as a Bearer token
    (for an authenticating proxy in front of Ollama)."""

    name = "ollama"
    default_base_url = "http://127.0.0.1:11434"

    def auth_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key.reveal()}"} if self.api_key else {}

    def map_error(
        self, status: int, body: Any, raw_text: str, headers: Mapping[str, str], model: str
    ) -> errors.NovaError:
        message, kind, code = error_fields(body, raw_text)
        classify_as = status
        if _is_context_overflow(message) and status != 413:
            classify_as = 400  # whatever the status: older servers said it with a 500
        elif status < 400:  # {"error": "…"} inside a 200: the server failed after saying OK
            classify_as = 500
        error = self.service_error(classify_as, message, kind, code, headers, model)
        error.status_code = status
        return error

    async def chat(self, request: ChatRequest) -> Response:
        model = self.model_for(request)
        data, _ = await self.post_json("/api/chat", chat_body(request, model, stream=False), model)
        return self._response(data, model, generate=False)

    async def complete(self, request: CompletionRequest) -> Response:
        model = self.model_for(request)
        data, _ = await self.post_json("/api/generate", generate_body(request, model), model)
        return self._response(data, model, generate=True)

    async def stream(self, request: ChatRequest | CompletionRequest) -> AsyncIterator[Chunk]:
        model = self.model_for(request)
        generate = isinstance(request, CompletionRequest)
        if isinstance(request, CompletionRequest):
            path, body = "/api/generate", generate_body(request, model, stream=True)
        else:
            path, body = "/api/chat", chat_body(request, model, stream=True)
        source = self.post_stream(path, body, model)
        lines = LineDecoder()
        calls_seen = 0
        try:
            async for piece in source:
                for line in lines.feed(piece):
                    if chunk := self._line_chunk(line, model, calls_seen, cut=False, generate=generate):
                        calls_seen += len(chunk.tool_calls)
                        yield chunk
                        if chunk.is_last:
                            return
            # A last line without its newline is fine if it is whole.
            rest = lines.close() or ""
            if chunk := self._line_chunk(rest, model, calls_seen, cut=True, generate=generate):
                yield chunk
                if chunk.is_last:
                    return
            raise errors.IncompleteStreamError(
                "the stream ended before its done:true line", driver=self.name, model=model
            )
        finally:
            await source.aclose()  # type: ignore[attr-defined]

    # -- reading replies ------------------------------------------------------------------------

    def _bad(self, why: str, model: str) -> errors.MalformedResponseError:
        return malformed(why, driver=self.name, model=model, status=200)

    def _response(self, data: dict[str, Any], model: str, *, generate: bool) -> Response:
        if data.get("done") is not True:
            raise self._bad(f"the reply is not finished (done={data.get('done')!r})", model)
        text, calls = self._content(data, model, generate=generate, first_index=0)
        finish, raw_finish = _finish_reason(data.get("done_reason"), bool(calls))
        return Response(
            text=text,
            finish_reason=finish,
            raw_finish_reason=raw_finish,
            usage=_usage(data),
            model=str(data.get("model") or model),
            driver=self.name,
            id="",
            tool_calls=calls,
        )

    def _content(
        self, data: dict[str, Any], model: str, *, generate: bool, first_index: int
    ) -> tuple[str, tuple[ToolCall, ...]]:
        """The text and tool calls of one reply or stream line."""
        message = {"content": data.get("response")} if generate else data.get("message")
        if not isinstance(message, dict):
            raise self._bad(f"the reply's message is not an object: {message!r:.100}", model)
        text = message.get("content")
        if text is not None and not isinstance(text, str):
            raise self._bad(f"the reply's text is not a string: {text!r:.100}", model)
        return text or "", self._tool_calls(message.get("tool_calls"), model, first_index=first_index)

    def _line_chunk(
        self, line: str, model: str, calls_seen: int, *, cut: bool, generate: bool
    ) -> Chunk | None:
        """The chunk for one NDJSON line of /api/chat (or, with `generate`, /api/generate); None
        for a line that carries nothing. An error line raises `MidStreamError`; `cut` says the
        stream ended inside this line."""
        if not line.strip():
            return None
        try:
            data = json.loads(line)
        except ValueError:
            if cut:
                raise errors.IncompleteStreamError(
                    f"the stream ended inside a line: {line[:200]!r}", driver=self.name, model=model
                ) from None
            raise self._bad(f"a stream line is not JSON: {line[:200]!r}", model) from None
        if not isinstance(data, dict):
            raise self._bad(f"a stream line is not a JSON object: {line[:200]!r}", model)
        if data.get("error"):
            message = str(data["error"])
            # A runner that crashed mid-answer is worth another try; an over-long prompt is not.
            raise errors.MidStreamError(
                message,
                driver=self.name,
                model=model,
                status_code=200,
                retryable=not _is_context_overflow(message),
            )
        text, calls = self._content(data, model, generate=generate, first_index=calls_seen)
        deltas = tuple(
            ToolCallDelta(index=calls_seen + i, id=c.id, name=c.name, arguments=json.dumps(c.arguments))
            for i, c in enumerate(calls)
        )
        model_name = str(data.get("model") or model)
        if data.get("done") is not True:
            return Chunk(text=text, tool_calls=deltas, model=model_name) if text or deltas else None
        # Tool calls arrive on done:false lines; the done line says "stop" even when there were some.
        finish, raw_finish = _finish_reason(data.get("done_reason"), bool(calls_seen or calls))
        return Chunk(
            text=text,
            tool_calls=deltas,
            finish_reason=finish,
            raw_finish_reason=raw_finish,
            usage=_usage(data),
            model=model_name,
        )

    def _tool_calls(self, raw: Any, model: str, *, first_index: int) -> tuple[ToolCall, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, list):
            raise self._bad(f"tool_calls is not a list: {raw!r:.100}", model)
        calls = []
        for i, item in enumerate(raw):
            function = item.get("function") if isinstance(item, dict) else None
            name = function.get("name") if isinstance(function, dict) else None
            if not isinstance(function, dict) or not isinstance(name, str) or not name:
                raise self._bad(f"a tool call has no function name: {item!r:.100}", model)
            try:
                call_id = str(item.get("id") or f"call_{first_index + i}")
                calls.append(ToolCall(id=call_id, name=name, arguments=function.get("arguments") or {}))
            except (ValidationError, ValueError) as exc:
                raise self._bad(
                    f"a tool call's arguments are not an object ({type(exc).__name__}): {item!r:.200}", model
                ) from None
        return tuple(calls)


# -- building requests (plain functions: the wire shape is testable without a server) -----------


def chat_body(request: ChatRequest, model: str, *, stream: bool) -> dict[str, Any]:
    """The `/api/chat` body for `request`."""
    body: dict[str, Any] = {"model": model, "messages": _wire_messages(request.messages)}
    if request.tools and request.tool_choice != "none":
        body["tools"] = [
            {
                "type": "function",
                "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
            }
            for t in request.tools
        ]
    fmt = _format(request.response_format)
    if fmt is not None:
        body["format"] = fmt
    return _finish_body(body, request, stream=stream)


def generate_body(request: CompletionRequest, model: str, *, stream: bool = False) -> dict[str, Any]:
    """The `/api/generate` body for `request`."""
    return _finish_body({"model": model, "prompt": request.prompt}, request, stream=stream)


def _finish_body(
    body: dict[str, Any], request: ChatRequest | CompletionRequest, *, stream: bool
) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for name, wire in (
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("seed", "seed"),
        ("max_tokens", "num_predict"),
    ):
        if getattr(request, name) is not None:
            options[wire] = getattr(request, name)
    if request.stop is not None:
        options["stop"] = list(request.stop)
    extra = dict(request.extra)
    extra_options = extra.pop("options", None)
    if extra_options is not None and not isinstance(extra_options, dict):
        raise errors.InvalidInputError(
            f"extra['options'] must be a dict, not {type(extra_options).__name__}",
            driver=OllamaDriver.name,
            field="extra.options",
        )
    options.update(extra_options or {})
    body.update(extra)
    if options:
        body["options"] = options
    body["stream"] = stream  # Ollama streams by default: always say which
    return body


def _wire_messages(messages: tuple[Message, ...]) -> list[dict[str, Any]]:
    call_names: dict[str, str] = {}
    out = []
    for i, m in enumerate(messages):
        wire: dict[str, Any] = {"role": m.role, "content": m.text}
        if not isinstance(m.content, str) and m.content:
            images = [_image_base64(p.url, i) for p in m.content if isinstance(p, ImagePart)]
            if images:
                wire["images"] = images
        if m.tool_calls:
            wire["tool_calls"] = [
                {"function": {"name": c.name, "arguments": c.arguments}} for c in m.tool_calls
            ]
            call_names.update((c.id, c.name) for c in m.tool_calls if c.id)
        if m.role == "tool":
            tool_name = m.name or call_names.get(m.tool_call_id or "")
            if tool_name:
                wire["tool_name"] = tool_name
        out.append(wire)
    return out


def _image_base64(url: str, index: int) -> str:
    head, comma, data = url.partition(",")
    if head.startswith("data:") and head.endswith(";base64") and comma:
        return data
    raise errors.InvalidInputError(
        f"Ollama takes images inline: messages[{index}] needs a base64 data: URL, not {url[:60]!r}",
        driver=OllamaDriver.name,
        field=f"messages[{index}].content",
    )


def _format(response_format: dict[str, Any] | None) -> Any:
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise errors.InvalidInputError(
                "response_format json_schema needs json_schema.schema (an object)",
                driver=OllamaDriver.name,
                field="response_format",
            )
        return schema
    return None  # {"type": "text"}: Ollama's default


# -- small readers ---------------------------------------------------------------------------------


def _count(data: dict[str, Any], key: str) -> int:
    # The metrics are omitempty in Ollama (and were missing on cached prompts): absent means 0.
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _usage(data: dict[str, Any]) -> Usage:
    return Usage(input_tokens=_count(data, "prompt_eval_count"), output_tokens=_count(data, "eval_count"))


def _finish_reason(raw: Any, had_tool_calls: bool) -> tuple[FinishReason, str | None]:
    raw_str = raw if isinstance(raw, str) else None
    if had_tool_calls and raw_str in ("stop", "", None):
        return "tool_calls", raw_str
    return _FINISH.get(raw_str or "", "other"), raw_str


def _is_context_overflow(message: str) -> bool:
    lowered = message.lower()
    return any(word in lowered for word in _CONTEXT_WORDS)
