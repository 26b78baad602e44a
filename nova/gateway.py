"""The HTTP gateway's plain half: OpenAI and Anthropic wire formats to Nova's calls and back.

`actors/gateway.py` serves HTTP and carries calls to the router; everything it says on the wire
is made here, so it is testable without a server: request bodies become `ChatCall` /
`CompleteCall` / `StreamCall` (unknown top-level fields go in `extra`, as with the facade),
responses and chunks become OpenAI's `chat.completion` / `text_completion` objects or Anthropic's
`message` and its stream events, a Nova error becomes a status code and each format's error body,
and a metrics snapshot becomes Prometheus text.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from nova import errors
from nova.messages import CallOptions, ChatCall, CompleteCall, StreamCall
from nova.types import ChatRequest, Chunk, CompletionRequest, Response, Usage, validation_error

__all__ = [
    "AnthropicStream",
    "GatewayCall",
    "OpenAIStream",
    "anthropic_error",
    "anthropic_message",
    "chat_completion",
    "error_status",
    "model_list",
    "nova_headers",
    "openai_error",
    "parse_anthropic_messages",
    "parse_chat",
    "parse_completion",
    "prometheus_text",
    "text_completion",
]

_CHAT_PARAMS = {"temperature", "top_p", "stop", "seed", "tools", "tool_choice", "response_format"}
# Fields OpenAI's SDK sends that mean nothing to a single-answer call, and are dropped.
_IGNORED = {"stream", "stream_options", "n", "user", "logprobs", "top_logprobs", "parallel_tool_calls"}


@dataclass(frozen=True)
class GatewayCall:
    """A request as Nova's call, with what the answer's format needs."""

    call: ChatCall | CompleteCall | StreamCall
    model: str  # as the client named it; echoed when the service names none
    stream: bool = False
    include_usage: bool = False


def _invalid(message: str, field_name: str) -> errors.InvalidInputError:
    return errors.InvalidInputError(message, field=field_name)


def _body(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _invalid("the request body must be a JSON object", "body")
    return body


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise _invalid("'model' is required: a model string such as 'openai/gpt-4o-mini'", "model")
    return model


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _invalid(f"'{name}' must be true or false", name)
    return value


# Nova's per-call options: a "nova" object in the body (the OpenAI and Anthropic SDKs send it
# with `extra_body={"nova": {...}}`) or X-Nova-* headers; the body wins over a header.
_OPTION_FORMS = {
    "cache": 'true, false or "refresh"',
    "ttl": "a number of seconds, 0 or more",
    "conversation": "a conversation id (a string)",
    "fallback": 'false or a list of "driver/model" targets',
    "timeout": "a number of seconds above 0",
}
_OPTION_FIELDS = {"cache": "cache", "ttl": "ttl_s", "conversation": "conversation"}
_OPTION_FIELDS |= {"fallback": "fallback", "timeout": "timeout_s"}
_OPTION_HEADERS = {
    "X-Nova-Cache": "cache",
    "X-Nova-Cache-TTL": "ttl",
    "X-Nova-Conversation": "conversation",
    "X-Nova-Fallback": "fallback",
}


def _header_option(name: str, value: str) -> Any:
    """A header's text as the option's JSON value: `true`, `false`, a number, or a list."""
    text = value.strip()
    if name == "conversation":
        return text
    if name == "fallback" and text.lower() != "false":
        return [t.strip() for t in text.split(",") if t.strip()]
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return float(text)
    except ValueError:
        return text


def _bad_option(name: str, where: str, value: Any) -> errors.InvalidInputError:
    return _invalid(f"'{where}' must be {_OPTION_FORMS[name]} (got {value!r:.60})", where)


def _options(
    body: dict[str, Any], timeout_s: float | None, headers: Mapping[str, str] | None = None
) -> CallOptions:
    given: dict[str, tuple[str, Any]] = {}  # option -> (where it was given, value)
    for header, name in _OPTION_HEADERS.items():
        if headers is not None and headers.get(header) is not None:
            given[name] = (header, _header_option(name, headers[header]))
    if timeout_s is not None:
        given["timeout"] = ("X-Nova-Timeout", timeout_s)
    nova = body.get("nova")
    if nova is not None:
        if not isinstance(nova, dict):
            raise _invalid(f"'nova' must be an object of Nova's options ({', '.join(_OPTION_FORMS)})", "nova")
        for name, value in nova.items():
            if name not in _OPTION_FORMS:
                known = ", ".join(_OPTION_FORMS)
                raise _invalid(f"unknown Nova option 'nova.{name}' (known: {known})", f"nova.{name}")
            if value is not None:
                given[name] = (f"nova.{name}", value)
    fields: dict[str, Any] = {}
    for name, (where, value) in given.items():
        if name == "fallback" and value is not False:
            if not isinstance(value, list) or not all(isinstance(t, str) and t for t in value):
                raise _bad_option(name, where, value)
            value = tuple(value)
        elif name == "cache" and not (isinstance(value, bool) or value == "refresh"):
            raise _bad_option(name, where, value)  # pydantic would take 1 or "yes" for true
        elif name == "conversation" and (not isinstance(value, str) or not value):
            raise _bad_option(name, where, value)
        elif name in ("ttl", "timeout") and (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not (0 <= value if name == "ttl" else 0 < value < math.inf)  # also NaN
        ):
            raise _bad_option(name, where, value)
        fields[_OPTION_FIELDS[name]] = value
    try:
        return CallOptions(**fields)
    except ValidationError as exc:  # checked above; kept so that a new rule still answers a 400
        raise validation_error(exc) from None


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise _invalid("'stream_options' must be an object", "stream_options")
    return bool(options.get("include_usage"))


def _one_choice(body: dict[str, Any]) -> None:
    n = body.get("n")
    if n not in (None, 1):
        raise _invalid("'n' must be 1: Nova returns one choice per call", "n")


def _max_tokens(body: dict[str, Any], *names: str) -> dict[str, Any]:
    for name in names:
        if body.get(name) is not None:
            return {"max_tokens": body[name]}
    return {}


def _build(make: Any, what: str) -> Any:
    try:
        return make()
    except ValidationError as exc:
        raise validation_error(exc) from None
    except errors.NovaError:
        raise
    except (TypeError, ValueError, AttributeError) as exc:
        raise _invalid(f"invalid {what}: {exc}", what) from None


# -- OpenAI: requests -----------------------------------------------------------------------------


def _openai_message(raw: Any, i: int) -> dict[str, Any]:
    where = f"messages.{i}"
    if not isinstance(raw, dict):
        raise _invalid(f"'{where}' must be an object", where)
    role = raw.get("role")
    if role == "developer":  # OpenAI's newer name for a system message
        role = "system"
    message: dict[str, Any] = {"role": role, "content": _openai_content(raw.get("content"), where)}
    if raw.get("tool_calls"):
        calls = raw["tool_calls"]
        if not isinstance(calls, list):
            raise _invalid(f"'{where}.tool_calls' must be a list", f"{where}.tool_calls")
        message["tool_calls"] = [_openai_tool_call(c, f"{where}.tool_calls.{j}") for j, c in enumerate(calls)]
    for key in ("tool_call_id", "name"):
        if raw.get(key) is not None:
            message[key] = raw[key]
    return message


def _openai_tool_call(raw: Any, where: str) -> dict[str, Any]:
    function = raw.get("function") if isinstance(raw, dict) else None
    if not isinstance(function, dict):
        raise _invalid(f"'{where}' must be an object with a 'function' object", where)
    return {"id": raw.get("id", ""), **function}


def _openai_content(content: Any, where: str) -> Any:
    if not isinstance(content, list):
        return content
    parts: list[Any] = []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise _invalid(f"'{where}.content.{j}' must be an object", f"{where}.content.{j}")
        kind = part.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": part.get("text")})
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            parts.append({"type": "image", "url": url})
        else:
            raise _invalid(
                f"'{where}.content.{j}.type' {kind!r} is not supported (text, image_url)",
                f"{where}.content.{j}.type",
            )
    return parts


def parse_chat(
    body: Any, timeout_s: float | None = None, headers: Mapping[str, str] | None = None
) -> GatewayCall:
    """A `POST /v1/chat/completions` body."""
    body = _body(body)
    model = _model(body)
    stream = _flag(body, "stream")
    _one_choice(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("'messages' must be a non-empty list of messages", "messages")
    params = {k: body[k] for k in _CHAT_PARAMS if body.get(k) is not None}
    if isinstance(params.get("response_format"), dict) and params["response_format"].get("type") == "text":
        del params["response_format"]  # the default
    extra = {
        k: v
        for k, v in body.items()
        if k
        not in _CHAT_PARAMS | _IGNORED | {"model", "messages", "max_tokens", "max_completion_tokens", "nova"}
    }
    request = _build(
        lambda: ChatRequest(
            model=model,
            messages=[_openai_message(m, i) for i, m in enumerate(messages)],  # type: ignore[arg-type]
            extra=extra,
            **params,
            **_max_tokens(body, "max_completion_tokens", "max_tokens"),
        ),
        "messages",
    )
    kind = StreamCall if stream else ChatCall
    return GatewayCall(
        kind(request=request, options=_options(body, timeout_s, headers)), model, stream, _include_usage(body)
    )


def parse_completion(
    body: Any, timeout_s: float | None = None, headers: Mapping[str, str] | None = None
) -> GatewayCall:
    """A `POST /v1/completions` body (legacy text completions)."""
    body = _body(body)
    model = _model(body)
    stream = _flag(body, "stream")
    _one_choice(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _invalid("'prompt' must be a string (one prompt per call)", "prompt")
    known = {"temperature", "top_p", "stop", "seed"}
    params = {k: body[k] for k in known if body.get(k) is not None}
    extra = {
        k: v for k, v in body.items() if k not in known | _IGNORED | {"model", "prompt", "max_tokens", "nova"}
    }
    request = _build(
        lambda: CompletionRequest(
            model=model, prompt=prompt, extra=extra, **params, **_max_tokens(body, "max_tokens")
        ),
        "prompt",
    )
    options = _options(body, timeout_s, headers)
    call: StreamCall | CompleteCall = (
        StreamCall(request=request, options=options)
        if stream
        else CompleteCall(request=request, options=options)
    )
    return GatewayCall(call, model, stream, _include_usage(body))


# -- OpenAI: answers ------------------------------------------------------------------------------


def _finish(reason: str | None) -> str | None:
    if reason is None:
        return None
    return "stop" if reason == "other" else reason


def _usage(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def _id(prefix: str, request_id: str, own: str) -> str:
    return own if own.startswith(prefix) else f"{prefix}{request_id}"


def chat_completion(response: Response, model: str, request_id: str) -> dict[str, Any]:
    """A `chat.completion` object."""
    message: dict[str, Any] = {"role": "assistant", "content": response.text or None}
    if response.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id or f"call_{request_id[:12]}_{i}",
                "type": "function",
                "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
            }
            for i, call in enumerate(response.tool_calls)
        ]
    elif response.text == "":
        message["content"] = ""
    return {
        "id": _id("chatcmpl-", request_id, response.id),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": response.model or model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": _finish(response.finish_reason),
                "logprobs": None,
            }
        ],
        "usage": _usage(response.usage),
    }


def text_completion(response: Response, model: str, request_id: str) -> dict[str, Any]:
    """A `text_completion` object."""
    return {
        "id": _id("cmpl-", request_id, response.id),
        "object": "text_completion",
        "created": int(time.time()),
        "model": response.model or model,
        "choices": [
            {
                "index": 0,
                "text": response.text,
                "finish_reason": _finish(response.finish_reason),
                "logprobs": None,
            }
        ],
        "usage": _usage(response.usage),
    }


class OpenAIStream:
    """A stream's chunks as OpenAI's SSE `data:` objects, for chat or text completions."""

    def __init__(self, model: str, request_id: str, *, chat: bool, include_usage: bool) -> None:
        self.model = model
        self.chat = chat
        self.include_usage = include_usage
        self.id = ("chatcmpl-" if chat else "cmpl-") + request_id
        self.created = int(time.time())
        self.usage: Usage | None = None
        self.served_model = ""
        self._started = False
        self._tool_ids: dict[int, str] = {}

    def _object(self, choices: list[dict[str, Any]], model: str = "") -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": model or self.model,
            "choices": choices,
        }

    def chunk(self, chunk: Chunk) -> list[dict[str, Any]]:
        """The objects one chunk becomes (none for an empty one)."""
        if chunk.usage is not None:
            self.usage = chunk.usage
        if chunk.model:
            self.served_model = chunk.model  # the usage chunk names it too, as every other chunk
        finish = _finish(chunk.finish_reason)
        if not self.chat:
            if not chunk.text and finish is None:
                return []
            choice = {"index": 0, "text": chunk.text, "finish_reason": finish, "logprobs": None}
            return [self._object([choice], chunk.model)]
        delta: dict[str, Any] = {}
        if not self._started:
            delta["role"] = "assistant"
            self._started = True
        if chunk.text or "role" in delta:
            delta["content"] = chunk.text
        if chunk.tool_calls:
            delta["tool_calls"] = [self._tool_delta(d) for d in chunk.tool_calls]
        if not delta and finish is None:
            return []
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return [self._object([choice], chunk.model)]

    def _tool_delta(self, d: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"index": d.index}
        if d.index not in self._tool_ids:  # OpenAI's first fragment of a call names it
            self._tool_ids[d.index] = d.id or f"call_{self.id[-12:]}_{d.index}"
            out.update(id=self._tool_ids[d.index], type="function")
        function: dict[str, Any] = {"arguments": d.arguments}
        if d.name:
            function["name"] = d.name
        out["function"] = function
        return out

    def end(self, response: Response | None) -> list[dict[str, Any]]:
        """What follows the last chunk: the usage chunk, when asked for."""
        if not self.include_usage:
            return []
        usage = response.usage if response is not None else self.usage or Usage()
        model = (response.model if response is not None else "") or self.served_model
        return [{**self._object([], model), "usage": _usage(usage)}]


# -- Anthropic Messages ---------------------------------------------------------------------------


def _anthropic_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, block in enumerate(content):
            if isinstance(block, dict) and block.get("type") == "text":
                if not isinstance(block.get("text", ""), str):
                    raise _invalid(f"'{where}.{j}.text' must be a string", f"{where}.{j}.text")
                texts.append(block.get("text", ""))
        return "".join(texts)
    raise _invalid(f"'{where}' must be a string or a list of content blocks", where)


def _anthropic_messages(raw_messages: list[Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, raw in enumerate(raw_messages):
        where = f"messages.{i}"
        if not isinstance(raw, dict):
            raise _invalid(f"'{where}' must be an object", where)
        role, content = raw.get("role"), raw.get("content")
        if role not in ("user", "assistant"):
            raise _invalid(f"'{where}.role' must be 'user' or 'assistant'", f"{where}.role")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise _invalid(f"'{where}.content' must be a string or a list of blocks", f"{where}.content")
        parts: list[dict[str, Any]] = []
        calls: list[dict[str, Any]] = []
        for j, block in enumerate(content):
            bwhere = f"{where}.content.{j}"
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                parts.append({"type": "text", "text": block.get("text")})
            elif kind == "image":
                source = block.get("source") or {}
                if not isinstance(source, dict):
                    raise _invalid(f"'{bwhere}.source' must be an object", f"{bwhere}.source")
                if source.get("type") == "base64":
                    url = f"data:{source.get('media_type')};base64,{source.get('data')}"
                    parts.append({"type": "image", "url": url, "media_type": source.get("media_type")})
                else:
                    parts.append({"type": "image", "url": source.get("url")})
            elif kind == "tool_use" and role == "assistant":
                calls.append(
                    {"id": block.get("id", ""), "name": block.get("name"), "arguments": block.get("input")}
                )
            elif kind == "tool_result" and role == "user":
                text = _anthropic_text(block.get("content", ""), f"{bwhere}.content")
                out.append({"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": text})
            else:
                raise _invalid(f"'{bwhere}.type' {kind!r} is not supported here", f"{bwhere}.type")
        if parts or calls:
            message: dict[str, Any] = {"role": role, "content": parts or None}
            if calls:
                message["tool_calls"] = calls
            out.append(message)
    return out


def _anthropic_tool_choice(choice: Any) -> Any:
    if choice is None:
        return None
    if not isinstance(choice, dict):
        raise _invalid("'tool_choice' must be an object", "tool_choice")
    kind = choice.get("type")
    if kind == "tool":
        return choice.get("name")
    mapped = {"auto": "auto", "any": "required", "none": "none"}.get(str(kind))
    if mapped is None:
        raise _invalid("'tool_choice.type' must be auto, any, tool or none", "tool_choice.type")
    return mapped


def parse_anthropic_messages(
    body: Any, timeout_s: float | None = None, headers: Mapping[str, str] | None = None
) -> GatewayCall:
    """A `POST /v1/messages` body in Anthropic's Messages format."""
    body = _body(body)
    model = _model(body)
    stream = _flag(body, "stream")
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise _invalid("'messages' must be a non-empty list of messages", "messages")
    if body.get("max_tokens") is None:
        raise _invalid("'max_tokens' is required", "max_tokens")
    messages = _anthropic_messages(raw_messages)
    if body.get("system"):
        messages.insert(0, {"role": "system", "content": _anthropic_text(body["system"], "system")})
    known = {"model", "messages", "max_tokens", "system", "stream", "temperature", "top_p", "stop_sequences"}
    known |= {"tools", "tool_choice", "metadata", "nova"}
    params: dict[str, Any] = {k: body[k] for k in ("temperature", "top_p") if body.get(k) is not None}
    if body.get("stop_sequences") is not None:
        params["stop"] = body["stop_sequences"]
    if body.get("tools") is not None:
        params["tools"] = body["tools"]
    choice = _anthropic_tool_choice(body.get("tool_choice"))
    if choice is not None:
        params["tool_choice"] = choice
    extra = {k: v for k, v in body.items() if k not in known}
    request = _build(
        lambda: ChatRequest(
            model=model,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=body["max_tokens"],
            extra=extra,
            **params,
        ),
        "messages",
    )
    kind = StreamCall if stream else ChatCall
    return GatewayCall(
        kind(request=request, options=_options(body, timeout_s, headers)), model, stream, False
    )


