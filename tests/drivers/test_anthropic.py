"""The Anthropic Messages driver against a real local HTTP server: wire shape, replies, streams,
every broken reply of issue 2 that applies, and the error table."""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from nova import errors
from nova.drivers import create_driver
from nova.drivers.anthropic import AnthropicDriver, finish_reason
from nova.types import ChatRequest, Chunk, CompletionRequest, Response, ToolCall, Usage, collect_chunks
from tests.conftest import arun
from tests.fakeserver import FakeServer, Reply, sse

KEY = "sk-test-ant-0001"
PATH = "/v1/messages"
HELLO = ChatRequest(messages=[{"role": "user", "content": "hi"}])
SSE_HEADERS = {"content-type": "text/event-stream; charset=utf-8", "request-id": "req_stream"}


def make(server: FakeServer, **options: Any) -> AnthropicDriver:
    options.setdefault("api_key", KEY)
    return AnthropicDriver(base_url=server.url, model="claude-test", **options)


def chat(server: FakeServer, request: ChatRequest = HELLO, **options: Any) -> Response:
    async def go() -> Response:
        driver = make(server, **options)
        try:
            return await driver.chat(request)
        finally:
            await driver.aclose()

    return arun(go())


def stream(server: FakeServer, request: ChatRequest = HELLO, **options: Any) -> list[Chunk]:
    async def go() -> list[Chunk]:
        driver = make(server, **options)
        try:
            return [chunk async for chunk in driver.stream(request)]
        finally:
            await driver.aclose()

    return arun(go())


def stream_until_error(server: FakeServer, **options: Any) -> tuple[list[Chunk], errors.NovaError]:
    seen: list[Chunk] = []

    async def go() -> None:
        driver = make(server, **options)
        try:
            async for chunk in driver.stream(HELLO):
                seen.append(chunk)
        finally:
            await driver.aclose()

    with pytest.raises(errors.NovaError) as caught:
        arun(go())
    return seen, caught.value


def message(**fields: Any) -> dict[str, Any]:
    return {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude-test-20250929",
        "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 3, "service_tier": "standard"},
        **fields,
    }


def error_body(kind: str, text: str, request_id: str | None = "req_body") -> dict[str, Any]:
    body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": text, "details": None}}
    if request_id:
        body["request_id"] = request_id
    return body


def events(*, text: tuple[str, ...] = ("Hel", "lo"), delta_usage: dict[str, Any] | None = None) -> list[Any]:
    """A recorded-shape text stream, as dicts."""
    start_usage = {"input_tokens": 20, "cache_read_input_tokens": 5, "output_tokens": 1}
    return [
        {"type": "message_start", "message": {**message(content=[], stop_reason=None), "usage": start_usage}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        *(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}
            for t in text
        ),
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": delta_usage or {"output_tokens": 7},
        },
        {"type": "message_stop"},
    ]


def sse_body(evts: list[Any]) -> bytes:
    """Named events with raw UTF-8 in the JSON, as Anthropic sends them."""
    return "".join(
        f"event: {e['type']}\ndata: {json.dumps(e, ensure_ascii=False)}\n\n" for e in evts
    ).encode()


def stream_reply(body: bytes, pieces: list[bytes] | None = None, **options: Any) -> Reply:
    return Reply(headers=SSE_HEADERS, chunks=list(pieces or [body]), **options)


