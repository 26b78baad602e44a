"""A scriptable, deterministic driver for tests and for running Nova offline.

Replies come, in order of precedence, from: the call's `extra={"test_reply": …}`; the queue given
as `replies=[…]` or added with `push(…)`; the `handler` function; else an echo of the last user
message. A reply is any of:

- a string: the answer text;
- a `Response`, or a `NovaError` instance (raised);
- a dict, the form config files and other processes can use:
  {"text": "…", "error": "RateLimitError", "message": "…", "status_code": 429, "retry_after": 1.5,
   "delay": 0.2, "finish_reason": "length", "tool_calls": [{"name": "f", "arguments": {}}],
   "usage": {"input_tokens": 3, "output_tokens": 5}, "fail_after_chunks": 2}
- a callable taking the request and returning any of the above.

Streams split the text into word chunks (`chunk_delay` seconds apart); `fail_after_chunks` breaks
the stream with the reply's error (default `IncompleteStreamError`) after that many chunks.
"""

from __future__ import annotations

import asyncio
import difflib
import importlib
import json
import math
import re
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from nova import errors
from nova.drivers.base import Driver
from nova.types import ChatRequest, Chunk, CompletionRequest, Response, ToolCall, ToolCallDelta, Usage

__all__ = ["TestDriver"]

Reply = Any  # str | Response | NovaError | dict | Callable[[request], Reply]
_SPEC_KEYS = {
    "text",
    "error",
    "message",
    "status_code",
    "retry_after",
    "delay",
    "finish_reason",
    "tool_calls",
    "usage",
    "fail_after_chunks",
}
_WORDS = re.compile(r"\S+\s*|\s+")


def _estimate_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4)) if text else 0


def _load(handler: Callable[..., Any] | str | None) -> Callable[..., Any] | None:
    if isinstance(handler, str):
        module, _, attr = handler.partition(":")
        return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]
    return handler


