"""The cache key: a stable hash of everything that can change a model's answer.

`cache_key(driver, request)` is the SHA-256 (hex) of canonical JSON (sorted keys, no spaces, UTF-8)
holding:

- `v`: the key format version (bumped when canonicalisation changes, so old entries simply miss);
- `driver`: the driver name as configured ("openai", "my-vllm"…): two endpoints serving one model name
  may answer differently;
- `kind`: "chat" or "completion";
- `model`: as given. The caller resolves an empty model to the driver's default *before* keying,
  otherwise changing the default model in config would serve the old model's answers;
- `messages` (chat): for each message its role, content, tool calls (id, name, arguments),
  `tool_call_id` and `name`. A content made of a single text part keys like the plain string;
  `prompt` (completion);
- `temperature`, `max_tokens`, `top_p`, `stop`, `seed`, `tools` (name, description, parameters, in
  order), `tool_choice`, `response_format`, `extra`.

Canonical forms make identical requests built differently hit: dicts or models, `stop="x"` or
`("x",)` (stop sequences are a set: sorted and de-duplicated; empty is None), OpenAI- or
Anthropic-shaped tools. Left out because they do not change the answer: `Message.pinned` (a hint to
context trimming, never sent to the service), streaming (a streamed and a plain call share entries),
and the bookkeeping keys of `extra` in `IGNORED_EXTRA_KEYS` (end-user ids, metadata, storage and
service-tier switches). Everything else in `extra` counts: an unknown key might change the answer.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from nova.errors import InvalidInputError
from nova.types import ChatRequest, CompletionRequest, Message, TextPart

__all__ = ["IGNORED_EXTRA_KEYS", "KEY_VERSION", "cache_key", "canonical_request"]

KEY_VERSION = 1
IGNORED_EXTRA_KEYS = frozenset(
    {"user", "metadata", "store", "stream_options", "service_tier", "prompt_cache_key", "safety_identifier"}
)


def cache_key(driver: str, request: ChatRequest | CompletionRequest) -> str:
    """The hex SHA-256 of the canonical form of `request` sent to `driver` (see the module docstring)."""
    try:
        text = json.dumps(
            canonical_request(driver, request),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )
    except (TypeError, ValueError) as exc:  # only `extra` can hold values JSON cannot carry
        raise InvalidInputError(
            f"request.extra cannot be used in a cache key: {exc}", field="extra", driver=driver
        ) from None
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def canonical_request(driver: str, request: ChatRequest | CompletionRequest) -> dict[str, Any]:
    """The JSON-able dict that `cache_key` hashes; exposed so that a key can be explained."""
    body: dict[str, Any] = {
        "v": KEY_VERSION,
        "driver": driver,
        "model": request.model,
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
        "top_p": request.top_p,
        "stop": sorted(set(request.stop)) if request.stop else None,
        "seed": request.seed,
        "extra": {k: v for k, v in request.extra.items() if k not in IGNORED_EXTRA_KEYS},
    }
    if isinstance(request, ChatRequest):
        body["kind"] = "chat"
        body["messages"] = [_canonical_message(m) for m in request.messages]
        body["tools"] = [t.model_dump(mode="json") for t in request.tools]
        body["tool_choice"] = request.tool_choice
        body["response_format"] = request.response_format
    else:
        body["kind"] = "completion"
        body["prompt"] = request.prompt
    return body


def _canonical_message(message: Message) -> dict[str, Any]:
    content: Any = message.content
    if isinstance(content, tuple):
        if len(content) == 1 and isinstance(content[0], TextPart):
            content = content[0].text  # services read one text part exactly like a plain string
        else:
            content = [part.model_dump(mode="json") for part in content]
    return {
        "role": message.role,
        "content": content,
        "tool_calls": [c.model_dump(mode="json") for c in message.tool_calls],
        "tool_call_id": message.tool_call_id,
        "name": message.name,
    }