def split_at(body: bytes, *offsets: int) -> list[bytes]:
    bounds = [0, *offsets, len(body)]
    return [body[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


# -- request wire shape ----------------------------------------------------------------------------


def test_chat_sends_the_messages_wire_format_and_reads_the_reply(server: FakeServer) -> None:
    server.add(PATH, Reply(body=message(), headers={"request-id": "req_011C"}))
    request = ChatRequest(
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        temperature=0.2,
    )
    response = chat(server, request)

    sent = server.requests[0]
    assert (sent.method, sent.path) == ("POST", "/v1/messages")
    assert sent.headers["x-api-key"] == KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["content-type"] == "application/json"
    assert "authorization" not in sent.headers
    assert sent.json == {
        "model": "claude-test",
        "max_tokens": 4096,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.2,
    }
    assert response.text == "Hello!"
    assert (response.finish_reason, response.raw_finish_reason) == ("stop", "end_turn")
    assert response.usage == Usage(input_tokens=12, output_tokens=3, total_tokens=15)
    assert (response.model, response.driver, response.id) == ("claude-test-20250929", "anthropic", "msg_01")


def test_options_set_version_default_max_tokens_and_the_request_wins(server: FakeServer) -> None:
    server.add(PATH, Reply(body=message()), Reply(body=message()), Reply(body=message()))
    chat(server, api_version="2026-10-21", default_max_tokens=77)
    chat(server, HELLO.model_copy(update={"max_tokens": 0}), default_max_tokens=77)  # 0 warms the cache
    chat(server, HELLO.model_copy(update={"max_tokens": 500}))
    assert server.requests[0].headers["anthropic-version"] == "2026-10-21"
    assert [r.json["max_tokens"] for r in server.requests] == [77, 0, 500]


def test_key_comes_from_the_environment_and_is_never_shown(server: FakeServer, monkeypatch: Any) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-ant-env-0002")
    server.add(PATH, Reply(body=message()))
    driver = AnthropicDriver(base_url=server.url, model="m")
    assert "sk-test" not in repr(driver) and "sk-test" not in repr(driver.api_key)
    chat(server, api_key=None)
    assert server.requests[0].headers["x-api-key"] == "sk-test-ant-env-0002"


def test_no_key_sends_no_key_header(server: FakeServer, monkeypatch: Any) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    server.add(PATH, Reply(body=message()))
    chat(server, api_key=None)
    assert "x-api-key" not in server.requests[0].headers


def test_conversation_mapping_merges_turns_and_carries_tools_and_images(server: FakeServer) -> None:
    server.add(PATH, Reply(body=message()))
    request = ChatRequest(
        messages=[
            {"role": "system", "content": "One."},
            {"role": "user", "content": "look"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "at these"},
                    {"type": "image", "url": "data:image/png;base64,iVBORw0KGgo="},
                    {"type": "image", "url": "https://example.com/cat.jpg"},
                ],
            },
            {"role": "system", "content": "Two."},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"id": "toolu_1", "name": "weather", "arguments": {"city": "Oslo"}},
                    {"id": "toolu_2", "name": "time", "arguments": "{}"},
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "rain"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "noon"}]},
            {"role": "user", "content": "so?"},
        ],
        tools=[
            {
                "type": "function",
                "function": {
                    "name": "weather",
                    "description": "Weather now",
                    "parameters": {"type": "object", "properties": {}},
                },
            },
            {"name": "time"},
        ],
        stop=["END"],
        top_p=0.9,
    )
    chat(server, request)
    body = server.requests[0].json
    assert body["system"] == "One.\n\nTwo."
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "text", "text": "at these"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
                },
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            ],
        },
        {
            "role": "assistant",
            "content": [  # the empty text is dropped: the API rejects empty text blocks
                {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Oslo"}},
                {"type": "tool_use", "id": "toolu_2", "name": "time", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "rain"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": [{"type": "text", "text": "noon"}],
                },
                {"type": "text", "text": "so?"},
            ],
        },
    ]
    assert body["tools"] == [
        {
            "name": "weather",
            "description": "Weather now",
            "input_schema": {"type": "object", "properties": {}},
        },
        {"name": "time", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert (body["stop_sequences"], body["top_p"]) == (["END"], 0.9)


def test_tool_results_come_first_in_their_user_turn(server: FakeServer) -> None:
    server.add(PATH, Reply(body=message()))
    chat(
        server,
        ChatRequest(
            messages=[
                {"role": "assistant", "tool_calls": [{"id": "t", "name": "f"}]},
                {"role": "user", "content": "also"},
                {"role": "tool", "tool_call_id": "t", "content": "done"},
            ]
        ),
    )
    assert [b["type"] for b in server.requests[0].json["messages"][1]["content"]] == ["tool_result", "text"]


@pytest.mark.parametrize(
    ("choice", "wire"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        ("weather", {"type": "tool", "name": "weather"}),
    ],
)
def test_tool_choice(server: FakeServer, choice: str, wire: dict[str, str]) -> None:
    server.add(PATH, Reply(body=message()))
    chat(server, ChatRequest(messages=HELLO.messages, tools=[{"name": "weather"}], tool_choice=choice))
    assert server.requests[0].json["tool_choice"] == wire


def test_seed_and_json_object_are_not_sent_json_schema_is_and_extra_wins(server: FakeServer) -> None:
    server.add(PATH, Reply(body=message()), Reply(body=message()))
    chat(server, ChatRequest(messages=HELLO.messages, seed=7, response_format={"type": "json_object"}))
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    chat(
        server,
        ChatRequest(
            messages=HELLO.messages,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
            extra={"top_k": 5, "thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 9},
        ),
    )
    plain, rich = (r.json for r in server.requests)
    assert "seed" not in plain and "output_config" not in plain and "response_format" not in plain
    assert rich["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert (rich["top_k"], rich["thinking"], rich["max_tokens"]) == (
        5,
        {"type": "enabled", "budget_tokens": 1024},
        9,
    )


def test_a_bad_image_data_url_is_a_clear_input_error(server: FakeServer) -> None:
    request = ChatRequest(
        messages=[{"role": "user", "content": [{"type": "image", "url": "data:image/png,xyz"}]}]
    )
    with pytest.raises(errors.InvalidInputError) as caught:
        chat(server, request)
    assert caught.value.field == "messages.content.url"
    assert server.requests == []


def test_complete_sends_the_prompt_as_one_user_message(server: FakeServer) -> None:
    server.add(PATH, Reply(body=message()))

    async def go() -> Response:
        driver = make(server)
        try:
            return await driver.complete(CompletionRequest(prompt="Once upon", stop="\n", max_tokens=10))
        finally:
            await driver.aclose()

    response = arun(go())
    assert response.text == "Hello!"
    body = server.requests[0].json
    assert body["messages"] == [{"role": "user", "content": "Once upon"}]
    assert (body["max_tokens"], body["stop_sequences"]) == (10, ["\n"])


def test_registered_under_its_name() -> None:
    assert isinstance(create_driver("anthropic", api_key=KEY), AnthropicDriver)


# -- replies ---------------------------------------------------------------------------------------


def test_tool_use_reply_and_unknown_blocks_ignored(server: FakeServer) -> None:
    content = [
        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
        {"type": "text", "text": "Let me check."},
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"q": "x"}},
        {"type": "tool_use", "id": "toolu_01", "name": "weather", "input": {"city": "Oslo", "days": 2}},
    ]
    server.add(PATH, Reply(body=message(content=content, stop_reason="tool_use")))
    response = chat(server)
    assert response.text == "Let me check."
    assert response.tool_calls == (
        ToolCall(id="toolu_01", name="weather", arguments={"city": "Oslo", "days": 2}),
    )
    assert response.finish_reason == "tool_calls"


def test_cache_usage_follows_the_opentelemetry_convention(server: FakeServer) -> None:
    usage = {
        "input_tokens": 4,
        "output_tokens": 9,
        "cache_read_input_tokens": 1000,
        "cache_creation_input_tokens": 200,
        "cache_creation": {"ephemeral_5m_input_tokens": 200},
    }
    server.add(PATH, Reply(body=message(usage=usage)))
    assert chat(server).usage == Usage(
        input_tokens=1204,
        output_tokens=9,
        total_tokens=1213,
        cached_input_tokens=1000,
        cache_write_tokens=200,
    )


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "other"),
        ("something_new", "other"),
        (None, "other"),
    ],
)
def test_stop_reasons_are_normalised_and_kept(raw: str | None, normalised: str) -> None:
    assert finish_reason(raw) == normalised


