"""Counts prompt tokens offline: the `TokenCounter` protocol and its conservative default.

The default `EstimatingCounter` needs no tokenizer files (tiktoken fetches its BPE files on first
use, so it fails offline). It counts `ceil((chars - dense) / 3 + dense)` per text, where *dense*
characters (code points from U+0800: CJK, kana, Hangul, Indic and Thai scripts, symbols, emoji) count
one token each and astral ones (most emoji) two. Against o200k_base the CJK form of this estimate
measured 1.13-1.65x (chat JSON 1.13, English markdown 1.23, Chinese 1.35, Python 1.65): it never
undercounted, which is what trimming needs; `chars / 4` undercounts chat JSON by 15 % and Chinese
by 3x. A counter of your own (e.g. tiktoken with a vendored BPE file) plugs in by "module:attr".
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from nova.errors import ConfigurationError
from nova.types import ChatRequest, CompletionRequest, ImagePart, Message

__all__ = ["EstimatingCounter", "TokenCounter", "load_counter"]


@runtime_checkable
class TokenCounter(Protocol):
    """Anything that counts tokens; it should overcount rather than undercount."""

    def count_text(self, text: str) -> int: ...

    def count_messages(self, messages: Sequence[Message]) -> int: ...


class EstimatingCounter:
    """A zero-dependency, conservative token estimate (see the module docstring for the figures).

    `per_message` covers the role and the separators around each message (OpenAI's cookbook: 3,
    +1 per name); `reply_priming` the tokens that open the answer; `image_tokens` one image (a
    1092x1092 image is ~1,600 tokens on Claude, up to ~1,100 on GPT-4o at high detail).
    """

    def __init__(self, *, per_message: int = 4, reply_priming: int = 3, image_tokens: int = 1600) -> None:
        self.per_message = per_message
        self.reply_priming = reply_priming
        self.image_tokens = image_tokens

    def count_text(self, text: str) -> int:
        if not text:
            return 0
        if text.isascii():  # the common case, and ~free
            return math.ceil(len(text) / 3)
        # Count by code point range with C-speed encodes instead of a regex (10x faster on CJK):
        # UTF-8 spends 1 byte below U+0080, 2 below U+0800, 3 below U+10000, 4 above.
        n = len(text)
        ascii_ = len(text.encode("ascii", "ignore"))
        astral = len(text.encode("utf-16-le", "surrogatepass")) // 2 - n
        utf8 = len(text.encode("utf-8", "surrogatepass"))
        dense = (utf8 - ascii_ - 4 * astral) - 2 * (n - ascii_ - astral)
        light = n - dense - astral
        return math.ceil(light / 3 + dense + 2 * astral)

    def count_message(self, message: Message) -> int:
        """One message without the reply priming; trimming adds these up."""
        n = self.per_message + self.count_text(message.text)
        if isinstance(message.content, tuple):
            n += self.image_tokens * sum(isinstance(p, ImagePart) for p in message.content)
        if message.name:
            n += 1 + self.count_text(message.name)
        if message.tool_call_id:
            n += self.count_text(message.tool_call_id)
        for call in message.tool_calls:
            n += 3 + self.count_text(call.id) + self.count_text(call.name)
            n += self.count_text(json.dumps(call.arguments, ensure_ascii=False))
        return n

    def count_messages(self, messages: Sequence[Message]) -> int:
        return self.reply_priming + sum(self.count_message(m) for m in messages)

    def count_request(self, request: ChatRequest | CompletionRequest) -> int:
        """The whole prompt of a request: messages, tool schemas and the response format."""
        if isinstance(request, CompletionRequest):
            return self.reply_priming + self.count_text(request.prompt)
        n = self.count_messages(request.messages)
        for tool in request.tools:
            n += self.count_text(json.dumps(tool.model_dump(), ensure_ascii=False))
        if request.response_format:
            n += self.count_text(json.dumps(request.response_format, ensure_ascii=False))
        return n


def load_counter(spec: str | None) -> TokenCounter:
    """The counter named by config: None is the default estimate, else "module:attr" naming a
    counter class (instantiated without arguments), a factory function, or a counter instance."""
    if spec is None:
        return EstimatingCounter()
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigurationError(f"token_counter must look like 'module:attr', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"token_counter {spec!r}: cannot import {module_name!r} ({exc})") from exc
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ConfigurationError(f"token_counter {spec!r}: {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    # A class satisfies the protocol check itself (its functions are attributes): instantiate it.
    if isinstance(target, type) or (callable(target) and not isinstance(target, TokenCounter)):
        try:
            target = target()
        except Exception as exc:
            raise ConfigurationError(f"token_counter {spec!r} could not be created: {exc}") from exc
    counter = target
    if not isinstance(counter, TokenCounter):
        raise ConfigurationError(
            f"token_counter {spec!r} is not a token counter (needs count_text and count_messages)"
        )
    return counter
