"""Speaks Anthropic's Messages API (`POST /v1/messages`), plain and streamed.

The request body is built in `_request`, replies are read in `_reply`; this module sends them and
maps errors. Choices beyond a plain mapping:

- `system` messages go to the top-level `system` field (joined by blank lines, wherever they sat);
  consecutive turns of the same role are merged; tool results travel as `tool_result` blocks in a
  user turn, placed first as the API demands; `max_tokens` is always sent (`default_max_tokens`
  when the request has none).
- Not sent, on purpose: `seed` (Anthropic has none; a fallback chain passes one request to every
  driver, so refusing it would break fallback) and `response_format={"type": "json_object"}` (no
  schema-less JSON mode). A `json_schema` format becomes `output_config.format`. `extra` is merged
  into the body last and unchanged, so anything else (`top_k`, `thinking`, …) can be sent.
- `complete()` sends the prompt as one user message: Anthropic retired its legacy completion API.
  `stream()` of a `CompletionRequest` does the same.
- A 400 "credit balance is too low" is `QuotaExhaustedError` (it needs billing, not a retry).
- A mid-stream `event: error` of type `overloaded_error` raises `OverloadedError` (retryable, with
  `details["mid_stream"]`), as a 529 would; any other type raises `MidStreamError` carrying the
  service's error `type`, retryable for api / timeout / rate-limit errors. Either comes after the
  chunks already yielded. A stream that ends without `message_stop` raises `IncompleteStreamError`.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from typing import Any, ClassVar, cast

from nova import errors
from nova.drivers._decoders import SSEDecoder
from nova.drivers._errors import error_fields
from nova.drivers.anthropic._reply import StreamState, finish_reason, parse_response, usage_from
from nova.drivers.anthropic._request import as_chat, request_body
from nova.drivers.base import HTTPDriver, with_rate_limits
from nova.secrets import Secret
from nova.types import ChatRequest, Chunk, CompletionRequest, Response

__all__ = ["AnthropicDriver", "finish_reason", "usage_from"]

_PATH = "/v1/messages"


class AnthropicDriver(HTTPDriver):
    """Anthropic Messages. The key comes from `api_key`, else `ANTHROPIC_API_KEY`; `base_url` is
    the host without `/v1`, as in Anthropic's SDK."""

    name: ClassVar[str] = "anthropic"
    default_base_url: ClassVar[str] = "https://api.anthropic.com"
    request_id_header: ClassVar[str] = "request-id"

    def __init__(
        self,
        *,
        api_key: str | Secret | None = None,
        api_version: str = "2023-06-01",
        default_max_tokens: int = 4096,
        headers: Mapping[str, str] | None = None,
        **options: Any,
    ) -> None:
        if api_key is None:
            api_key = os.environ.get("ANTHROPIC_API_KEY") or None
        headers = {"anthropic-version": api_version, **(headers or {})}
        super().__init__(api_key=api_key, headers=headers, **options)
        self.api_version = api_version
        self.default_max_tokens = default_max_tokens

    def auth_headers(self) -> dict[str, str]:
        return {"x-api-key": self.api_key.reveal()} if self.api_key else {}

    def map_error(
        self, status: int, body: Any, raw_text: str, headers: Mapping[str, str], model: str
    ) -> errors.NovaError:
        message, kind, code = error_fields(body, raw_text)
        request_id = headers.get(self.request_id_header)
        if request_id is None and isinstance(body, dict) and isinstance(body.get("request_id"), str):
            request_id = body["request_id"]  # 2025+ error bodies repeat it at the top level
        error = self.service_error(status, message, kind, code, headers, model, request_id)
        if status == 400 and "credit balance is too low" in message.lower():
            # An empty prepaid balance comes as a 400 (recorded in anthropics/claude-code#66314).
            keep = (
                "driver",
                "model",
                "status_code",
                "request_id",
                "type",
                "code",
                "retry_after",
                "rate_limits",
            )
            error = errors.QuotaExhaustedError(message, **{k: getattr(error, k) for k in keep})
        return error

    # -- the driver API -------------------------------------------------------------------------

    def request_body(self, request: ChatRequest, model: str, *, stream: bool = False) -> dict[str, Any]:
        return request_body(request, model, max_tokens=self.default_max_tokens, stream=stream)

    async def chat(self, request: ChatRequest) -> Response:
        model = self.model_for(request)
        data, headers = await self.post_json(_PATH, self.request_body(request, model), model)
        response = parse_response(
            data, driver=self.name, model=model, request_id=headers.get(self.request_id_header)
        )
        return with_rate_limits(response, headers)

    async def complete(self, request: CompletionRequest) -> Response:
        return await self.chat(as_chat(request))

    async def stream(self, request: ChatRequest | CompletionRequest) -> AsyncIterator[Chunk]:
        if isinstance(request, CompletionRequest):
            request = as_chat(request)
        model = self.model_for(request)
        body = self.request_body(request, model, stream=True)
        state = StreamState(
            driver=self.name, model=model, map_error=lambda s, b, t: self.map_error(s, b, t, {}, model)
        )
        decoder = SSEDecoder()
        pieces = cast(AsyncGenerator[bytes, None], self.post_stream(_PATH, body, model))
        async with aclosing(pieces):  # release the connection as soon as the caller stops
            async for piece in pieces:
                state.note_raw(piece)
                for event in decoder.feed(piece):
                    chunk = state.on_event(event)
                    if chunk is not None:
                        yield chunk
                    if state.finished:
                        return
        raise state.incomplete()