def test_refusal_reply_keeps_the_raw_reason(server: FakeServer) -> None:
    server.add(PATH, Reply(body=message(content=[], stop_reason="refusal")))
    response = chat(server)
    assert (response.text, response.finish_reason, response.raw_finish_reason) == (
        "",
        "content_filter",
        "refusal",
    )


@pytest.mark.parametrize(
    "body",
    [
        {"id": "msg", "type": "message"},
        message(content="text"),
        message(content=[{"type": "tool_use", "id": "t", "name": "f", "input": [1]}]),
    ],
    ids=["no-content", "content-not-list", "tool-input-not-object"],
)
def test_a_reply_without_usable_content_is_malformed(server: FakeServer, body: dict[str, Any]) -> None:
    server.add(PATH, Reply(body=body))
    with pytest.raises(errors.MalformedResponseError):
        chat(server)


# -- broken replies (issue 2, Robustness) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (
            Reply(body=b'{"id": "msg_01", "content": [{"type": "text", "text": "Hel'),
            errors.MalformedResponseError,
        ),
        (Reply(body=json.dumps(message()).encode()[:40], content_length=400), errors.MalformedResponseError),
        (Reply(body=b""), errors.MalformedResponseError),
        (
            Reply(status=200, body=b"<html>oops</html>", headers={"content-type": "text/html"}),
            errors.MalformedResponseError,
        ),
    ],
    ids=["truncated-json", "shorter-than-content-length", "empty-200", "html-200"],
)
def test_broken_success_bodies_are_typed_errors(server: FakeServer, reply: Reply, expected: type) -> None:
    server.add(PATH, reply)
    with pytest.raises(expected) as caught:
        chat(server)
    assert caught.value.retryable is True
    assert not isinstance(caught.value.__cause__, json.JSONDecodeError)


