"""The OpenAI driver: Chat Completions and legacy Completions, plain or streamed (notes/wire-formats §1-2).

Decisions where the service's spec is silent:
- A refusal (`message.refusal`) with no content becomes the text, with finish_reason "content_filter"
  (the raw finish_reason is kept): the caller sees the model's words and can tell it refused.
- Tool-call arguments that are not a JSON object raise `MalformedResponseError`, retryable unless
  finish_reason is "length" (the model ran out of tokens mid-arguments; a retry would too).
- An error object inside a 200 (body or stream) is classified by its `type` / integer `code` as if it
  had come with that status; `status_code` stays the real one. In a stream it is a `MidStreamError`
  whose `retryable` follows that classification.
- A stream is complete only when `[DONE]` arrives (also as a last line missing its blank line);
  `done_marker_required = False` (openai_compatible) also accepts a finish_reason then a clean end.
- A stream request answered with one plain JSON body (some servers ignore `stream`) is replayed as chunks.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from nova import errors
from nova.drivers._decoders import SSEDecoder
from nova.drivers._errors import api_error, error_fields, malformed
from nova.drivers.base import HTTPDriver
from nova.secrets import Secret
from nova.types import (
    ChatRequest,
    Chunk,
    CompletionRequest,
    FinishReason,
    ImagePart,
    Message,
    Response,
    TextPart,
    ToolCall,
    ToolCallDelta,
    Usage,
)

__all__ = ["OpenAIDriver", "normalize_finish_reason", "parse_usage"]

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}
_REASONING_MODELS = ("o1", "o3", "o4", "gpt-5")  # they reject max_tokens (400 unsupported_parameter)
# The status an error object's type would have come with, for error objects inside a 200.
_STATUS_BY_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    "requests": 429,
    "tokens": 429,
    "insufficient_quota": 429,
    "server_error": 500,
    "api_error": 500,
    "service_unavailable_error": 503,
    "unavailable_error": 503,
    "overloaded_error": 529,
}
_DONE_AT_END = re.compile(rb"(?:^|[\r\n])data: ?\[DONE\][ \t]*[\r\n]*$")


def normalize_finish_reason(raw: Any, *, has_tool_calls: bool = False) -> FinishReason:
    """OpenAI's finish_reason as Nova's enum; "stop" with tool calls is "tool_calls" (Ollama's habit)."""
    value = _FINISH.get(raw, "other") if isinstance(raw, str) else "other"
    return "tool_calls" if value == "stop" and has_tool_calls else value


def parse_usage(raw: Any) -> Usage:
    """OpenAI `usage` as `Usage`; missing or null counters are 0, `total_tokens` is never re-derived."""
    if not isinstance(raw, dict):
        return Usage()
    prompt, completion = raw.get("prompt_tokens_details"), raw.get("completion_tokens_details")
    return Usage(
        input_tokens=_count(raw.get("prompt_tokens")),
        output_tokens=_count(raw.get("completion_tokens")),
        total_tokens=_count(raw.get("total_tokens")),
        cached_input_tokens=_count(prompt.get("cached_tokens")) if isinstance(prompt, dict) else 0,
        reasoning_tokens=_count(completion.get("reasoning_tokens")) if isinstance(completion, dict) else 0,
    )


def _count(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) and value > 0 else 0


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # some servers answer with content parts
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
    return ""


def _wire_message(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role}
    if m.role == "tool":
        out["tool_call_id"] = m.tool_call_id
    if isinstance(m.content, tuple) and m.role != "tool":
        out["content"] = [
            {"type": "text", "text": p.text}
            if isinstance(p, TextPart)
            else {"type": "image_url", "image_url": {"url": p.url}}
            for p in m.content
            if isinstance(p, TextPart | ImagePart)
        ]
    else:
        out["content"] = m.text if m.content is not None else None
    if m.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": json.dumps(c.arguments)},
            }
            for c in m.tool_calls
        ]
    if m.name:
        out["name"] = m.name
    return out


@dataclass
class _StreamState:
    model: str
    id: str = ""
    events: int = 0
    raw_finish: str | None = None
    done: bool = False
    usage: Usage | None = None
    saw_content: bool = False
    saw_refusal: bool = False
    calls: dict[int, dict[str, str]] = field(default_factory=dict)  # index -> joined name and arguments
    head: bytes = b""  # the start of the body, in case it is one JSON object instead of events


