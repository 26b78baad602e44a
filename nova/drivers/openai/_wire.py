"""OpenAI's wire format as plain functions: Nova requests to JSON bodies, JSON replies to Nova types."""

from __future__ import annotations

import json
from typing import Any

from nova import errors
from nova.drivers._errors import malformed
from nova.types import (
    ChatRequest,
    CompletionRequest,
    FinishReason,
    ImagePart,
    Message,
    TextPart,
    Tool,
    ToolCall,
    Usage,
)

__all__ = [
    "build_body",
    "content_text",
    "normalize_finish_reason",
    "parse_tool_call",
    "parse_tool_calls",
    "parse_usage",
]

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


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


def content_text(content: Any) -> str:
    """The text of a `content` field: a string, null, or (some servers) a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
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


def _wire_tool(tool: Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.parameters}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


def _wire_tool_choice(choice: str) -> str | dict[str, Any]:
    if choice in ("auto", "none", "required"):
        return choice
    return {"type": "function", "function": {"name": choice}}


def build_body(
    request: ChatRequest | CompletionRequest, model: str, *, max_key: str, stream: bool, stream_usage: bool
) -> dict[str, Any]:
    """The JSON body; `max_key` names the field that carries `max_tokens`; `extra` is merged last."""
    body: dict[str, Any] = {"model": model}
    if isinstance(request, ChatRequest):
        body["messages"] = [_wire_message(m) for m in request.messages]
        if request.tools:
            body["tools"] = [_wire_tool(t) for t in request.tools]
        if request.tool_choice:
            body["tool_choice"] = _wire_tool_choice(request.tool_choice)
        if request.response_format is not None:
            body["response_format"] = request.response_format
    else:
        body["prompt"] = request.prompt
    fields = {
        "temperature": request.temperature,
        "top_p": request.top_p,
        "seed": request.seed,
        max_key: request.max_tokens,
        "stop": list(request.stop) if request.stop else None,
    }
    body.update({k: v for k, v in fields.items() if v is not None})
    if stream:
        body["stream"] = True
        if stream_usage:
            body["stream_options"] = {"include_usage": True}
    body.update(request.extra)  # last: the caller's model-specific fields win
    return body


def parse_tool_call(
    id_: str, name: str, arguments: Any, raw_finish: str | None, *, driver: str, model: str
) -> ToolCall:
    """A tool call whose arguments (a JSON string, or an object from some servers) must be a JSON object."""
    parsed: Any = {} if arguments is None else arguments
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            parsed = None
    if not isinstance(parsed, dict):
        cut = raw_finish == "length"  # the model ran out of tokens mid-arguments: a retry would too
        raise errors.MalformedResponseError(
            f"the arguments of tool call {name!r} are not a JSON object"
            + (" (cut off by the token limit)" if cut else ""),
            driver=driver,
            model=model,
            retryable=not cut,
            arguments=str(arguments)[:1000],
        )
    return ToolCall(id=id_, name=name, arguments=parsed)


def parse_tool_calls(raw: Any, raw_finish: str | None, *, driver: str, model: str) -> tuple[ToolCall, ...]:
    """`message.tool_calls` of a reply."""
    calls = []
    for item in (raw if isinstance(raw, list) else [raw]) if raw else []:
        function = item.get("function") if isinstance(item, dict) else None
        if not isinstance(function, dict) or not function.get("name"):
            why = f"a tool call has no function name: {json.dumps(item)[:200]}"
            raise malformed(why, driver=driver, model=model, status=200)
        call_id, name = str(item.get("id") or ""), str(function["name"])
        calls.append(
            parse_tool_call(call_id, name, function.get("arguments"), raw_finish, driver=driver, model=model)
        )
    return tuple(calls)