def test_html_502_from_a_proxy_is_a_retryable_server_error(server: FakeServer) -> None:
    html = "<html><head><title>502 Bad Gateway</title></head><body>cloudflare</body></html>"
    server.add(PATH, Reply(status=502, body=html, headers={"content-type": "text/html"}))
    with pytest.raises(errors.ServerError) as caught:
        chat(server)
    assert (
        caught.value.retryable
        and caught.value.status_code == 502
        and "502 Bad Gateway" in caught.value.message
    )


def test_plain_text_503_is_a_retryable_server_error(server: FakeServer) -> None:
    text = "upstream connect error or disconnect/reset before headers. reset reason: overflow"
    server.add(PATH, Reply(status=503, body=text, headers={"content-type": "text/plain"}))
    with pytest.raises(errors.ServerError) as caught:
        chat(server)
    assert caught.value.retryable and caught.value.message == text


def test_a_200_whose_body_is_an_error_object_raises_that_error(server: FakeServer) -> None:
    server.add(PATH, Reply(body=error_body("overloaded_error", "Overloaded")))
    with pytest.raises(errors.OverloadedError) as caught:
        chat(server)
    assert caught.value.retryable and caught.value.details["in_successful_reply"]
    assert caught.value.request_id == "req_body"


def test_connection_reset_before_the_reply_is_a_transport_error(server: FakeServer) -> None:
    server.add(PATH, Reply(reset_before_reply=True))
    with pytest.raises(errors.TransportError):
        chat(server)


def test_a_reply_slower_than_the_timeout_is_a_timeout(server: FakeServer) -> None:
    server.add(PATH, Reply(body=message(), delay=2.0))
    with pytest.raises(errors.RequestTimeoutError):
        chat(server, timeout=0.2, read_timeout=0.2)