_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def _stop_reason(reason: str | None) -> str:
    return _STOP_REASONS.get(reason or "", "end_turn")


def _anthropic_usage(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens - usage.cached_input_tokens - usage.cache_write_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_input_tokens": usage.cached_input_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
    }


def anthropic_message(response: Response, model: str, request_id: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if response.text:
        content.append({"type": "text", "text": response.text})
    for i, call in enumerate(response.tool_calls):
        content.append(
            {
                "type": "tool_use",
                "id": call.id or f"toolu_{request_id[:12]}_{i}",
                "name": call.name,
                "input": call.arguments,
            }
        )
    return {
        "id": _id("msg_", request_id, response.id),
        "type": "message",
        "role": "assistant",
        "model": response.model or model,
        "content": content,
        "stop_reason": _stop_reason(response.finish_reason),
        "stop_sequence": None,
        "usage": _anthropic_usage(response.usage),
    }


@dataclass
class AnthropicStream:
    """A stream's chunks as Anthropic's named SSE events (message_start … message_stop)."""

    model: str
    request_id: str
    _block: int = -1  # index of the open content block
    _open: str | None = None  # "text" or "tool_use"
    _tools: dict[int, int] = field(default_factory=dict)  # tool call index -> its block
    _started: bool = False
    _finish: str | None = None
    usage: Usage | None = None

    def start(self) -> list[tuple[str, dict[str, Any]]]:
        self._started = True
        message: dict[str, Any] = {
            "id": f"msg_{self.request_id}",
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return [("message_start", {"type": "message_start", "message": message})]

    def _close(self) -> list[tuple[str, dict[str, Any]]]:
        if self._open is None:
            return []
        self._open = None
        return [("content_block_stop", {"type": "content_block_stop", "index": self._block})]

    def _new_block(self, block: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        events = self._close()
        self._block += 1
        self._open = block["type"]
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": self._block, "content_block": block},
            )
        )
        return events

    def chunk(self, chunk: Chunk) -> list[tuple[str, dict[str, Any]]]:
        events = [] if self._started else self.start()
        if chunk.usage is not None:
            self.usage = chunk.usage
        if chunk.finish_reason is not None:
            self._finish = chunk.finish_reason
        if chunk.text:
            if self._open != "text":
                events += self._new_block({"type": "text", "text": ""})
            delta = {"type": "text_delta", "text": chunk.text}
            events.append(
                ("content_block_delta", {"type": "content_block_delta", "index": self._block, "delta": delta})
            )
        for d in chunk.tool_calls:
            if d.index not in self._tools:
                block = {"type": "tool_use", "id": d.id or f"toolu_{self.request_id[:12]}_{d.index}"}
                events += self._new_block({**block, "name": d.name or "", "input": {}})
                self._tools[d.index] = self._block
            if d.arguments:
                delta = {"type": "input_json_delta", "partial_json": d.arguments}
                event = {"type": "content_block_delta", "index": self._tools[d.index], "delta": delta}
                events.append(("content_block_delta", event))
        return events

    def end(self, response: Response | None) -> list[tuple[str, dict[str, Any]]]:
        events = [] if self._started else self.start()
        events += self._close()
        usage = response.usage if response is not None else self.usage or Usage()
        reason = response.finish_reason if response is not None else self._finish
        delta = {"stop_reason": _stop_reason(reason), "stop_sequence": None}
        events.append(
            (
                "message_delta",
                {"type": "message_delta", "delta": delta, "usage": {"output_tokens": usage.output_tokens}},
            )
        )
        events.append(("message_stop", {"type": "message_stop"}))
        return events


# -- errors ---------------------------------------------------------------------------------------

# Most specific first: the first class an error is an instance of decides.
_STATUS: tuple[tuple[type[errors.NovaError], int, str], ...] = (
    (errors.RequestTooLargeError, 413, "invalid_request_error"),
    (errors.ContentFilterError, 400, "invalid_request_error"),
    (errors.InvalidInputError, 400, "invalid_request_error"),
    (errors.UnknownDriverError, 404, "not_found_error"),
    (errors.NotFoundError, 404, "not_found_error"),
    (errors.InvalidRequestError, 400, "invalid_request_error"),
    (errors.PermissionDeniedError, 403, "permission_error"),
    # the service refused the gateway's own key: the gateway's fault, never the caller's 401
    (errors.AuthenticationError, 502, "api_error"),
    (errors.RateLimitError, 429, "rate_limit_error"),
    (errors.RateLimitExceededError, 429, "rate_limit_error"),
    (errors.RequestTimeoutError, 504, "timeout_error"),
    (errors.AllTargetsFailedError, 503, "overloaded_error"),
    (errors.CircuitOpenError, 503, "overloaded_error"),
    (errors.DriverUnavailableError, 503, "overloaded_error"),
    (errors.LocalOverloadError, 503, "overloaded_error"),
    (errors.OverloadedError, 503, "overloaded_error"),
    (errors.ServerError, 502, "api_error"),
    (errors.TransportError, 502, "api_error"),
    (errors.ResponseError, 502, "api_error"),
    (errors.ConfigurationError, 400, "invalid_request_error"),
)


def error_status(error: errors.NovaError) -> tuple[int, str]:
    """The HTTP status for a Nova error and the error type both formats share."""
    for cls, status, kind in _STATUS:
        if isinstance(error, cls):
            return status, kind
    return 500, "api_error"


def retry_after(error: errors.NovaError) -> str | None:
    """The Retry-After header (whole seconds) for an error that knows when to try again."""
    seconds = error.retry_after
    if seconds is None:
        seconds = next((e.retry_after for e in getattr(error, "errors", []) if e.retry_after), None)
    return None if seconds is None else str(max(1, math.ceil(seconds)))


def _message(error: errors.NovaError) -> str:
    return str(error)  # NovaError masks keys in its message


def openai_error(error: errors.NovaError) -> tuple[int, dict[str, Any]]:
    """The status and OpenAI's error body ({"error": {message, type, code, param}})."""
    status, kind = error_status(error)
    param = error.details.get("field") if isinstance(error, errors.InvalidInputError) else None
    body = {
        "message": _message(error),
        "type": kind,
        "code": error.code or type(error).__name__,
        "param": param,
    }
    return status, {"error": body}


def anthropic_error(error: errors.NovaError) -> tuple[int, dict[str, Any]]:
    """The status and Anthropic's error body ({"type": "error", "error": {type, message}})."""
    status, kind = error_status(error)
    if status == 413:
        kind = "request_too_large"
    elif status == 401:
        kind = "authentication_error"
    return status, {"type": "error", "error": {"type": kind, "message": _message(error)}}


def nova_headers(response: Response, request_id: str) -> dict[str, str]:
    """What Nova knows about an answer beyond the wire format, as response headers."""
    headers = {
        "X-Request-Id": request_id,
        "X-Nova-Driver": response.driver,
        "X-Nova-Cached": "true" if response.cached else "false",
        "X-Nova-Attempts": str(len(response.attempts) or 1),
    }
    if response.cost_usd is not None:
        headers["X-Nova-Cost-USD"] = f"{response.cost_usd:.10f}".rstrip("0").rstrip(".")
    return headers


# -- models and metrics ---------------------------------------------------------------------------


def model_list(drivers: dict[str, tuple[str, str]], created: int = 0) -> dict[str, Any]:
    """`GET /v1/models`: each configured driver (name -> (kind, default model)) and its model
    string; every id works as `model`."""
    data = []
    for name in sorted(drivers):
        kind, model = drivers[name]
        ids = [f"{name}/{model}"] if model else []
        ids.append(name)
        for id_ in ids:
            data.append({"id": id_, "object": "model", "created": created, "owned_by": f"nova:{kind}"})
    return {"object": "list", "data": data}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


_COUNTERS = (
    ("requests", "nova_requests_total", "Calls started"),
    ("completed", "nova_requests_completed_total", "Calls answered with a response"),
    ("failed", "nova_requests_failed_total", "Calls answered with an error"),
    ("cache_hits", "nova_cache_hits_total", "Calls answered from the cache"),
    ("cache_misses", "nova_cache_misses_total", "Cacheable calls the cache did not hold"),
    ("cache_coalesced", "nova_cache_coalesced_total", "Calls joined to an identical call in flight"),
    ("retries", "nova_retries_total", "Attempts after the first"),
    ("fallbacks", "nova_fallbacks_total", "Moves to the next fallback target"),
    ("ratelimit_delayed", "nova_ratelimit_delayed_total", "Calls queued by the rate limiter"),
    ("ratelimit_rejected", "nova_ratelimit_rejected_total", "Calls refused by the rate limiter"),
    ("upstream_calls", "nova_upstream_calls_total", "Requests sent to services"),
    ("upstream_failures", "nova_upstream_failures_total", "Requests to services that failed"),
)


def prometheus_text(snapshot: dict[str, Any], gateway: dict[tuple[str, int], int] | None = None) -> str:
    """Nova's metrics snapshot (`MetricsSnapshot` as JSON) in Prometheus' text format, and the
    gateway's own request counts by (route, status)."""
    targets: list[dict[str, Any]] = list(snapshot.get("targets", ()))
    lines: list[str] = []

    def family(name: str, kind: str, help_: str, rows: Iterable[tuple[str, float]]) -> None:
        rows = list(rows)
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(
            f"{name}{labels} {value:g}" if isinstance(value, float) else f"{name}{labels} {value}"
            for labels, value in rows
        )

    def per_target(key: str) -> list[tuple[str, Any]]:
        return [(_labels(driver=t["driver"], model=t["model"]), t.get(key, 0)) for t in targets]

    for key, name, help_ in _COUNTERS:
        family(name, "counter", help_, per_target(key))
    family("nova_requests_in_flight", "gauge", "Calls in flight", per_target("in_flight"))
    family("nova_cost_usd_total", "counter", "Cost of answered calls in US dollars", per_target("cost_usd"))
    family(
        "nova_tokens_total",
        "counter",
        "Tokens by kind",
        [
            (_labels(driver=t["driver"], model=t["model"], kind=kind), n)
            for t in targets
            for kind, n in sorted(t.get("tokens", {}).items())
        ],
    )
    family(
        "nova_errors_total",
        "counter",
        "Failed calls by error class",
        [
            (_labels(driver=t["driver"], model=t["model"], type=kind), n)
            for t in targets
            for kind, n in sorted(t.get("errors_by_type", {}).items())
        ],
    )
    for key, name, help_ in (
        ("latency_s", "nova_request_latency_seconds", "Call latency"),
        ("ttfc_s", "nova_time_to_first_chunk_seconds", "Time to a stream's first chunk"),
    ):
        rows: list[tuple[str, Any]] = []
        for t in targets:
            summary = t.get(key) or {}
            for q in ("p50", "p95", "p99"):
                if summary.get(q) is not None:
                    labels = _labels(driver=t["driver"], model=t["model"], quantile=f"0.{q[1:]}")
                    rows.append((labels, float(summary[q])))
            rows.append(
                (
                    _labels(driver=t["driver"], model=t["model"]).replace("{", "_sum{", 1),
                    float(summary.get("sum", 0.0)),
                )
            )
            rows.append(
                (
                    _labels(driver=t["driver"], model=t["model"]).replace("{", "_count{", 1),
                    summary.get("count", 0),
                )
            )
        family(name, "summary", help_, rows)
    family(
        "nova_supervisor_restarts_total",
        "counter",
        "Actors restarted by their supervisor",
        [("", snapshot.get("supervisor_restarts", 0))],
    )
    if gateway is not None:
        family(
            "nova_gateway_requests_total",
            "counter",
            "HTTP requests the gateway answered, by route and status",
            [(_labels(route=route, status=str(status)), n) for (route, status), n in sorted(gateway.items())],
        )
    return "\n".join(lines) + "\n"
