"""Conservative, offline token estimates of a request, for admission before the real usage is known.

The estimate is `(chars - CJK) / 3 + CJK` per text: measured at 1.13-1.65x the o200k count on
English, code, JSON, Chinese and Russian, so it never undercounted. An
overestimate only holds budget until the call ends and `RateLimiter.release` refunds it.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from nova.types import ChatRequest, CompletionRequest, ImagePart, Message

__all__ = ["IMAGE_TOKENS", "MESSAGE_OVERHEAD_TOKENS", "estimate_text_tokens", "estimate_tokens"]

# Role markers and separators per message (OpenAI's documented overhead is 3-4).
MESSAGE_OVERHEAD_TOKENS = 4
# One image: OpenAI high detail is up to ~1,100 tokens per 1024px tile set, Anthropic ~1,600 at most.
IMAGE_TOKENS = 1600

# CJK ideographs, kana, Hangul and full-width forms: about one token per character (or more).
_CJK = re.compile(
    "[\u1100-\u11ff\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u3100-\u31ff\u3200-\u4dbf"
    "\u4e00-\u9fff\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef"
    "\U00020000-\U0003134f]"
)


def estimate_text_tokens(text: str) -> int:
    """An upper-leaning estimate of the tokens in `text`."""
    if not text:
        return 0
    cjk = len(_CJK.findall(text))
    return math.ceil((len(text) - cjk) / 3) + cjk


def _json_tokens(value: Any) -> int:
    return estimate_text_tokens(json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str))


def _message_tokens(message: Message) -> int:
    tokens = MESSAGE_OVERHEAD_TOKENS + estimate_text_tokens(message.text)
    if isinstance(message.content, tuple):
        tokens += IMAGE_TOKENS * sum(isinstance(p, ImagePart) for p in message.content)
    for call in message.tool_calls:
        tokens += estimate_text_tokens(call.name) + _json_tokens(call.arguments)
    if message.name:
        tokens += estimate_text_tokens(message.name)
    return tokens


def estimate_tokens(request: ChatRequest | CompletionRequest, default_reply_tokens: int = 1024) -> int:
    """Prompt estimate plus the reply budget: `max_tokens`, or `default_reply_tokens` without it."""
    if isinstance(request, ChatRequest):
        prompt = sum(_message_tokens(m) for m in request.messages)
        if request.tools:
            prompt += _json_tokens([t.model_dump() for t in request.tools])
        if request.response_format:
            prompt += _json_tokens(request.response_format)
    else:
        prompt = estimate_text_tokens(request.prompt)
    reply = request.max_tokens if request.max_tokens is not None else default_reply_tokens
    return prompt + reply