# -- streaming -------------------------------------------------------------------------------------


def test_stream_text_ping_and_final_chunk(server: FakeServer) -> None:
    server.add(PATH, stream_reply(sse_body(events())))
    chunks = stream(server)
    assert server.requests[0].json["stream"] is True
    assert [c.text for c in chunks] == ["Hel", "lo", ""]
    assert all(c.finish_reason is None for c in chunks[:-1])
    last = chunks[-1]
    assert (last.finish_reason, last.raw_finish_reason) == ("stop", "end_turn")
    assert last.usage == Usage(input_tokens=25, output_tokens=7, total_tokens=32, cached_input_tokens=5)
    joined = collect_chunks(chunks, driver="anthropic")
    assert (joined.text, joined.model, joined.id) == ("Hello", "claude-test-20250929", "msg_01")


def test_stream_usage_is_cumulative_the_last_message_delta_wins(server: FakeServer) -> None:
    evts = events()
    repeated = {
        "input_tokens": 20,
        "cache_read_input_tokens": 5,
        "cache_creation_input_tokens": 3,
        "output_tokens": 4,
    }
    evts[-2:-1] = [  # two deltas; the second repeats the input counts (2026 recordings)
        {"type": "message_delta", "delta": {"stop_reason": None}, "usage": {"output_tokens": 4}},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "max_tokens"},
            "usage": {**repeated, "output_tokens": 11},
        },
    ]
    server.add(PATH, stream_reply(sse_body(evts)))
    last = stream(server)[-1]
    assert (last.finish_reason, last.raw_finish_reason) == ("length", "max_tokens")
    assert last.usage == Usage(
        input_tokens=28, output_tokens=11, total_tokens=39, cached_input_tokens=5, cache_write_tokens=3
    )


def test_stream_tool_use_fragments_join_per_block(server: FakeServer) -> None:
    evts: list[Any] = [
        events()[0],
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Checking."}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "toolu_A", "name": "weather", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": ""},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"city": '},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '"Oslo"}'},
        },
        {"type": "content_block_stop", "index": 1},
        {
            "type": "content_block_start",
            "index": 2,
            "content_block": {"type": "tool_use", "id": "toolu_B", "name": "time", "input": {}},
        },
        {"type": "content_block_stop", "index": 2},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 30}},
        {"type": "message_stop"},
    ]
    server.add(PATH, stream_reply(sse_body(evts)))
    chunks = stream(server)
    fragments = [d for c in chunks for d in c.tool_calls]
    assert (fragments[0].index, fragments[0].id, fragments[0].name) == (0, "toolu_A", "weather")
    assert [f.arguments for f in fragments if f.index == 0] == ["", '{"city": ', '"Oslo"}']
    joined = collect_chunks(chunks)
    assert joined.text == "Checking." and joined.finish_reason == "tool_calls"
    assert joined.tool_calls == (
        ToolCall(id="toolu_A", name="weather", arguments={"city": "Oslo"}),
        ToolCall(id="toolu_B", name="time", arguments={}),
    )


def test_stream_ignores_unknown_events_and_blocks(server: FakeServer) -> None:
    evts = events()
    evts[2:2] = [
        {"type": "content_block_start", "index": 1, "content_block": {"type": "thinking", "thinking": ""}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "thinking_delta", "thinking": "hm"}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "signature_delta", "signature": "x"}},
        {"type": "future_event", "whatever": [1, 2]},
    ]
    server.add(PATH, stream_reply(sse_body(evts)))
    assert collect_chunks(stream(server)).text == "Hello"


def test_stream_recorded_quirks_spaced_ping_and_padded_objects(server: FakeServer) -> None:
    lines = []
    for e in events():
        data = (
            '{"type": "ping"}' if e["type"] == "ping" else json.dumps(e, separators=(",", ":"))[:-1] + "    }"
        )
        lines.append(f"event: {e['type']}\ndata: {data}\n\n")
    server.add(PATH, stream_reply("".join(lines).encode()))
    chunks = stream(server)
    assert collect_chunks(chunks).text == "Hello" and chunks[-1].finish_reason == "stop"


