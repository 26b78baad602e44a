"""The Ollama driver against a real local HTTP server: documented replies, broken replies, wire shape."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nova import errors
from nova.drivers.ollama import OllamaDriver
from nova.types import ChatRequest, Chunk, CompletionRequest, Response, collect_chunks
from tests.conftest import arun
from tests.fakeserver import FakeServer, Reply

NDJSON = {"content-type": "application/x-ndjson"}
CREATED = "2023-12-12T14:13:43.416799Z"

# docs/api.md "Chat request (No streaming)"
CHAT_REPLY = {
    "model": "llama3.2",
    "created_at": CREATED,
    "message": {"role": "assistant", "content": "Hello! How are you today?"},
    "done": True,
    "done_reason": "stop",
    "total_duration": 5191566416,
    "load_duration": 2154458,
    "prompt_eval_count": 26,
    "prompt_eval_duration": 383809000,
    "eval_count": 298,
    "eval_duration": 4799921000,
}
# docs/api.md "Generate request (No streaming)"
GENERATE_REPLY = {
    "model": "llama3.2",
    "created_at": "2023-08-04T19:22:45.499127Z",
    "response": "The sky is blue because it is the color of the sky.",
    "done": True,
    "done_reason": "stop",
    "context": [1, 2, 3],
    "total_duration": 5043500667,
    "load_duration": 5025959,
    "prompt_eval_count": 26,
    "prompt_eval_duration": 325953000,
    "eval_count": 290,
    "eval_duration": 4709213000,
}
WEATHER_CALL = {
    "function": {"name": "get_current_weather", "arguments": {"format": "celsius", "location": "Paris"}}
}


def line(content: str = "", *, done: bool = False, **fields: Any) -> str:
    """One NDJSON line of a streamed /api/chat reply."""
    obj: dict[str, Any] = {
        "model": "llama3.2",
        "created_at": CREATED,
        "message": {"role": "assistant", "content": content},
        "done": done,
        **fields,
    }
    return json.dumps(obj, ensure_ascii=False) + "\n"


FINAL: dict[str, Any] = {
    "done_reason": "stop",
    "total_duration": 4883583458,
    "load_duration": 1334875,
    "prompt_eval_count": 26,
    "prompt_eval_duration": 342546000,
    "eval_count": 282,
    "eval_duration": 4535599000,
}
STREAM = line("Bonjour") + line(" à ") + line("toi 👋") + line(done=True, **FINAL)


def hi(**params: Any) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": "hi"}], **params)


def call(server: FakeServer, kind: str, request: Any, **options: Any) -> Any:
    """Run one driver call against the server; a stream returns its list of chunks."""

    async def go() -> Any:
        driver = OllamaDriver(base_url=server.url, model="llama3.2", **options)
        try:
            if kind == "stream":
                return [c async for c in driver.stream(request)]
            return await getattr(driver, kind)(request)
        finally:
            await driver.aclose()

    return arun(go())


def split_at(data: bytes, *offsets: int) -> list[bytes]:
    bounds = [0, *offsets, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


# -- documented formats ------------------------------------------------------------------------


def test_chat_reads_text_finish_and_usage(server: FakeServer) -> None:
    server.add(
        "/api/chat", Reply(body=CHAT_REPLY, headers={"content-type": "application/json; charset=utf-8"})
    )
    resp = call(server, "chat", hi())
    assert (resp.text, resp.finish_reason, resp.raw_finish_reason) == (
        "Hello! How are you today?",
        "stop",
        "stop",
    )
    assert (resp.usage.input_tokens, resp.usage.output_tokens, resp.usage.total_tokens) == (26, 298, 324)
    assert (resp.model, resp.driver, resp.id, resp.tool_calls) == ("llama3.2", "ollama", "", ())


def test_generate_reads_response_field(server: FakeServer) -> None:
    server.add("/api/generate", Reply(body=GENERATE_REPLY))
    resp = call(server, "complete", CompletionRequest(prompt="Why is the sky blue?"))
    assert resp.text == GENERATE_REPLY["response"]
    assert (resp.finish_reason, resp.usage.input_tokens, resp.usage.output_tokens) == ("stop", 26, 290)
    assert server.requests[0].path == "/api/generate"


def test_tool_calls_get_stable_ids_and_finish_tool_calls(server: FakeServer) -> None:
    second = {"function": {"name": "get_time", "arguments": {}}}
    message = {"role": "assistant", "content": "", "tool_calls": [WEATHER_CALL, second]}
    server.add("/api/chat", Reply(body={**CHAT_REPLY, "message": message}))
    resp = call(server, "chat", hi())
    assert (resp.finish_reason, resp.raw_finish_reason) == ("tool_calls", "stop")
    assert [(c.id, c.name, c.arguments) for c in resp.tool_calls] == [
        ("call_0", "get_current_weather", {"format": "celsius", "location": "Paris"}),
        ("call_1", "get_time", {}),
    ]


def test_tool_call_id_from_server_is_kept(server: FakeServer) -> None:
    message = {"role": "assistant", "content": "", "tool_calls": [{**WEATHER_CALL, "id": "call_abc"}]}
    server.add("/api/chat", Reply(body={**CHAT_REPLY, "message": message}))
    assert call(server, "chat", hi()).tool_calls[0].id == "call_abc"


def test_missing_counters_mean_zero(server: FakeServer) -> None:
    # A cached prompt used to drop prompt_eval_count (ollama#2068); the metrics are omitempty.
    body = {k: v for k, v in CHAT_REPLY.items() if k not in ("prompt_eval_count", "eval_count")}
    server.add("/api/chat", Reply(body={**body, "eval_count": 7}))
    usage = call(server, "chat", hi()).usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (0, 7, 7)


@pytest.mark.parametrize(
    ("done_reason", "finish"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("load", "other"),
        ("unload", "other"),
        ("", "other"),
        (None, "other"),
    ],
)
def test_done_reason_is_normalised_and_kept(server: FakeServer, done_reason: str | None, finish: str) -> None:
    body = {k: v for k, v in CHAT_REPLY.items() if k != "done_reason"}
    if done_reason is not None:
        body["done_reason"] = done_reason
    server.add("/api/chat", Reply(body=body))
    resp = call(server, "chat", hi())
    assert (resp.finish_reason, resp.raw_finish_reason) == (finish, done_reason)


def test_stream_yields_text_then_final_metrics(server: FakeServer) -> None:
    server.add("/api/chat", Reply(chunks=[STREAM], headers=NDJSON))
    chunks = call(server, "stream", hi())
    assert [c.text for c in chunks] == ["Bonjour", " à ", "toi 👋", ""]
    assert [c.is_last for c in chunks] == [False, False, False, True]
    last = chunks[-1]
    assert (last.finish_reason, last.usage.input_tokens, last.usage.output_tokens) == ("stop", 26, 282)
    assert collect_chunks(chunks, driver="ollama").text == "Bonjour à toi 👋"
    assert server.requests[0].json["stream"] is True


def test_stream_with_final_line_missing_prompt_eval_count(server: FakeServer) -> None:
    final = {k: v for k, v in FINAL.items() if k != "prompt_eval_count"}
    server.add("/api/chat", Reply(chunks=[line("ok") + line(done=True, **final)], headers=NDJSON))
    usage = call(server, "stream", hi())[-1].usage
    assert (usage.input_tokens, usage.output_tokens) == (0, 282)


def test_stream_tool_calls_join_into_the_same_calls_as_chat(server: FakeServer) -> None:
    tool_line = json.dumps(
        {
            "model": "llama3.2",
            "created_at": CREATED,
            "done": False,
            "message": {"role": "assistant", "content": "", "tool_calls": [WEATHER_CALL]},
        }
    )
    server.add("/api/chat", Reply(chunks=[tool_line + "\n" + line(done=True, **FINAL)], headers=NDJSON))
    chunks = call(server, "stream", hi())
    resp = collect_chunks(chunks, driver="ollama")
    assert (resp.finish_reason, resp.raw_finish_reason) == ("tool_calls", "stop")
    assert [(c.id, c.name, c.arguments) for c in resp.tool_calls] == [
        ("call_0", "get_current_weather", {"format": "celsius", "location": "Paris"})
    ]


STREAM_BYTES = STREAM.replace("\n", "\r\n").encode()


@pytest.mark.parametrize(
    "pieces",
    [
        pytest.param(split_at(STREAM_BYTES, STREAM_BYTES.index("à".encode()) + 1), id="inside-utf8-char"),
        pytest.param(split_at(STREAM_BYTES, STREAM_BYTES.index("👋".encode()) + 2), id="inside-4-byte-char"),
        pytest.param(split_at(STREAM_BYTES, STREAM_BYTES.index(b"\r\n") + 1), id="between-cr-and-lf"),
        pytest.param(split_at(STREAM_BYTES, STREAM_BYTES.index(b'"content"') + 4), id="inside-json"),
        pytest.param([STREAM_BYTES[i : i + 1] for i in range(len(STREAM_BYTES))], id="one-byte-each"),
    ],
)
def test_stream_survives_split_reads_and_crlf(server: FakeServer, pieces: list[bytes]) -> None:
    server.add("/api/chat", Reply(chunks=list(pieces), headers=NDJSON))
    chunks = call(server, "stream", hi())
    assert "".join(c.text for c in chunks) == "Bonjour à toi 👋"
    assert chunks[-1].finish_reason == "stop" and chunks[-1].usage == collect_chunks(chunks).usage


def test_stream_final_line_without_newline_is_accepted(server: FakeServer) -> None:
    server.add(
        "/api/chat", Reply(chunks=[line("hi") + line(done=True, **FINAL).rstrip("\n")], headers=NDJSON)
    )
    assert call(server, "stream", hi())[-1].finish_reason == "stop"


def test_stream_blank_lines_are_skipped(server: FakeServer) -> None:
    server.add(
        "/api/chat", Reply(chunks=["\n" + line("a") + "\n\n" + line(done=True, **FINAL)], headers=NDJSON)
    )
    assert [c.text for c in call(server, "stream", hi())] == ["a", ""]


# -- request wire shape ------------------------------------------------------------------------


def test_chat_body_maps_named_parameters_into_options(server: FakeServer) -> None:
    server.add("/api/chat", Reply(body=CHAT_REPLY))
    call(server, "chat", hi(model="qwen3:8b", temperature=0.2, top_p=0.9, seed=42, stop="END", max_tokens=64))
    sent = server.requests[0]
    assert (sent.method, sent.path) == ("POST", "/api/chat")
    assert sent.json == {
        "model": "qwen3:8b",
        "messages": [{"role": "user", "content": "hi"}],
        "options": {"temperature": 0.2, "top_p": 0.9, "seed": 42, "num_predict": 64, "stop": ["END"]},
        "stream": False,
    }
    assert "authorization" not in sent.headers


def test_extra_merges_options_and_passes_the_rest_through(server: FakeServer) -> None:
    server.add("/api/chat", Reply(body=CHAT_REPLY))
    extra = {
        "options": {"num_ctx": 8192, "temperature": 0.9},
        "keep_alive": "10m",
        "think": "low",
        "stream": True,
    }
    call(server, "chat", hi(temperature=0.1, max_tokens=5, extra=extra))
    sent = server.requests[0].json
    assert sent["options"] == {"temperature": 0.9, "num_predict": 5, "num_ctx": 8192}  # extra's keys win
    assert (sent["keep_alive"], sent["think"]) == ("10m", "low")
    assert sent["stream"] is False  # the call decides streaming, not extra


def test_no_options_key_when_nothing_is_set(server: FakeServer) -> None:
    server.add("/api/chat", Reply(body=CHAT_REPLY))
    call(server, "chat", hi())
    assert "options" not in server.requests[0].json and "format" not in server.requests[0].json


@pytest.mark.parametrize(
    ("response_format", "wire"),
    [
        ({"type": "json_object"}, "json"),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
            {"type": "object"},
        ),
    ],
)
def test_response_format_becomes_format(
    server: FakeServer, response_format: dict[str, Any], wire: Any
) -> None:
    server.add("/api/chat", Reply(body=CHAT_REPLY))
    call(server, "chat", hi(response_format=response_format))
    assert server.requests[0].json["format"] == wire


def test_messages_images_tools_and_tool_results(server: FakeServer) -> None:
    server.add("/api/chat", Reply(body=CHAT_REPLY))
    request = ChatRequest(
        messages=[
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image", "url": "data:image/png;base64,iVBORw0KGgo="},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_0", "name": "get_current_weather", "arguments": {"location": "Paris"}}
                ],
            },
            {"role": "tool", "tool_call_id": "call_0", "content": "22 C"},
        ],
        tools=[
            {
                "type": "function",
                "function": {
                    "name": "get_current_weather",
                    "description": "Weather",
                    "parameters": {"type": "object", "properties": {}},
                },
            }
        ],
    )
    call(server, "chat", request)
    sent = server.requests[0].json
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is this?", "images": ["iVBORw0KGgo="]},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_current_weather", "arguments": {"location": "Paris"}}}],
        },
        {"role": "tool", "content": "22 C", "tool_name": "get_current_weather"},
    ]
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_current_weather",
                "description": "Weather",
                "parameters": {"type": "object", "properties": {}},
            },
        }
    ]


def test_tool_choice_none_leaves_tools_out(server: FakeServer) -> None:
    server.add("/api/chat", Reply(body=CHAT_REPLY))
    call(server, "chat", hi(tools=[{"name": "f"}], tool_choice="none"))
    assert "tools" not in server.requests[0].json


def test_stream_and_generate_bodies(server: FakeServer) -> None:
    server.add("/api/chat", Reply(chunks=[line(done=True, **FINAL)], headers=NDJSON))
    server.add("/api/generate", Reply(body=GENERATE_REPLY))
    call(server, "stream", hi())
    call(server, "complete", CompletionRequest(prompt="Why?", max_tokens=9, extra={"system": "Be terse."}))
    assert server.requests[0].json["stream"] is True
    assert server.requests[1].json == {
        "model": "llama3.2",
        "prompt": "Why?",
        "system": "Be terse.",
        "options": {"num_predict": 9},
        "stream": False,
    }


def test_api_key_is_sent_as_bearer_and_never_shown(server: FakeServer) -> None:
    key = "sk-test-ollama-proxy1"
    server.add("/api/chat", Reply(status=401, body={"error": f"bad token {key}"}))
    with pytest.raises(errors.AuthenticationError) as caught:
        call(server, "chat", hi(), api_key=key)
    assert server.requests[0].headers["authorization"] == f"Bearer {key}"
    assert key not in str(caught.value) and key not in repr(caught.value)
    assert key not in repr(OllamaDriver(api_key=key))


@pytest.mark.parametrize("url", ["https://example.com/cat.png", "data:image/png,rawbytes"])
def test_image_that_is_not_inline_base64_is_a_clear_input_error(server: FakeServer, url: str) -> None:
    request = ChatRequest(messages=[{"role": "user", "content": [{"type": "image", "url": url}]}])
    with pytest.raises(errors.InvalidInputError) as caught:
        call(server, "chat", request)
    assert caught.value.field == "messages[0].content" and not server.requests


def test_extra_options_that_is_not_a_dict_is_an_input_error(server: FakeServer) -> None:
    with pytest.raises(errors.InvalidInputError) as caught:
        call(server, "chat", hi(extra={"options": [1]}))
    assert caught.value.field == "extra.options"


# -- error mapping -----------------------------------------------------------------------------

ERRORS = [
    (400, {"error": "invalid options: tempreture"}, errors.InvalidRequestError),
    (400, {"error": "the input length exceeds the context length"}, errors.ContextLengthExceededError),
    (401, {"error": "unauthorized"}, errors.AuthenticationError),
    (404, {"error": 'model "llama9" not found, try pulling it first'}, errors.NotFoundError),
    (429, {"error": "too many requests"}, errors.RateLimitError),
    (500, {"error": "llama runner process has terminated: exit status 2"}, errors.ServerError),
    (500, {"error": "the input length exceeds the context length"}, errors.ContextLengthExceededError),
    (502, {"error": "bad gateway"}, errors.ServerError),
    (503, {"error": "server busy, please try again.  maximum pending requests exceeded"}, errors.ServerError),
]


@pytest.mark.parametrize("kind", ["chat", "stream"])
@pytest.mark.parametrize(("status", "body", "expected"), ERRORS)
def test_error_statuses_map_to_typed_errors(
    server: FakeServer, kind: str, status: int, body: dict[str, str], expected: type[errors.NovaError]
) -> None:
    server.add("/api/chat", Reply(status=status, body=body))
    with pytest.raises(errors.NovaError) as caught:
        call(server, kind, hi())
    assert type(caught.value) is expected
    assert caught.value.status_code == status and caught.value.message == body["error"]
    assert caught.value.driver == "ollama" and caught.value.model == "llama3.2"
    assert caught.value.retryable is (
        status in (429, 500, 502, 503) and expected is not errors.ContextLengthExceededError
    )


def test_retry_after_header_is_read(server: FakeServer) -> None:
    server.add("/api/chat", Reply(status=429, body={"error": "slow down"}, headers={"retry-after": "3"}))
    with pytest.raises(errors.RateLimitError) as caught:
        call(server, "chat", hi())
    assert caught.value.retry_after == 3.0


# -- broken replies ----------------------------------------------------------------------------


def raised(
    server: FakeServer, kind: str, reply: Reply, request: Any = None, **options: Any
) -> errors.NovaError:
    path = "/api/generate" if kind == "complete" else "/api/chat"
    server.add(path, reply)
    request = request or (CompletionRequest(prompt="p") if kind == "complete" else hi())
    with pytest.raises(errors.NovaError) as caught:
        call(server, kind, request, **options)
    return caught.value


def test_truncated_json_body(server: FakeServer) -> None:
    error = raised(server, "chat", Reply(body=json.dumps(CHAT_REPLY)[:80]))
    assert isinstance(error, errors.MalformedResponseError) and error.retryable


def test_body_shorter_than_content_length(server: FakeServer) -> None:
    body = json.dumps(CHAT_REPLY)
    error = raised(server, "chat", Reply(body=body[:60], content_length=len(body)))
    assert isinstance(error, errors.MalformedResponseError)


@pytest.mark.parametrize("kind", ["chat", "complete"])
def test_empty_200(server: FakeServer, kind: str) -> None:
    assert isinstance(raised(server, kind, Reply(body=b"")), errors.MalformedResponseError)


def test_html_502_from_a_proxy(server: FakeServer) -> None:
    html = "<html><head><title>502 Bad Gateway</title></head><body><center>nginx</center></body></html>"
    error = raised(server, "chat", Reply(status=502, body=html, headers={"content-type": "text/html"}))
    assert type(error) is errors.ServerError and error.retryable and "502 Bad Gateway" in error.message


def test_plain_text_503(server: FakeServer) -> None:
    reply = Reply(
        status=503,
        body="upstream connect error or disconnect/reset before headers",
        headers={"content-type": "text/plain"},
    )
    error = raised(server, "stream", reply)
    assert isinstance(error, errors.ServerError) and error.retryable and "upstream connect" in error.message


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("unexpected server error", errors.ServerError),
        ("the input length exceeds the context length", errors.ContextLengthExceededError),
    ],
)
def test_200_whose_body_is_an_error_object(server: FakeServer, message: str, expected: type) -> None:
    error = raised(server, "chat", Reply(body={"error": message}))
    assert type(error) is expected and error.status_code == 200 and error.details["in_successful_reply"]


@pytest.mark.parametrize("kind", ["chat", "complete"])
def test_unfinished_reply_in_non_stream_mode(server: FakeServer, kind: str) -> None:
    body = {**(GENERATE_REPLY if kind == "complete" else CHAT_REPLY), "done": False}
    assert isinstance(raised(server, kind, Reply(body=body)), errors.MalformedResponseError)


@pytest.mark.parametrize(
    "body",
    [
        {**CHAT_REPLY, "message": None},
        {**CHAT_REPLY, "message": {"role": "assistant", "content": 42}},
        {**CHAT_REPLY, "message": {"role": "assistant", "content": "", "tool_calls": {"x": 1}}},
        {**CHAT_REPLY, "message": {"role": "assistant", "content": "", "tool_calls": [{"function": {}}]}},
        {
            **CHAT_REPLY,
            "message": {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}],
            },
        },
    ],
    ids=[
        "no-message",
        "content-not-text",
        "tool-calls-not-list",
        "call-without-name",
        "arguments-not-object",
    ],
)
def test_reply_with_unusable_fields(server: FakeServer, body: dict[str, Any]) -> None:
    assert isinstance(raised(server, "chat", Reply(body=body)), errors.MalformedResponseError)


def collect_until_error(
    server: FakeServer, reply: Reply, **options: Any
) -> tuple[list[Chunk], errors.NovaError]:
    """Stream, keeping the chunks that arrived before the error."""
    server.add("/api/chat", reply)
    got: list[Chunk] = []

    async def go() -> errors.NovaError:
        driver = OllamaDriver(base_url=server.url, model="llama3.2", **options)
        try:
            async for chunk in driver.stream(hi()):
                got.append(chunk)
        except errors.NovaError as exc:
            return exc
        finally:
            await driver.aclose()
        raise AssertionError(f"the stream succeeded with {got}")

    return got, arun(go())


def test_stream_cut_before_done_line(server: FakeServer) -> None:
    got, error = collect_until_error(server, Reply(chunks=[line("Hel"), line("lo")], headers=NDJSON))
    assert type(error) is errors.IncompleteStreamError and error.retryable
    assert [c.text for c in got] == ["Hel", "lo"] and not any(c.is_last for c in got)


def test_stream_cut_inside_a_line(server: FakeServer) -> None:
    got, error = collect_until_error(server, Reply(chunks=[line("Hel") + line("lo")[:20]], headers=NDJSON))
    assert type(error) is errors.IncompleteStreamError and [c.text for c in got] == ["Hel"]


def test_mid_stream_error_line(server: FakeServer) -> None:
    body = (
        line("Once upon") + json.dumps({"error": "an error was encountered while running the model"}) + "\n"
    )
    got, error = collect_until_error(server, Reply(chunks=[body], headers=NDJSON))
    assert type(error) is errors.MidStreamError and error.status_code == 200 and error.retryable
    assert "while running the model" in error.message and [c.text for c in got] == ["Once upon"]


def test_mid_stream_context_error_is_not_retryable(server: FakeServer) -> None:
    body = json.dumps({"error": "the input length exceeds the context length"}) + "\n"
    _, error = collect_until_error(server, Reply(chunks=[body], headers=NDJSON))
    assert type(error) is errors.MidStreamError and not error.retryable


@pytest.mark.parametrize("bad", ["<html>oops</html>\n", "[1, 2]\n"], ids=["not-json", "not-an-object"])
def test_stream_line_that_is_not_a_json_object(server: FakeServer, bad: str) -> None:
    _, error = collect_until_error(server, Reply(chunks=[line("a") + bad + line(done=True)], headers=NDJSON))
    assert type(error) is errors.MalformedResponseError


def test_connection_reset_before_reply(server: FakeServer) -> None:
    error = raised(server, "chat", Reply(reset_before_reply=True))
    assert type(error) is errors.TransportError and error.retryable
    assert "closed the connection without replying" in error.message


def test_connection_reset_mid_stream(server: FakeServer) -> None:
    reply = Reply(
        chunks=[line("a"), line("b"), line(done=True, **FINAL)], reset_after_chunks=2, headers=NDJSON
    )
    got, error = collect_until_error(server, reply)
    assert type(error) is errors.IncompleteStreamError and [c.text for c in got] == ["a", "b"]


def test_stream_idle_timeout(server: FakeServer) -> None:
    reply = Reply(chunks=[line("a"), line(done=True, **FINAL)], hang_after_chunks=1, headers=NDJSON)
    got, error = collect_until_error(server, reply, stream_idle_timeout=0.2)
    assert type(error) is errors.RequestTimeoutError and error.retryable and [c.text for c in got] == ["a"]


def test_read_timeout_on_a_plain_call(server: FakeServer) -> None:
    body = json.dumps(CHAT_REPLY)
    reply = Reply(chunks=[body[:30], body[30:]], hang_after_chunks=1)
    assert type(raised(server, "chat", reply, read_timeout=0.2)) is errors.RequestTimeoutError


def test_driver_is_registered_and_needs_no_key() -> None:
    from nova.drivers import create_driver

    driver = create_driver("ollama", model="llama3.2")
    assert isinstance(driver, OllamaDriver)
    assert (driver.base_url, driver.auth_headers()) == ("http://127.0.0.1:11434", {})


def test_response_round_trips_through_collect(server: FakeServer) -> None:
    # The same answer streamed and not streamed gives the same Response.
    server.add(
        "/api/chat",
        Reply(
            body={
                **CHAT_REPLY,
                "message": {"role": "assistant", "content": "Bonjour à toi 👋"},
                "prompt_eval_count": 26,
                "eval_count": 282,
            }
        ),
    )
    server.add("/api/chat", Reply(chunks=[STREAM], headers=NDJSON))
    plain: Response = call(server, "chat", hi())
    streamed = collect_chunks(call(server, "stream", hi()), driver="ollama")
    assert streamed == plain