class OpenAIDriver(HTTPDriver):
    """OpenAI's HTTP API. Options beside HTTPDriver's: `organization`, `project`,
    `use_max_completion_tokens` (send it instead of max_tokens for any model), `stream_usage`
    (ask for the usage chunk with `stream_options.include_usage`; default True)."""

    name = "openai"
    default_base_url = "https://api.openai.com/v1"
    env_prefix: ClassVar[str | None] = "OPENAI"  # reads OPENAI_API_KEY, _BASE_URL, _ORG_ID, _PROJECT_ID
    api_key_required: ClassVar[bool] = True
    done_marker_required: ClassVar[bool] = True

    def __init__(
        self,
        *,
        api_key: str | Secret | None = None,
        base_url: str | None = None,
        organization: str | None = None,
        project: str | None = None,
        use_max_completion_tokens: bool = False,
        stream_usage: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(
            api_key=api_key if api_key is not None else self._env("API_KEY"),
            base_url=base_url or self._env("BASE_URL"),
            **options,
        )
        self.organization = organization or self._env("ORG_ID")
        self.project = project or self._env("PROJECT_ID")
        self.use_max_completion_tokens = use_max_completion_tokens
        self.stream_usage = stream_usage

    def _env(self, name: str) -> str | None:
        return (os.environ.get(f"{self.env_prefix}_{name}") or None) if self.env_prefix else None

    def auth_headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key.reveal()}"
        elif self.api_key_required:
            raise errors.ConfigurationError(
                f"no API key for {self.name}: pass api_key= or set {self.env_prefix}_API_KEY",
                driver=self.name,
            )
        if self.organization:
            headers["openai-organization"] = self.organization
        if self.project:
            headers["openai-project"] = self.project
        return headers

    def map_error(
        self, status: int, body: Any, raw_text: str, headers: Mapping[str, str], model: str
    ) -> errors.NovaError:
        message, kind, code = error_fields(body, raw_text)
        effective = status
        if status < 400:  # an error object in a 200: classify it as the status it stands for
            numeric = int(code) if code and code.isdigit() and 400 <= int(code) < 600 else None
            effective = numeric or _STATUS_BY_TYPE.get(kind or "") or _STATUS_BY_TYPE.get(code or "") or 500
        error = api_error(
            effective,
            message,
            type=kind,
            code=code,
            headers=headers,
            driver=self.name,
            model=model,
            request_id=headers.get(self.request_id_header),
        )
        error.status_code = status
        return error

    # -- the wire format of requests ------------------------------------------------------------

    def uses_max_completion_tokens(self, model: str) -> bool:
        return self.use_max_completion_tokens or model.removeprefix("ft:").startswith(_REASONING_MODELS)

    def build_request(
        self, request: ChatRequest | CompletionRequest, model: str, stream: bool
    ) -> tuple[str, dict[str, Any]]:
        """The path and JSON body for a request."""
        body: dict[str, Any] = {"model": model}
        if isinstance(request, ChatRequest):
            path = "/chat/completions"
            body["messages"] = [_wire_message(m) for m in request.messages]
            if request.tools:
                body["tools"] = [
                    {
                        "type": "function",
                        "function": {
                            "name": t.name,
                            **({"description": t.description} if t.description else {}),
                            "parameters": t.parameters,
                        },
                    }
                    for t in request.tools
                ]
            if request.tool_choice in ("auto", "none", "required"):
                body["tool_choice"] = request.tool_choice
            elif request.tool_choice:
                body["tool_choice"] = {"type": "function", "function": {"name": request.tool_choice}}
            if request.response_format is not None:
                body["response_format"] = request.response_format
            max_key = "max_completion_tokens" if self.uses_max_completion_tokens(model) else "max_tokens"
        else:
            path, body["prompt"], max_key = "/completions", request.prompt, "max_tokens"
        for key, value in (
            ("temperature", request.temperature),
            ("top_p", request.top_p),
            ("seed", request.seed),
            (max_key, request.max_tokens),
        ):
            if value is not None:
                body[key] = value
        if request.stop:
            body["stop"] = list(request.stop)
        if stream:
            body["stream"] = True
            if self.stream_usage:
                body["stream_options"] = {"include_usage": True}
        body.update(request.extra)  # last: the caller's model-specific fields win
        return path, body

    # -- plain calls ----------------------------------------------------------------------------

    async def chat(self, request: ChatRequest) -> Response:
        return await self._call(request)

    async def complete(self, request: CompletionRequest) -> Response:
        return await self._call(request)

    async def _call(self, request: ChatRequest | CompletionRequest) -> Response:
        model = self.model_for(request)
        path, body = self.build_request(request, model, stream=False)
        data, headers = await self.post_json(path, body, model)
        return self.parse_response(data, model, headers.get(self.request_id_header))

    def parse_response(self, data: dict[str, Any], model: str, request_id: str | None = None) -> Response:
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise malformed(
                f"the reply has no choices: {json.dumps(data)[:200]}",
                driver=self.name,
                model=model,
                status=200,
                request_id=request_id,
            )
        choice = choices[0]
        raw_finish = choice.get("finish_reason") if isinstance(choice.get("finish_reason"), str) else None
        message = choice.get("message")
        if isinstance(message, dict):
            text, refusal = _text(message.get("content")), message.get("refusal")
            calls = self._tool_calls(message.get("tool_calls"), raw_finish, model)
        elif "text" in choice:  # legacy completions
            text, refusal, calls = _text(choice.get("text")), None, ()
        else:
            raise malformed(
                "the reply's choice has neither message nor text",
                driver=self.name,
                model=model,
                status=200,
                request_id=request_id,
            )
        finish = normalize_finish_reason(raw_finish, has_tool_calls=bool(calls))
        if refusal and not text:
            text, finish = str(refusal), "content_filter"
        return Response(
            text=text,
            finish_reason=finish,
            raw_finish_reason=raw_finish,
            usage=self.response_usage(data),
            model=str(data.get("model") or model),
            driver=self.name,
            id=str(data.get("id") or ""),
            tool_calls=calls,
        )

    def response_usage(self, data: dict[str, Any]) -> Usage:
        return parse_usage(data.get("usage"))

    def _tool_calls(self, raw: Any, raw_finish: str | None, model: str) -> tuple[ToolCall, ...]:
        if not raw:
            return ()
        calls = []
        for item in raw if isinstance(raw, list) else [raw]:
            function = item.get("function") if isinstance(item, dict) else None
            if not isinstance(function, dict) or not function.get("name"):
                raise malformed(
                    f"a tool call has no function name: {json.dumps(item)[:200]}",
                    driver=self.name,
                    model=model,
                    status=200,
                )
            calls.append(
                self._tool_call(
                    str(item.get("id") or ""),
                    str(function["name"]),
                    function.get("arguments"),
                    raw_finish,
                    model,
                )
            )
        return tuple(calls)

    def _tool_call(self, id_: str, name: str, arguments: Any, raw_finish: str | None, model: str) -> ToolCall:
        parsed: Any = {} if arguments is None else arguments
        if isinstance(arguments, str):
            try:
                parsed = json.loads(arguments) if arguments.strip() else {}
            except ValueError:
                parsed = None
        if not isinstance(parsed, dict):
            cut = raw_finish == "length"
            raise errors.MalformedResponseError(
                f"the arguments of tool call {name!r} are not a JSON object"
                + (" (cut off by the token limit)" if cut else ""),
                driver=self.name,
                model=model,
                retryable=not cut,
                arguments=str(arguments)[:1000],
            )
        return ToolCall(id=id_, name=name, arguments=parsed)

    # -- streams --------------------------------------------------------------------------------

    async def stream(self, request: ChatRequest | CompletionRequest) -> AsyncIterator[Chunk]:  # type: ignore[override]
        model = self.model_for(request)
        path, body = self.build_request(request, model, stream=True)
        state, decoder, tail = _StreamState(model=model), SSEDecoder(), b""
        async with contextlib.aclosing(self.post_stream(path, body, model)) as pieces:
            async for piece in pieces:
                tail = (tail + piece)[-64:]
                if not state.events and len(state.head) < 1 << 20:
                    state.head += piece
                for event in decoder.feed(piece):
                    if event.data.startswith("[DONE]"):
                        state.done = True
                        break
                    chunk = self._stream_event(event.event, event.data, state)
                    if chunk is not None:
                        yield chunk
                if state.done:
                    break
        if not state.events and state.head.strip()[:1] == b"{":
            for chunk in self._replay_plain_body(state, model):
                yield chunk
            return
        state.done = state.done or bool(_DONE_AT_END.search(tail))
        yield self._final_chunk(state)

    def chunk_usage(self, data: dict[str, Any]) -> Usage | None:
        """The usage a stream chunk carries, if any (null on every chunk but the usage chunk)."""
        return parse_usage(data["usage"]) if isinstance(data.get("usage"), dict) else None

    def _stream_event(self, name: str, payload: str, state: _StreamState) -> Chunk | None:
        try:
            data = json.loads(payload)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise malformed(
                f"a stream event is not a JSON object: {payload[:200]!r}",
                driver=self.name,
                model=state.model,
                status=200,
            )
        if name == "error" or data.get("error"):
            raise self._mid_stream_error(data, state)
        state.events += 1
        state.id = state.id or str(data.get("id") or "")
        state.model = str(data.get("model") or state.model)
        usage = self.chunk_usage(data)
        state.usage = usage if usage is not None else state.usage
        texts: list[str] = []
        deltas: list[ToolCallDelta] = []
        choices = data.get("choices")
        for choice in choices if isinstance(choices, list) else []:  # [] on the usage chunk
            if not isinstance(choice, dict) or choice.get("index", 0) not in (0, None):
                continue  # n > 1: only the first choice is followed
            delta = choice.get("delta")
            if isinstance(delta, dict):
                if content := _text(delta.get("content")):
                    texts.append(content)
                    state.saw_content = True
                if delta.get("refusal"):
                    texts.append(str(delta["refusal"]))
                    state.saw_refusal = True
                deltas.extend(self._call_deltas(delta.get("tool_calls"), state))
            elif "text" in choice:  # legacy completions
                texts.append(_text(choice.get("text")))
                state.saw_content = True
            if isinstance(choice.get("finish_reason"), str) and choice["finish_reason"]:
                state.raw_finish = choice["finish_reason"]
        text = "".join(texts)
        if not text and not deltas:
            return None
        return Chunk(text=text, tool_calls=tuple(deltas), model=state.model, id=state.id)

    def _call_deltas(self, raw: Any, state: _StreamState) -> list[ToolCallDelta]:
        deltas = []
        for item in raw if isinstance(raw, list) else []:
            if not isinstance(item, dict):
                continue
            function = item.get("function") if isinstance(item.get("function"), dict) else {}
            name = str(function.get("name") or "") or None
            arguments = function.get("arguments") or ""
            arguments = arguments if isinstance(arguments, str) else json.dumps(arguments)
            index = item.get("index")
            if not isinstance(index, int):  # some servers leave it out: a named fragment starts a call
                index = len(state.calls) if name or not state.calls else max(state.calls)
            call = state.calls.setdefault(index, {"name": "", "arguments": ""})
            call["name"] = name or call["name"]
            call["arguments"] += arguments
            deltas.append(
                ToolCallDelta(
                    index=index, id=str(item.get("id") or "") or None, name=name, arguments=arguments
                )
            )
        return deltas

    def _mid_stream_error(self, data: dict[str, Any], state: _StreamState) -> errors.MidStreamError:
        kind = self.map_error(200, data, json.dumps(data), {}, state.model)
        return errors.MidStreamError(
            f"the service sent an error mid-stream: {kind.message}",
            driver=self.name,
            model=state.model,
            status_code=200,
            retryable=kind.retryable,
            type=kind.type,
            code=kind.code,
            retry_after=kind.retry_after,
            classified_as=type(kind).__name__,
            after_events=state.events,
        )

    def _final_chunk(self, state: _StreamState) -> Chunk:
        if not (state.done or (not self.done_marker_required and state.raw_finish is not None)):
            where = (
                "before any finish_reason"
                if state.raw_finish is None
                else "after finish_reason, before [DONE]"
            )
            raise errors.IncompleteStreamError(
                f"the stream ended {where} (after {state.events} events); the answer may be cut short",
                driver=self.name,
                model=state.model,
                after_events=state.events,
            )
        for call in state.calls.values():  # raise now if the joined arguments are not JSON
            self._tool_call("", call["name"], call["arguments"], state.raw_finish, state.model)
        finish = normalize_finish_reason(state.raw_finish, has_tool_calls=bool(state.calls))
        if state.saw_refusal and not state.saw_content:
            finish = "content_filter"
        return Chunk(
            finish_reason=finish,
            raw_finish_reason=state.raw_finish,
            usage=state.usage or Usage(),
            model=state.model,
            id=state.id,
        )

    def _replay_plain_body(self, state: _StreamState, model: str) -> list[Chunk]:
        try:
            data = json.loads(state.head)
        except ValueError:
            raise errors.IncompleteStreamError(
                "the stream held no events and its body is cut-off JSON", driver=self.name, model=model
            ) from None
        if not isinstance(data, dict):
            raise malformed("the stream's body is JSON but not an object", driver=self.name, model=model)
        if data.get("error"):
            raise self.map_error(200, data, state.head.decode("utf-8", "replace"), {}, model)
        response = self.parse_response(data, model)
        deltas = tuple(
            ToolCallDelta(index=i, id=c.id or None, name=c.name, arguments=json.dumps(c.arguments))
            for i, c in enumerate(response.tool_calls)
        )
        return [
            Chunk(text=response.text, tool_calls=deltas, model=response.model, id=response.id),
            Chunk(
                finish_reason=response.finish_reason,
                raw_finish_reason=response.raw_finish_reason,
                usage=response.usage,
                model=response.model,
                id=response.id,
            ),
        ]