def test_stream_without_event_lines_uses_the_data_type(server: FakeServer) -> None:
    server.add(PATH, stream_reply(sse(*events(), done=False)))
    assert collect_chunks(stream(server)).text == "Hello"


def test_stream_crlf_and_comment_lines(server: FakeServer) -> None:
    body = b": keep-alive\r\n" + sse_body(events()).replace(b"\n", b"\r\n").replace(
        b"\r\n\r\n", b"\r\n: c\r\n\r\n"
    )
    server.add(PATH, stream_reply(body))
    chunks = stream(server)
    assert collect_chunks(chunks).text == "Hello" and chunks[-1].finish_reason == "stop"


def test_stream_split_inside_a_utf8_character_and_between_cr_and_lf(server: FakeServer) -> None:
    body = sse_body(events(text=("Grüß ", "🙂!"))).replace(b"\n", b"\r\n")
    emoji = body.index("🙂".encode())
    cr = body.index(b"\r\n", emoji)
    pieces = split_at(body, body.index("ü".encode()) + 1, emoji + 2, cr + 1)
    server.add(PATH, stream_reply(body, pieces))
    assert collect_chunks(stream(server)).text == "Grüß 🙂!"


def test_stream_split_into_single_bytes(server: FakeServer) -> None:
    body = sse_body(events(text=("naïve ", "€")))
    server.add(PATH, stream_reply(body, [body[i : i + 1] for i in range(len(body))]))
    chunks = stream(server)
    assert collect_chunks(chunks).text == "naïve €" and chunks[-1].usage is not None


def test_stream_cut_before_message_stop_is_incomplete(server: FakeServer) -> None:
    body = sse_body(events()[:-1])
    server.add(PATH, stream_reply(body))
    seen, error = stream_until_error(server)
    assert isinstance(error, errors.IncompleteStreamError) and error.retryable
    assert "".join(c.text for c in seen) == "Hello" and all(c.finish_reason is None for c in seen)


def test_a_final_event_without_its_blank_line_is_discarded(server: FakeServer) -> None:
    body = sse_body(events())[:-1]  # "…message_stop…\n" then EOF: never dispatched (WHATWG)
    server.add(PATH, stream_reply(body))
    _, error = stream_until_error(server)
    assert isinstance(error, errors.IncompleteStreamError)


@pytest.mark.parametrize(("kind", "retryable"), [("api_error", True), ("invalid_request_error", False)])
def test_error_event_mid_stream(server: FakeServer, kind: str, retryable: bool) -> None:
    evts = events()[:4] + [{"type": "error", "error": {"type": kind, "message": "Internal error"}}]
    server.add(PATH, stream_reply(sse_body(evts)))
    seen, error = stream_until_error(server)
    assert isinstance(error, errors.MidStreamError)
    assert (error.type, error.retryable, error.driver) == (kind, retryable, "anthropic")
    assert [c.text for c in seen] == ["Hel"]


def test_overloaded_event_mid_stream_is_an_overloaded_error_after_the_chunks(server: FakeServer) -> None:
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    server.add(PATH, stream_reply(sse_body(events()[:4] + [overloaded])))
    seen, error = stream_until_error(server)
    assert type(error) is errors.OverloadedError and error.retryable
    assert (error.type, error.status_code, error.model) == ("overloaded_error", 200, "claude-test-20250929")
    assert error.details["mid_stream"] is True and "Overloaded" in error.message
    assert [c.text for c in seen] == ["Hel"]


def test_connection_reset_mid_stream_is_incomplete(server: FakeServer) -> None:
    body = sse_body(events())
    server.add(PATH, stream_reply(body, split_at(body, 300, 600), reset_after_chunks=1))
    _, error = stream_until_error(server)
    assert isinstance(error, errors.IncompleteStreamError)


