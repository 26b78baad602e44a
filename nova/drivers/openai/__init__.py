"""Speaks OpenAI's Chat Completions and legacy Completions APIs, plain and streamed (SSE).

Bodies are built and replies read in `_wire`, stream events in `_stream`; this module sends them
and maps errors. Choices where the spec is silent:

- `max_completion_tokens` replaces `max_tokens` for o1/o3/o4/gpt-5 models (they reject max_tokens)
  and for any model with `use_max_completion_tokens=True`. `extra` is merged last, unchanged.
- A refusal (`message.refusal`) with no content becomes the text, with finish_reason "content_filter"
  (the raw finish_reason is kept): the caller sees the model's words and can tell it refused.
- Tool-call arguments that are not a JSON object raise `MalformedResponseError`, retryable unless
  finish_reason is "length" (the model ran out of tokens mid-arguments; a retry would too).
- An error object inside a 200 (body or stream) is classified by its `type` / integer `code` as if it
  had come with that status; `status_code` stays the real one. In a stream it is a `MidStreamError`
  whose `retryable` and `details["classified_as"]` follow that classification.
- A stream is complete only when `[DONE]` arrives (also as a last line missing its blank line);
  `done_marker_required = False` (openai_compatible) also accepts a finish_reason then a clean end.
- A stream request answered with one plain JSON body (some servers ignore `stream`) is replayed as chunks.
- `stream()` also takes a `CompletionRequest` (legacy completions stream the same way).
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from typing import Any, ClassVar, cast

from nova import errors
from nova.drivers._decoders import SSEDecoder
from nova.drivers._errors import error_fields, malformed
from nova.drivers.base import HTTPDriver, with_rate_limits
from nova.drivers.openai._stream import StreamParser
from nova.drivers.openai._wire import (
    build_body,
    content_text,
    normalize_finish_reason,
    parse_tool_calls,
    parse_usage,
)
from nova.secrets import Secret
from nova.types import ChatRequest, Chunk, CompletionRequest, Response, Usage

__all__ = ["OpenAIDriver", "normalize_finish_reason", "parse_usage"]

_REASONING_MODELS = ("o1", "o3", "o4", "gpt-5")  # they reject max_tokens (400 unsupported_parameter)
# The status an error object's type stands for, for error objects that arrive inside a 200.
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
        api_key = api_key if api_key is not None else self._env("API_KEY")
        super().__init__(api_key=api_key, base_url=base_url or self._env("BASE_URL"), **options)
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
        request_id = headers.get(self.request_id_header)
        error = self.service_error(effective, message, kind, code, headers, model, request_id)
        error.status_code = status
        return error

    # -- hooks for OpenAI-compatible servers ----------------------------------------------------

    def uses_max_completion_tokens(self, model: str) -> bool:
        return self.use_max_completion_tokens or model.removeprefix("ft:").startswith(_REASONING_MODELS)

    def response_usage(self, data: dict[str, Any]) -> Usage:
        """The usage of a plain reply."""
        return parse_usage(data.get("usage"))

    def chunk_usage(self, data: dict[str, Any]) -> Usage | None:
        """The usage a stream chunk carries, if any (null on every chunk but the usage chunk)."""
        return parse_usage(data["usage"]) if isinstance(data.get("usage"), dict) else None

    # -- calls ----------------------------------------------------------------------------------

    def build_request(
        self, request: ChatRequest | CompletionRequest, model: str, *, stream: bool
    ) -> tuple[str, dict[str, Any]]:
        """The path and JSON body for a request."""
        chat = isinstance(request, ChatRequest)
        max_key = "max_completion_tokens" if chat and self.uses_max_completion_tokens(model) else "max_tokens"
        body = build_body(request, model, max_key=max_key, stream=stream, stream_usage=self.stream_usage)
        return ("/chat/completions" if chat else "/completions"), body

    async def chat(self, request: ChatRequest) -> Response:
        return await self._call(request)

    async def complete(self, request: CompletionRequest) -> Response:
        return await self._call(request)

    async def _call(self, request: ChatRequest | CompletionRequest) -> Response:
        model = self.model_for(request)
        path, body = self.build_request(request, model, stream=False)
        data, headers = await self.post_json(path, body, model)
        response = self.parse_response(data, model, headers.get(self.request_id_header))
        return with_rate_limits(response, headers)

    def parse_response(self, data: dict[str, Any], model: str, request_id: str | None = None) -> Response:
        choices = data.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else None
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(choice, dict) or not (isinstance(message, dict) or "text" in choice):
            raise malformed(
                f"the reply has no usable choice: {str(data)[:200]}",
                driver=self.name,
                model=model,
                status=200,
                request_id=request_id,
            )
        raw_finish = choice.get("finish_reason") if isinstance(choice.get("finish_reason"), str) else None
        if isinstance(message, dict):
            text, refusal = content_text(message.get("content")), message.get("refusal")
            calls = parse_tool_calls(message.get("tool_calls"), raw_finish, driver=self.name, model=model)
        else:  # legacy completions
            text, refusal, calls = content_text(choice.get("text")), None, ()
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

    async def stream(self, request: ChatRequest | CompletionRequest) -> AsyncIterator[Chunk]:
        model = self.model_for(request)
        path, body = self.build_request(request, model, stream=True)
        parser, decoder = StreamParser(self, model), SSEDecoder()
        # post_stream is an async generator: close it (and its connection) when the caller stops early
        pieces = cast(AsyncGenerator[bytes, None], self.post_stream(path, body, model))
        async with aclosing(pieces):
            async for piece in pieces:
                parser.saw_bytes(piece)
                for event in decoder.feed(piece):
                    if (chunk := parser.event(event.event, event.data)) is not None:
                        yield chunk
                    if parser.done:
                        break
                if parser.done:
                    break
        if parser.is_plain_body():
            for chunk in parser.replay_plain_body():
                yield chunk
            return
        yield parser.final(done_marker_required=self.done_marker_required)