class TestDriver(Driver):
    __test__ = False  # not a pytest test class
    name = "test"

    def __init__(
        self,
        *,
        model: str = "test-model",
        replies: list[Reply] | tuple[Reply, ...] = (),
        handler: Callable[..., Any] | str | None = None,
        latency: float = 0.0,
        chunk_delay: float = 0.0,
        **options: Any,
    ) -> None:
        super().__init__(model=model, **options)
        self._queue: deque[Reply] = deque(replies)
        self._handler = _load(handler)
        self.latency = latency
        self.chunk_delay = chunk_delay
        self.requests: list[ChatRequest | CompletionRequest] = []

    def push(self, *replies: Reply) -> None:
        self._queue.extend(replies)

    # -- the driver API -------------------------------------------------------------------------

    async def chat(self, request: ChatRequest) -> Response:
        spec, model = await self._next(request)
        return self._response(spec, request, model)

    async def complete(self, request: CompletionRequest) -> Response:
        spec, model = await self._next(request)
        return self._response(spec, request, model)

    async def stream(self, request: ChatRequest | CompletionRequest) -> AsyncIterator[Chunk]:
        spec, model = await self._next(request)
        response = self._response(spec, request, model, raise_error=False)
        fail_after = spec.get("fail_after_chunks")
        pieces = _WORDS.findall(response.text) or [""]
        for i, piece in enumerate(pieces):
            if fail_after is not None and i >= fail_after:
                raise self._error(spec, model, default="IncompleteStreamError")
            if i and self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            yield Chunk(text=piece, model=model, id=response.id)
        if fail_after is not None and fail_after >= len(pieces):
            raise self._error(spec, model, default="IncompleteStreamError")
        deltas = tuple(
            ToolCallDelta(index=i, id=c.id, name=c.name, arguments=json.dumps(c.arguments))
            for i, c in enumerate(response.tool_calls)
        )
        yield Chunk(
            tool_calls=deltas,
            finish_reason=response.finish_reason,
            raw_finish_reason=response.raw_finish_reason,
            usage=response.usage,
            model=model,
            id=response.id,
        )

    # -- scripting ------------------------------------------------------------------------------

    async def _next(self, request: ChatRequest | CompletionRequest) -> tuple[dict[str, Any], str]:
        model = self.model_for(request)
        self.requests.append(request)
        reply: Reply
        if "test_reply" in request.extra:
            reply = request.extra["test_reply"]
        elif self._queue:
            reply = self._queue.popleft()
        elif self._handler is not None:
            reply = self._handler
        else:
            reply = {"text": f"echo: {_prompt_text(request)}"}
        if callable(reply) and not isinstance(reply, (Response, errors.NovaError)):
            reply = reply(request)
        spec = _as_spec(reply)
        delay = self.latency + float(spec.get("delay", 0.0))
        if delay:
            await asyncio.sleep(delay)
        if "raise" in spec:
            raise spec["raise"]
        return spec, model

    def _error(self, spec: dict[str, Any], model: str, default: str) -> errors.NovaError:
        name = spec.get("error") or default
        cls = getattr(errors, name, None)
        if not (isinstance(cls, type) and issubclass(cls, errors.NovaError)):
            close = difflib.get_close_matches(str(name), errors.__all__, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return errors.InvalidInputError(
                f"test reply names unknown error class {name!r}{hint}", driver=self.name
            )
        return cls(
            spec.get("message", f"scripted {name}"),
            driver=self.name,
            model=model,
            status_code=spec.get("status_code"),
            retry_after=spec.get("retry_after"),
        )

    def _response(
        self,
        spec: dict[str, Any],
        request: ChatRequest | CompletionRequest,
        model: str,
        raise_error: bool = True,
    ) -> Response:
        if "response" in spec:
            return spec["response"]  # type: ignore[no-any-return]
        if spec.get("error") and (raise_error or spec.get("fail_after_chunks") is None):
            raise self._error(spec, model, default="ServerError")
        text = str(spec.get("text", ""))
        calls = tuple(ToolCall(**c) for c in spec.get("tool_calls", ()))
        usage = (
            Usage(**spec["usage"])
            if "usage" in spec
            else Usage(
                input_tokens=_estimate_tokens(_prompt_text(request, everything=True)),
                output_tokens=_estimate_tokens(text),
            )
        )
        finish: Any = spec.get("finish_reason") or ("tool_calls" if calls else "stop")
        return Response(
            text=text,
            finish_reason=finish,
            raw_finish_reason=finish,
            usage=usage,
            model=model,
            driver=self.name,
            id=f"test-{len(self.requests)}",
            tool_calls=calls,
        )


def _as_spec(reply: Reply) -> dict[str, Any]:
    if isinstance(reply, str):
        return {"text": reply}
    if isinstance(reply, Response):
        return {"response": reply}
    if isinstance(reply, errors.NovaError):
        return {"raise": reply}
    if isinstance(reply, dict):
        unknown = set(reply) - _SPEC_KEYS
        if unknown:  # a typo ("txt") would otherwise script an empty answer without a word
            hints = [difflib.get_close_matches(k, _SPEC_KEYS, n=1) for k in sorted(unknown)]
            said = ", ".join(
                f"{k!r}" + (f" (did you mean {h[0]!r}?)" if h else "")
                for k, h in zip(sorted(unknown), hints, strict=True)
            )
            raise errors.InvalidInputError(f"unknown key(s) in a test reply: {said}", driver="test")
        return reply
    raise errors.InvalidInputError(f"cannot use {type(reply).__name__} as a test reply", driver="test")


def _prompt_text(request: ChatRequest | CompletionRequest, everything: bool = False) -> str:
    if isinstance(request, CompletionRequest):
        return request.prompt
    if everything:
        return "\n".join(m.text for m in request.messages)
    users = [m for m in request.messages if m.role == "user"]
    return users[-1].text if users else request.messages[-1].text