def test_a_stalled_stream_hits_the_idle_timeout(server: FakeServer) -> None:
    body = sse_body(events())
    server.add(PATH, stream_reply(body, split_at(body, 300), hang_after_chunks=1))
    _, error = stream_until_error(server, stream_idle_timeout=0.2)
    assert isinstance(error, errors.RequestTimeoutError)


def test_a_200_stream_that_is_a_json_error_object_raises_that_error(server: FakeServer) -> None:
    server.add(PATH, Reply(chunks=[json.dumps(error_body("overloaded_error", "Overloaded"))]))
    _, error = stream_until_error(server)
    assert isinstance(error, errors.OverloadedError) and error.details["in_successful_reply"]


def test_a_200_stream_of_html_is_incomplete_and_says_what_came(server: FakeServer) -> None:
    server.add(PATH, Reply(headers={"content-type": "text/html"}, chunks=[b"<html>maintenance</html>"]))
    _, error = stream_until_error(server)
    assert isinstance(error, errors.IncompleteStreamError) and "maintenance" in error.message


@pytest.mark.parametrize(
    ("event", "why"),
    [
        ('event: content_block_delta\ndata: {"type": "content_block_delta", "index"\n\n', "not JSON"),
        ("event: message_start\ndata: [1, 2]\n\n", "not an object"),
    ],
)
def test_stream_event_that_is_not_an_object_is_malformed(server: FakeServer, event: str, why: str) -> None:
    server.add(PATH, stream_reply(sse_body(events()[:1]) + event.encode()))
    _, error = stream_until_error(server)
    assert isinstance(error, errors.MalformedResponseError) and why in error.message


def test_stream_tool_input_that_is_not_json_is_malformed(server: FakeServer) -> None:
    evts: list[Any] = [
        events()[0],
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "tool_use", "id": "t", "name": "f"},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": '{"a": '},
        },
        {"type": "content_block_stop", "index": 0},
        {"type": "message_stop"},
    ]
    server.add(PATH, stream_reply(sse_body(evts)))
    _, error = stream_until_error(server)
    assert isinstance(error, errors.MalformedResponseError)


def test_message_stop_without_a_stop_reason_finishes_as_other(server: FakeServer) -> None:
    evts = [e for e in events() if e["type"] != "message_delta"]
    server.add(PATH, stream_reply(sse_body(evts)))
    last = stream(server)[-1]
    assert (last.finish_reason, last.raw_finish_reason) == ("other", None)
    assert last.usage == Usage(input_tokens=25, output_tokens=1, total_tokens=26, cached_input_tokens=5)


def test_leaving_a_stream_early_releases_it(server: FakeServer) -> None:
    server.add(PATH, stream_reply(sse_body(events())), Reply(body=message()))

    async def go() -> Response:
        driver = make(server, max_connections=1, timeout=5.0)
        try:
            async for _ in driver.stream(HELLO):
                break
            return await driver.chat(HELLO)  # would wait forever on a leaked connection
        finally:
            await driver.aclose()

    assert arun(go()).text == "Hello!"


# -- error mapping ---------------------------------------------------------------------------------

ERROR_TABLE = [
    (400, "invalid_request_error", "messages: field required", errors.InvalidRequestError, False),
    (
        400,
        "invalid_request_error",
        "prompt is too long: 208656 tokens > 200000 maximum",
        errors.ContextLengthExceededError,
        False,
    ),
    (
        400,
        "invalid_request_error",
        "Your credit balance is too low to access the Anthropic API.",
        errors.QuotaExhaustedError,
        False,
    ),
    (401, "authentication_error", "invalid x-api-key", errors.AuthenticationError, False),
    (402, "billing_error", "billing issue", errors.QuotaExhaustedError, False),
    (403, "permission_error", "not allowed", errors.PermissionDeniedError, False),
    (404, "not_found_error", "model: claude-nope", errors.NotFoundError, False),
    (413, "request_too_large", "Request exceeds the maximum size", errors.RequestTooLargeError, False),
    (
        429,
        "rate_limit_error",
        "This request would exceed the rate limit for your organization",
        errors.RateLimitError,
        True,
    ),
    (500, "api_error", "Internal server error", errors.ServerError, True),
    (504, "timeout_error", "Request timed out", errors.ServerError, True),
    (529, "overloaded_error", "Overloaded", errors.OverloadedError, True),
]


