"""Canned OpenAI wire data for driver tests: replies, stream chunks and recorded error bodies.

Shapes follow OpenAI's API reference; the error bodies are abridged from recorded ones.
"""

from __future__ import annotations

import json
from typing import Any

KEY = "sk-test-abc123def456"
CHAT_ID = "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT"

USAGE_FULL = {
    "prompt_tokens": 1117,
    "completion_tokens": 46,
    "total_tokens": 1163,
    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 30,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}


def chat_reply(
    content: str | None = "Paris.",
    *,
    finish: str | None = "stop",
    tool_calls: list[dict[str, Any]] | None = None,
    refusal: str | None = None,
    usage: dict[str, Any] | None = None,
    model: str = "gpt-4o-mini-2024-07-18",
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": refusal, "annotations": []}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": CHAT_ID,
        "object": "chat.completion",
        "created": 1741569952,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": usage
        if usage is not None
        else {"prompt_tokens": 19, "completion_tokens": 2, "total_tokens": 21},
        "service_tier": "default",
        "system_fingerprint": None,
    }


def tool_call(name: str, arguments: str, call_id: str = "call_abc123") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def chunk(
    delta: dict[str, Any] | None = None,
    *,
    finish: str | None = None,
    choices: list[dict[str, Any]] | None = None,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One chat.completion.chunk; `choices=[]` with `usage` makes the usage chunk."""
    if choices is None:
        choices = [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}]
    return {
        "id": CHAT_ID,
        "object": "chat.completion.chunk",
        "created": 1741569952,
        "model": "gpt-4o-mini-2024-07-18",
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306",
        "choices": choices,
        "usage": usage,
        "obfuscation": "xk3",
    }


def text_stream(
    *pieces: str, finish: str = "stop", usage: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The chunks of a plain text answer: role chunk, pieces, finish chunk, usage chunk."""
    events = [chunk({"role": "assistant", "content": "", "refusal": None})]
    events += [chunk({"content": p}) for p in pieces]
    events.append(chunk({}, finish=finish))
    events.append(
        chunk(choices=[], usage=usage or {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12})
    )
    return events


def error_body(message: str, type_: str | None, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


CONTEXT_LENGTH = error_body(
    "This model's maximum context length is 8192 tokens. However, your messages resulted in 8227 tokens. "
    "Please reduce the length of the messages.",
    "invalid_request_error",
    "context_length_exceeded",
    "messages",
)
UNSUPPORTED_PARAMETER = error_body(
    "Unsupported parameter: 'max_tokens' is not supported with this model. "
    "Use 'max_completion_tokens' instead.",
    "invalid_request_error",
    "unsupported_parameter",
    "max_tokens",
)
INVALID_KEY = error_body(
    f"Incorrect API key provided: {KEY}. You can find your API key at "
    "https://platform.openai.com/account/api-keys.",
    "invalid_request_error",
    "invalid_api_key",
)
REGION = error_body("Country, region, or territory not supported", "request_forbidden", "unsupported_country")
MODEL_NOT_FOUND = error_body(
    "The model `gpt-9` does not exist or you do not have access to it.",
    "invalid_request_error",
    "model_not_found",
)
RATE_LIMIT = error_body(
    "Rate limit reached for gpt-4o in organization org-xyz on tokens per min (TPM): Limit 30000, Used 29937, "
    "Requested 385. Please try again in 644ms. Visit https://platform.openai.com/account/rate-limits "
    "to learn more. You can increase your rate limit by adding a payment method to your account at "
    "https://platform.openai.com/account/billing.",
    "tokens",
    "rate_limit_exceeded",
)
QUOTA = error_body(
    "You exceeded your current quota, please check your plan and billing details. For more information on "
    "this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
    "insufficient_quota",
    "insufficient_quota",
)
SERVER_ERROR = error_body(
    "The server had an error processing your request. Sorry about that! You can retry your request, or "
    "contact us through our help center at help.openai.com if you keep seeing this error.",
    "server_error",
    None,
)
OVERLOADED = error_body(
    "That model is currently overloaded with other requests. You can retry your request, or contact us "
    "through our help center at help.openai.com if the error persists.",
    "server_error",
    None,
)
HTML_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1>"
    "</center>\r\n<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n"
)
ENVOY_503 = "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
RATE_LIMIT_HEADERS = {
    "retry-after": "2",
    "x-ratelimit-limit-requests": "500",
    "x-ratelimit-remaining-requests": "499",
    "x-ratelimit-reset-requests": "120ms",
    "x-ratelimit-limit-tokens": "30000",
    "x-ratelimit-remaining-tokens": "0",
    "x-ratelimit-reset-tokens": "6m0s",
    "x-request-id": "req_0123456789abcdef0123456789abcdef",
}


def sse_utf8(*events: dict[str, Any], done: bool = True) -> bytes:
    """Like tests.fakeserver.sse, but with UTF-8 text left unescaped, as OpenAI sends it."""
    out = "".join(f"data: {json.dumps(e, ensure_ascii=False, separators=(',', ':'))}\n\n" for e in events)
    return (out + ("data: [DONE]\n\n" if done else "")).encode()
