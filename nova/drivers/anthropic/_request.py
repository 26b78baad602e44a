"""Builds the body of a Messages API request from a Nova `ChatRequest`."""

from __future__ import annotations

import binascii
import re
from base64 import b64decode
from typing import Any

from nova import errors
from nova.types import ChatRequest, CompletionRequest, ImagePart, Message, TextPart

__all__ = ["as_chat", "request_body"]

_TOOL_CHOICE = {"auto": {"type": "auto"}, "none": {"type": "none"}, "required": {"type": "any"}}
_DATA_URL = re.compile(r"data:(?P<type>[\w/+.-]+)?(?:;[^,;]*)*;base64,(?P<data>.*)", re.DOTALL)


def request_body(
    request: ChatRequest, model: str, *, max_tokens: int, stream: bool = False
) -> dict[str, Any]:
    """The JSON body; `max_tokens` is the default used when the request sets none."""
    system = [m.text for m in request.messages if m.role == "system"]
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": max_tokens if request.max_tokens is None else request.max_tokens,
        "messages": _turns([m for m in request.messages if m.role != "system"]),
    }
    if system:
        body["system"] = "\n\n".join(system)
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop:
        body["stop_sequences"] = list(request.stop)
    if request.tools:
        body["tools"] = [
            {
                "name": t.name,
                **({"description": t.description} if t.description else {}),
                "input_schema": t.parameters,
            }
            for t in request.tools
        ]
    if request.tool_choice:
        choice = _TOOL_CHOICE.get(request.tool_choice)
        body["tool_choice"] = choice or {"type": "tool", "name": request.tool_choice}
    fmt = request.response_format or {}
    if fmt.get("type") == "json_schema" and isinstance(fmt.get("json_schema"), dict):
        schema = fmt["json_schema"].get("schema", {})
        body["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    if stream:
        body["stream"] = True
    body.update(request.extra)
    return body


def as_chat(request: CompletionRequest) -> ChatRequest:
    """A completion as a chat of one user message (Anthropic has no completion API any more)."""
    fields = request.model_dump(exclude={"prompt"})
    return ChatRequest(**fields, messages=(Message(role="user", content=request.prompt),))


def _turns(messages: list[Message]) -> list[dict[str, Any]]:
    """User / assistant turns, same-role neighbours merged, tool results first in their turn."""
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = "assistant" if message.role == "assistant" else "user"
        blocks = _blocks(message)
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        blocks = sorted(turn["content"], key=lambda b: b["type"] != "tool_result")  # stable
        if len(blocks) == 1 and blocks[0]["type"] == "text":
            turn["content"] = blocks[0]["text"]  # the plain form, as people write it by hand
        else:  # the API rejects empty text blocks (an assistant turn of only tool calls has one)
            turn["content"] = [b for b in blocks if b["type"] != "text" or b["text"]] or blocks
    return turns


def _blocks(message: Message) -> list[dict[str, Any]]:
    content = _content_blocks(message)
    if message.role == "tool":
        result = content if not isinstance(message.content, str) else message.content
        return [{"type": "tool_result", "tool_use_id": message.tool_call_id, "content": result}]
    calls = [
        {"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments} for c in message.tool_calls
    ]
    return content + calls


def _content_blocks(message: Message) -> list[dict[str, Any]]:
    if message.content is None:
        return []
    if isinstance(message.content, str):
        return [{"type": "text", "text": message.content}]
    blocks: list[dict[str, Any]] = []
    for part in message.content:
        if isinstance(part, TextPart):
            blocks.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            blocks.append({"type": "image", "source": _image_source(part)})
    return blocks


def _image_source(part: ImagePart) -> dict[str, Any]:
    if not part.url.startswith("data:"):
        return {"type": "url", "url": part.url}
    match = _DATA_URL.fullmatch(part.url)
    media_type = (match.group("type") if match else None) or part.media_type
    try:
        if match is None or not media_type:
            raise ValueError
        b64decode(match.group("data"), validate=True)
    except (ValueError, binascii.Error):
        raise errors.InvalidInputError(
            "an image data: URL must look like data:<media type>;base64,<data>",
            driver="anthropic",
            field="messages.content.url",
        ) from None
    return {"type": "base64", "media_type": media_type, "data": match.group("data")}