@pytest.mark.parametrize(
    ("status", "kind", "text", "cls", "retryable"),
    ERROR_TABLE,
    ids=[f"{s}-{k}-{c.__name__}" for s, k, _, c, _ in ERROR_TABLE],
)
def test_error_mapping(
    server: FakeServer, status: int, kind: str, text: str, cls: type, retryable: bool
) -> None:
    server.add(PATH, Reply(status=status, body=error_body(kind, text), headers={"request-id": "req_head"}))
    with pytest.raises(errors.NovaError) as caught:
        chat(server)
    error = caught.value
    assert type(error) is cls
    assert (error.status_code, error.type, error.message) == (status, kind, text)
    assert (error.retryable, error.request_id, error.driver, error.model) == (
        retryable,
        "req_head",
        "anthropic",
        "claude-test",
    )
    assert type(pickle.loads(pickle.dumps(error))) is cls


def test_error_status_on_a_stream_maps_the_same_way(server: FakeServer) -> None:
    server.add(PATH, Reply(status=529, body=error_body("overloaded_error", "Overloaded")))
    _, error = stream_until_error(server)
    assert type(error) is errors.OverloadedError and error.request_id == "req_body"


def test_request_id_falls_back_to_the_body(server: FakeServer) -> None:
    server.add(PATH, Reply(status=500, body=error_body("api_error", "boom", request_id="req_011CWdep")))
    with pytest.raises(errors.ServerError) as caught:
        chat(server)
    assert caught.value.request_id == "req_011CWdep"


def test_429_carries_retry_after_and_rate_limit_snapshot(server: FakeServer) -> None:
    reset = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    headers = {
        "retry-after": "7",
        "anthropic-ratelimit-requests-limit": "50",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-input-tokens-reset": reset,
    }
    server.add(PATH, Reply(status=429, body=error_body("rate_limit_error", "slow down"), headers=headers))
    with pytest.raises(errors.RateLimitError) as caught:
        chat(server)
    limits = caught.value.rate_limits
    assert caught.value.retry_after == 7.0
    assert (limits["requests_limit"], limits["requests_remaining"]) == (50.0, 0.0)
    assert 3500 < limits["input_tokens_reset_s"] <= 3600


def test_x_should_retry_overrides_the_class_default(server: FakeServer) -> None:
    server.add(
        PATH,
        Reply(
            status=529, body=error_body("overloaded_error", "Overloaded"), headers={"x-should-retry": "false"}
        ),
    )
    with pytest.raises(errors.OverloadedError) as caught:
        chat(server)
    assert caught.value.retryable is False


def test_no_key_in_any_error_even_when_the_service_echoes_it(server: FakeServer) -> None:
    echoed = f"invalid x-api-key: {KEY}"
    server.add(PATH, Reply(status=401, body=error_body("authentication_error", echoed)))
    server.add(
        PATH, stream_reply(sse_body([{"type": "error", "error": {"type": "api_error", "message": echoed}}]))
    )
    with pytest.raises(errors.AuthenticationError) as caught:
        chat(server)
    _, stream_error = stream_until_error(server)
    for error in (caught.value, stream_error):
        for shown in (
            str(error),
            repr(error),
            error.message,
            repr(pickle.loads(pickle.dumps(error)).__dict__),
        ):
            assert KEY not in shown
