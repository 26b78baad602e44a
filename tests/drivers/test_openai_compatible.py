"""The OpenAI-compatible driver against a real local server playing vLLM, llama.cpp, Ollama and Groq."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nova import errors
from nova.drivers import create_driver
from nova.drivers.openai_compatible import OpenAICompatibleDriver
from nova.types import ChatRequest, Chunk, Response, collect_chunks
from tests.conftest import arun
from tests.drivers import fixtures_openai as fx
from tests.fakeserver import FakeServer, Reply, sse

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "Hi"}]


def make(server: FakeServer, **options: Any) -> OpenAICompatibleDriver:
    options = {"timeout": 10.0, "stream_idle_timeout": 10.0, "model": "llama3.2", **options}
    return OpenAICompatibleDriver(base_url=f"{server.url}/v1", **options)


def chat(server: FakeServer, **options: Any) -> Response:
    async def go() -> Response:
        driver = make(server, **options)
        try:
            return await driver.chat(ChatRequest(messages=HI, max_tokens=32))
        finally:
            await driver.aclose()

    return arun(go())


def stream(server: FakeServer, into: list[Chunk] | None = None, **options: Any) -> list[Chunk]:
    chunks = [] if into is None else into

    async def go() -> list[Chunk]:
        driver = make(server, **options)
        try:
            async for c in driver.stream(ChatRequest(messages=HI)):
                chunks.append(c)
            return chunks
        finally:
            await driver.aclose()

    return arun(go())


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize("base_url", [None, "", "  "])
def test_base_url_is_required(base_url: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # never borrowed from OpenAI's settings
    with pytest.raises(errors.ConfigurationError, match="base_url"):
        OpenAICompatibleDriver(base_url=base_url)


def test_registry_builds_it_and_unknown_options_fail() -> None:
    driver = create_driver("openai_compatible", base_url="http://127.0.0.1:8000/v1", stream_usage=False)
    assert isinstance(driver, OpenAICompatibleDriver) and driver.name == "openai_compatible"
    with pytest.raises(errors.ConfigurationError, match="stream_usgae"):
        create_driver("openai_compatible", base_url="http://127.0.0.1:8000/v1", stream_usgae=False)


def test_no_key_means_no_authorization_header_and_no_openai_key_borrowed(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-openaikey999")
    server.add(CHAT, Reply(body=fx.chat_reply()))
    chat(server)
    assert "authorization" not in server.requests[0].headers


def test_a_given_key_is_sent_and_never_shown(server: FakeServer) -> None:
    server.add(
        CHAT, Reply(status=401, body=fx.error_body(f"bad key {fx.KEY}", "invalid_request_error", None))
    )
    with pytest.raises(errors.AuthenticationError) as caught:
        chat(server, api_key=fx.KEY)
    assert server.requests[0].headers["authorization"] == f"Bearer {fx.KEY}"
    assert fx.KEY not in str(caught.value) + repr(caught.value)


def test_max_tokens_is_sent_whatever_the_model_name(server: FakeServer) -> None:
    server.add(CHAT, Reply(body=fx.chat_reply()), Reply(body=fx.chat_reply()))
    chat(server, model="o3-mini")
    chat(server, model="o3-mini", use_max_completion_tokens=True)
    assert [("max_tokens" in r.json, r.json.get("max_completion_tokens")) for r in server.requests] == [
        (True, None),
        (False, 32),
    ]


# -- replies --------------------------------------------------------------------------------------


def test_ollama_reply_with_reasoning_and_bare_usage(server: FakeServer) -> None:
    body = {
        "id": "chatcmpl-150",
        "object": "chat.completion",
        "created": 1755000000,
        "model": "qwen3:0.6b",
        "system_fingerprint": "fp_ollama",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello!", "reasoning": "The user greets me."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 25, "total_tokens": 36},
    }
    server.add(CHAT, Reply(body=body))
    r = chat(server)
    assert (r.text, r.finish_reason, r.id, r.driver) == (
        "Hello!",
        "stop",
        "chatcmpl-150",
        "openai_compatible",
    )
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (11, 25, 36)


def test_llama_cpp_reply_with_timings_and_cached_tokens(server: FakeServer) -> None:
    body = fx.chat_reply("Hi there", model="/models/llama-3.2-1b.gguf")
    body["choices"][0]["message"]["reasoning_content"] = "thinking…"
    body["usage"] = {
        "prompt_tokens": 20,
        "completion_tokens": 3,
        "total_tokens": 23,
        "prompt_tokens_details": {"cached_tokens": 16},
    }
    body["timings"] = {
        "cache_n": 16,
        "prompt_n": 4,
        "prompt_ms": 12.5,
        "predicted_n": 3,
        "predicted_per_second": 80.1,
    }
    server.add(CHAT, Reply(body=body))
    r = chat(server)
    assert (r.text, r.model, r.usage.cached_input_tokens, r.usage.input_tokens) == (
        "Hi there",
        "/models/llama-3.2-1b.gguf",
        16,
        20,
    )


def test_missing_or_null_usage_is_zero(server: FakeServer) -> None:
    no_usage = fx.chat_reply()
    del no_usage["usage"]
    null_counts = fx.chat_reply(
        usage={"prompt_tokens": None, "completion_tokens": None, "total_tokens": None}
    )
    server.add(CHAT, Reply(body=no_usage), Reply(body=null_counts))
    assert chat(server).usage.total_tokens == 0
    assert chat(server).usage.total_tokens == 0


def test_tool_calls_without_id_with_object_arguments_and_finish_stop(server: FakeServer) -> None:
    calls = [
        {"id": "", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    ]
    server.add(CHAT, Reply(body=fx.chat_reply(None, finish="stop", tool_calls=calls)))
    r = chat(server)
    assert (r.finish_reason, r.raw_finish_reason) == ("tool_calls", "stop")
    assert [(c.id, c.name, c.arguments) for c in r.tool_calls] == [("", "get_weather", {"city": "Oslo"})]


# -- errors ---------------------------------------------------------------------------------------

VLLM_OLD = {
    "object": "error",
    "message": "This model's maximum context length is 131072 tokens. However, you requested 156632 tokens "
    "(156376 in the messages, 256 in the completion). "
    "Please reduce the length of the messages or completion.",
    "type": "BadRequestError",
    "param": None,
    "code": 400,
}
VLLM_NEW = {
    "error": {
        "message": "You passed 1015 input tokens and requested 10 output tokens. However, the model's "
        "context length is only 1024 tokens, resulting in a maximum input length of 1014 tokens.",
        "type": "BadRequestError",
        "param": "input_tokens",
        "code": 400,
    }
}
LLAMA_CPP_CONTEXT = {
    "error": {
        "code": 400,
        "message": "request (9412 tokens) exceeds the available context size (8192 tokens), "
        "try increasing it",
        "type": "exceed_context_size_error",
        "n_prompt_tokens": 9412,
        "n_ctx": 8192,
    }
}
LLAMA_CPP_LOADING = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
OLLAMA_404 = {
    "error": {
        "message": 'model "llama9" not found, try pulling it first',
        "type": "not_found_error",
        "param": None,
        "code": None,
    }
}


@pytest.mark.parametrize(
    ("status", "body", "cls", "code"),
    [
        (400, VLLM_OLD, errors.ContextLengthExceededError, "400"),
        (400, VLLM_NEW, errors.ContextLengthExceededError, "400"),
        (400, LLAMA_CPP_CONTEXT, errors.ContextLengthExceededError, "400"),
        (503, LLAMA_CPP_LOADING, errors.ServerError, "503"),
        (404, OLLAMA_404, errors.NotFoundError, None),
        (404, {"detail": "Not Found"}, errors.NotFoundError, None),
        (
            500,
            {"error": {"message": "boom", "type": "api_error", "param": None, "code": None}},
            errors.ServerError,
            None,
        ),
        (
            200,
            {"error": {"code": 429, "message": "too many requests", "type": "rate_limit"}},
            errors.RateLimitError,
            "429",
        ),
        (
            200,
            {"error": {"code": 400, "message": "context length exceeded", "type": "x"}},
            errors.ContextLengthExceededError,
            "400",
        ),
    ],
)
def test_compatible_error_shapes_map_to_the_right_class(
    server: FakeServer, status: int, body: dict[str, Any], cls: type, code: str | None
) -> None:
    server.add(CHAT, Reply(status=status, body=body))
    with pytest.raises(errors.NovaError) as caught:
        chat(server)
    assert type(caught.value) is cls
    assert (caught.value.status_code, caught.value.code) == (status, code)
    assert "{" not in caught.value.message  # the message, not the whole body


# -- streams --------------------------------------------------------------------------------------


def test_llama_cpp_stream_ends_with_finish_and_usage_in_one_chunk_and_no_done(server: FakeServer) -> None:
    events = [
        fx.chunk({"role": "assistant", "content": None}),
        fx.chunk({"content": "Hel"}),
        {
            **fx.chunk({"content": "lo"}, finish="stop"),
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
            "timings": {"predicted_n": 2},
        },
    ]
    server.add(CHAT, Reply(chunks=[sse(*events, done=False)]))
    chunks = stream(server)
    assert [c.text for c in chunks] == ["Hel", "lo", ""]
    assert (chunks[-1].finish_reason, chunks[-1].usage and chunks[-1].usage.total_tokens) == ("stop", 7)


def test_stream_without_finish_or_done_is_still_incomplete(server: FakeServer) -> None:
    server.add(CHAT, Reply(chunks=[sse(fx.chunk({"content": "Hel"}), done=False)]))
    seen: list[Chunk] = []
    with pytest.raises(errors.IncompleteStreamError):
        stream(server, into=seen)
    assert [c.text for c in seen] == ["Hel"]


def test_stream_with_finish_then_a_broken_connection_is_incomplete(server: FakeServer) -> None:
    pieces = [
        sse(fx.chunk({"content": "Hi"}), done=False),
        sse(fx.chunk({}, finish="stop"), done=False),
        b"data: {",
    ]
    server.add(CHAT, Reply(chunks=pieces, reset_after_chunks=2))
    with pytest.raises(errors.IncompleteStreamError):
        stream(server)


def test_ollama_stream_with_usage_chunk_and_no_usage_keys_elsewhere(server: FakeServer) -> None:
    def piece(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-7",
            "object": "chat.completion.chunk",
            "model": "llama3.2",
            "system_fingerprint": "fp_ollama",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    events = [
        piece({"role": "assistant", "content": "Hi", "reasoning": "greet back"}),
        piece({"role": "assistant", "content": "!"}),
        piece({}, "stop"),
        {
            "id": "chatcmpl-7",
            "object": "chat.completion.chunk",
            "model": "llama3.2",
            "choices": [],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        },
    ]
    server.add(CHAT, Reply(chunks=[sse(*events)]))
    r = collect_chunks(stream(server))
    assert (r.text, r.finish_reason, r.usage.total_tokens, r.id) == ("Hi!", "stop", 5, "chatcmpl-7")
    assert server.requests[0].json["stream_options"] == {"include_usage": True}


def test_stream_usage_false_sends_no_stream_options_and_usage_is_zero(server: FakeServer) -> None:
    server.add(
        CHAT, Reply(chunks=[sse(fx.chunk({"content": "Hi"}), fx.chunk({}, finish="stop"), done=False)])
    )
    chunks = stream(server, stream_usage=False)
    assert "stream_options" not in server.requests[0].json
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 0


def test_groq_stream_usage_in_x_groq_is_read(server: FakeServer) -> None:
    last = {
        **fx.chunk({}, finish="stop"),
        "x_groq": {"id": "req_01", "usage": {"prompt_tokens": 4, "completion_tokens": 1, "total_tokens": 5}},
    }
    server.add(CHAT, Reply(chunks=[sse(fx.chunk({"content": "Yo"}), last)]))
    assert collect_chunks(stream(server)).usage.total_tokens == 5


def test_streamed_tool_calls_without_index_or_id_join_in_order(server: FakeServer) -> None:
    def call(**function: Any) -> dict[str, Any]:
        return fx.chunk({"tool_calls": [{"type": "function", "function": function}]})

    events = [
        call(name="a", arguments='{"x": '),
        call(arguments="1}"),
        call(name="b", arguments={"y": 2}),
        fx.chunk({}, finish="stop"),
    ]
    server.add(CHAT, Reply(chunks=[sse(*events, done=False)]))
    r = collect_chunks(stream(server))
    assert [(c.name, c.arguments) for c in r.tool_calls] == [("a", {"x": 1}), ("b", {"y": 2})]
    assert r.finish_reason == "tool_calls"


def test_mid_stream_error_with_an_integer_code(server: FakeServer) -> None:
    events = [
        fx.chunk({"content": "Hi"}),
        {"error": {"code": 500, "message": "slot crashed", "type": "server_error"}},
    ]
    server.add(CHAT, Reply(chunks=[sse(*events, done=False)]))
    with pytest.raises(errors.MidStreamError) as caught:
        stream(server)
    assert (caught.value.code, caught.value.retryable, caught.value.type) == ("500", True, "server_error")


def test_a_server_that_ignores_stream_gets_its_plain_reply_replayed(server: FakeServer) -> None:
    calls = [fx.tool_call("f", json.dumps({"q": 1}))]
    server.add(CHAT, Reply(body=fx.chat_reply(None, finish="tool_calls", tool_calls=calls)))
    r = collect_chunks(stream(server))
    assert [(c.name, c.arguments) for c in r.tool_calls] == [("f", {"q": 1})]
    assert r.finish_reason == "tool_calls"
