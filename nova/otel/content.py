"""Message content in the GenAI conventions' JSON shape, for the opt-in gen_ai.*.messages attributes.

Input is what `nova.events.message_content()` puts into `Event.data["content"]`: Nova message dicts
(role, content as a string or parts, tool_calls, tool_call_id), or a bare string.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["messages_json"]


def _parts(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    if message.get("role") == "tool":
        return [{"type": "tool_call_response", "id": message.get("tool_call_id"), "response": content}]
    parts: list[dict[str, Any]] = []
    if isinstance(content, str):
        parts.append({"type": "text", "content": content})
    elif isinstance(content, list | tuple):
        for part in content:
            if part.get("type") == "image":
                parts.append({"type": "uri", "modality": "image", "uri": part.get("url")})
            else:
                parts.append({"type": "text", "content": part.get("text", "")})
    for call in message.get("tool_calls") or ():
        parts.append(
            {
                "type": "tool_call",
                "id": call.get("id"),
                "name": call.get("name"),
                "arguments": call.get("arguments"),
            }
        )
    return parts


def messages_json(content: Any, *, output: bool, finish_reason: Any = None) -> str:
    """Nova message dicts (`nova.events.message_content`) as the semconv JSON message schema."""
    if isinstance(content, str):
        content = [{"role": "assistant" if output else "user", "content": content}]
    elif isinstance(content, dict):
        content = [content]
    out = []
    for message in content or ():
        item: dict[str, Any] = {
            "role": message.get("role", "assistant" if output else "user"),
            "parts": _parts(message),
        }
        if output:
            item["finish_reason"] = finish_reason or "stop"
        out.append(item)
    return json.dumps(out, ensure_ascii=False, default=str)
