"""The OpenAI driver against a real local HTTP server: wire format, parsing, errors, broken replies."""

from __future__ import annotations

import json
import pickle
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from nova import errors
from nova.drivers.openai import OpenAIDriver
from nova.types import ChatRequest, Chunk, CompletionRequest, Response, collect_chunks
from tests.conftest import arun
from tests.drivers import fixtures_openai as fx
from tests.fakeserver import FakeServer, Reply, sse

CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "What is the capital of France?"}]


def make(server: FakeServer, **options: Any) -> OpenAIDriver:
    options = {"timeout": 10.0, "stream_idle_timeout": 10.0, **options}
    return OpenAIDriver(api_key=fx.KEY, base_url=f"{server.url}/v1", model="gpt-4o-mini", **options)


def run(driver: OpenAIDriver, call: Callable[[OpenAIDriver], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        try:
            return await call(driver)
        finally:
            await driver.aclose()

    return arun(go())


def chat(server: FakeServer, driver_options: dict[str, Any] | None = None, **request: Any) -> Response:
    request.setdefault("messages", HI)
    return run(make(server, **(driver_options or {})), lambda d: d.chat(ChatRequest(**request)))


def stream(server: FakeServer, into: list[Chunk] | None = None, **options: Any) -> list[Chunk]:
    """Stream HI; chunks land in `into` as they arrive, so a test can look at them after an error."""
    chunks = [] if into is None else into

    async def go(d: OpenAIDriver) -> list[Chunk]:
        async for c in d.stream(ChatRequest(messages=HI)):
            chunks.append(c)
        return chunks

    return run(make(server, **options), go)


def assert_no_key(exc: BaseException) -> None:
    for text in (
        str(exc),
        repr(exc),
        repr(getattr(exc, "__dict__", {})),
        repr(pickle.loads(pickle.dumps(exc))),
    ):
        assert fx.KEY not in text


# -- requests on the wire ---------------------------------------------------------------------------


def test_chat_request_carries_every_common_parameter_and_the_auth_headers(server: FakeServer) -> None:
    server.add(CHAT, Reply(body=fx.chat_reply()))
    chat(
        server,
        {"organization": "org-test", "project": "proj_test"},
        temperature=0.2,
        top_p=0.9,
        max_tokens=50,
        stop="\n\n",
        seed=7,
        response_format={"type": "json_object"},
    )
    sent = server.requests[0]
    assert (sent.method, sent.path) == ("POST", CHAT)
    assert sent.headers["authorization"] == f"Bearer {fx.KEY}"
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["openai-organization"] == "org-test"
    assert sent.headers["openai-project"] == "proj_test"
    assert sent.json == {
        "model": "gpt-4o-mini",
        "messages": HI,
        "temperature": 0.2,
        "top_p": 0.9,
        "seed": 7,
        "max_tokens": 50,
        "stop": ["\n\n"],
        "response_format": {"type": "json_object"},
    }


def test_messages_parts_tool_calls_and_tool_results_map_to_the_wire(server: FakeServer) -> None:
    server.add(CHAT, Reply(body=fx.chat_reply()))
    messages = [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image", "url": "data:image/png;base64,iVBORw0KGgo="},
            ],
            "name": "ann",
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "call_1", "name": "look", "arguments": {"q": "é"}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
    ]
    tools = [
        {"name": "look", "description": "Look it up", "parameters": {"type": "object", "properties": {}}}
    ]
    chat(server, messages=messages, tools=tools, tool_choice="look")
    body = server.requests[0].json
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ],
            "name": "ann",
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "look", "arguments": '{"q": "\\u00e9"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
    ]
    assert json.loads(body["messages"][2]["tool_calls"][0]["function"]["arguments"]) == {"q": "é"}
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "look",
                "description": "Look it up",
                "parameters": {"type": "object", "properties": {}},
            },
        }
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "look"}}


@pytest.mark.parametrize("choice", ["auto", "none", "required"])
def test_tool_choice_keywords_pass_through(server: FakeServer, choice: str) -> None:
    server.add(CHAT, Reply(body=fx.chat_reply()))
    chat(server, tools=[{"name": "f"}], tool_choice=choice)
    assert server.requests[0].json["tool_choice"] == choice


@pytest.mark.parametrize(
    ("model", "options", "key"),
    [
        ("gpt-4o-mini", {}, "max_tokens"),
        ("o1", {}, "max_completion_tokens"),
        ("o3-mini", {}, "max_completion_tokens"),
        ("o4-mini-2025-04-16", {}, "max_completion_tokens"),
        ("gpt-5", {}, "max_completion_tokens"),
        ("gpt-5.1-mini", {}, "max_completion_tokens"),
        ("ft:o4-mini-2025-04-16:org::abc", {}, "max_completion_tokens"),
        ("gpt-4.1", {"use_max_completion_tokens": True}, "max_completion_tokens"),
    ],
)
def test_reasoning_models_get_max_completion_tokens(
    server: FakeServer, model: str, options: dict[str, Any], key: str
) -> None:
    server.add(CHAT, Reply(body=fx.chat_reply()))
    chat(server, options, model=model, max_tokens=64)
    body = server.requests[0].json
    assert body[key] == 64
    assert ({"max_tokens", "max_completion_tokens"} - {key}).isdisjoint(body)


def test_extra_reaches_the_wire_unchanged_and_wins(server: FakeServer) -> None:
    server.add(CHAT, Reply(body=fx.chat_reply()))
    extra = {"logit_bias": {"50256": -100}, "reasoning_effort": "low", "temperature": 1.5, "n": 1}
    chat(server, temperature=0.1, extra=extra)
    body = server.requests[0].json
    assert {k: body[k] for k in extra} == extra


def test_api_key_comes_from_the_environment(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-fromenv1234")
    server.add(CHAT, Reply(body=fx.chat_reply()))
    driver = OpenAIDriver(base_url=f"{server.url}/v1", model="gpt-4o-mini")
    assert "sk-test-fromenv1234" not in repr(driver) + repr(driver.__dict__)
    run(driver, lambda d: d.chat(ChatRequest(messages=HI)))
    assert server.requests[0].headers["authorization"] == "Bearer sk-test-fromenv1234"


def test_no_api_key_is_a_configuration_error_before_any_request(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    driver = OpenAIDriver(base_url=f"{server.url}/v1", model="gpt-4o-mini")
    with pytest.raises(errors.ConfigurationError, match="OPENAI_API_KEY"):
        run(driver, lambda d: d.chat(ChatRequest(messages=HI)))
    assert server.requests == []


# -- replies --------------------------------------------------------------------------------------


def test_chat_reply_parses_text_usage_and_ids(server: FakeServer) -> None:
    server.add(CHAT, Reply(body=fx.chat_reply("Paris.", usage=fx.USAGE_FULL)))
    r = chat(server)
    assert (r.text, r.finish_reason, r.raw_finish_reason) == ("Paris.", "stop", "stop")
    assert (r.model, r.driver, r.id) == ("gpt-4o-mini-2024-07-18", "openai", fx.CHAT_ID)
    u = r.usage
    assert (u.input_tokens, u.output_tokens, u.total_tokens) == (1117, 46, 1163)
    assert (u.cached_input_tokens, u.reasoning_tokens) == (1024, 30)


def test_total_tokens_is_taken_as_given_not_derived(server: FakeServer) -> None:
    usage = {"prompt_tokens": 30, "completion_tokens": 17, "total_tokens": 109}  # hidden reasoning counted
    server.add(CHAT, Reply(body=fx.chat_reply(usage=usage)))
    assert chat(server).usage.total_tokens == 109


def test_tool_call_reply_parses_arguments_into_a_dict(server: FakeServer) -> None:
    calls = [fx.tool_call("get_weather", '{"city": "Paris", "days": 2}'), fx.tool_call("noop", "", "call_2")]
    server.add(CHAT, Reply(body=fx.chat_reply(None, finish="tool_calls", tool_calls=calls)))
    r = chat(server)
    assert (r.text, r.finish_reason) == ("", "tool_calls")
    assert [(c.id, c.name, c.arguments) for c in r.tool_calls] == [
        ("call_abc123", "get_weather", {"city": "Paris", "days": 2}),
        ("call_2", "noop", {}),
    ]


@pytest.mark.parametrize(("finish", "retryable"), [("tool_calls", True), ("length", False)])
def test_tool_call_arguments_that_are_not_json_are_a_malformed_response(
    server: FakeServer, finish: str, retryable: bool
) -> None:
    calls = [fx.tool_call("get_weather", '{"city": "Par')]
    server.add(CHAT, Reply(body=fx.chat_reply(None, finish=finish, tool_calls=calls)))
    with pytest.raises(errors.MalformedResponseError, match="get_weather") as caught:
        chat(server)
    assert caught.value.retryable is retryable
    assert caught.value.details["arguments"] == '{"city": "Par'


def test_refusal_becomes_the_text_with_finish_content_filter(server: FakeServer) -> None:
    server.add(CHAT, Reply(body=fx.chat_reply(None, refusal="I can't help with that.")))
    r = chat(server)
    assert (r.text, r.finish_reason, r.raw_finish_reason) == (
        "I can't help with that.",
        "content_filter",
        "stop",
    )


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("tool_calls", "tool_calls"),
        ("function_call", "tool_calls"),
        ("content_filter", "content_filter"),
        ("eos_token", "other"),
        (None, "other"),
    ],
)
def test_finish_reason_is_normalised_and_the_raw_value_kept(
    server: FakeServer, raw: str | None, normalised: str
) -> None:
    server.add(CHAT, Reply(body=fx.chat_reply("x", finish=raw)))
    r = chat(server)
    assert (r.finish_reason, r.raw_finish_reason) == (normalised, raw)


@pytest.mark.parametrize(
    "body",
    [
        {"id": "x", "object": "chat.completion"},
        {"id": "x", "choices": []},
        {"choices": [None]},
        {"choices": [{"index": 0}]},
    ],
)
def test_a_200_without_a_usable_choice_is_malformed(server: FakeServer, body: dict[str, Any]) -> None:
    server.add(CHAT, Reply(body=body))
    with pytest.raises(errors.MalformedResponseError):
        chat(server)


def test_legacy_completion_request_and_reply(server: FakeServer) -> None:
    reply = {
        "id": "cmpl-uqkvlQyYK7bGYrRHQ0eXlWi7",
        "object": "text_completion",
        "created": 1589478378,
        "model": "gpt-3.5-turbo-instruct",
        "system_fingerprint": "fp_44709d6fcb",
        "choices": [
            {"text": "\n\nThis is indeed a test", "index": 0, "logprobs": None, "finish_reason": "length"}
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    }
    server.add("/v1/completions", Reply(body=reply))
    request = CompletionRequest(
        model="gpt-3.5-turbo-instruct", prompt="Say this is a test", max_tokens=7, stop=["."]
    )
    r = run(make(server), lambda d: d.complete(request))
    assert server.requests[0].json == {
        "model": "gpt-3.5-turbo-instruct",
        "prompt": "Say this is a test",
        "max_tokens": 7,
        "stop": ["."],
    }
    assert (r.text, r.finish_reason, r.usage.total_tokens, r.id) == (
        "\n\nThis is indeed a test",
        "length",
        12,
        reply["id"],
    )


# -- errors ---------------------------------------------------------------------------------------

ERROR_TABLE = [
    (400, fx.CONTEXT_LENGTH, errors.ContextLengthExceededError, False),
    (400, fx.UNSUPPORTED_PARAMETER, errors.InvalidRequestError, False),
    (401, fx.INVALID_KEY, errors.AuthenticationError, False),
    (403, fx.REGION, errors.PermissionDeniedError, False),
    (404, fx.MODEL_NOT_FOUND, errors.NotFoundError, False),
    (429, fx.RATE_LIMIT, errors.RateLimitError, True),
    (429, fx.QUOTA, errors.QuotaExhaustedError, False),
    (
        429,
        fx.error_body("You exceeded your current quota.", "insufficient_quota", None),
        errors.QuotaExhaustedError,
        False,
    ),
    (
        429,
        fx.error_body("Credit balance exhausted.", "insufficient_quota", "credit_balance_exhausted"),
        errors.QuotaExhaustedError,
        False,
    ),
    (500, fx.SERVER_ERROR, errors.ServerError, True),
    (503, fx.OVERLOADED, errors.OverloadedError, True),
    (502, fx.HTML_502, errors.ServerError, True),
    (503, fx.ENVOY_503, errors.ServerError, True),
]


@pytest.mark.parametrize(("status", "body", "cls", "retryable"), ERROR_TABLE)
def test_error_replies_map_to_the_right_class(
    server: FakeServer, status: int, body: Any, cls: type, retryable: bool
) -> None:
    headers = {"content-type": "text/html"} if isinstance(body, str) else {}
    server.add(CHAT, Reply(status=status, body=body, headers=headers))
    with pytest.raises(errors.NovaError) as caught:
        chat(server)
    error = caught.value
    assert type(error) is cls
    assert (error.status_code, error.retryable, error.driver, error.model) == (
        status,
        retryable,
        "openai",
        "gpt-4o-mini",
    )
    if isinstance(body, dict):
        assert (error.type, error.code) == (body["error"]["type"], body["error"]["code"])
    elif body.lstrip().startswith("<"):  # a proxy's page: summarised, never quoted
        assert "HTML page" in error.message and "<" not in error.message
    else:
        assert body.strip()[:40] in error.message
    assert_no_key(error)


@pytest.mark.parametrize(("status", "body", "cls", "retryable"), ERROR_TABLE[:7])
def test_error_statuses_before_a_stream_map_the_same_way(
    server: FakeServer, status: int, body: Any, cls: type, retryable: bool
) -> None:
    server.add(CHAT, Reply(status=status, body=body))
    with pytest.raises(errors.NovaError) as caught:
        stream(server)
    assert type(caught.value) is cls
    assert_no_key(caught.value)


def test_rate_limit_carries_retry_after_rate_limits_and_request_id(server: FakeServer) -> None:
    server.add(CHAT, Reply(status=429, body=fx.RATE_LIMIT, headers=fx.RATE_LIMIT_HEADERS))
    with pytest.raises(errors.RateLimitError) as caught:
        chat(server)
    e = caught.value
    assert (e.retry_after, e.request_id) == (2.0, "req_0123456789abcdef0123456789abcdef")
    assert e.rate_limits == {
        "requests_limit": 500.0,
        "requests_remaining": 499.0,
        "requests_reset_s": 0.12,
        "tokens_limit": 30000.0,
        "tokens_remaining": 0.0,
        "tokens_reset_s": 360.0,
    }
    assert pickle.loads(pickle.dumps(e)).rate_limits == e.rate_limits


def test_x_should_retry_overrides_the_status_rule(server: FakeServer) -> None:
    server.add(CHAT, Reply(status=500, body=fx.SERVER_ERROR, headers={"x-should-retry": "false"}))
    with pytest.raises(errors.ServerError) as caught:
        chat(server)
    assert caught.value.retryable is False


def test_a_200_whose_body_is_an_error_object_is_that_error(server: FakeServer) -> None:
    server.add(CHAT, Reply(body=fx.SERVER_ERROR), Reply(body=fx.QUOTA))
    with pytest.raises(errors.ServerError) as caught:
        chat(server)
    assert (
        caught.value.status_code,
        caught.value.retryable,
        caught.value.details["in_successful_reply"],
    ) == (200, True, True)
    with pytest.raises(errors.QuotaExhaustedError):
        chat(server)


# -- broken replies (non-stream) -----------------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        Reply(
            body=b'{"id": "chatcmpl-1", "choices": [{"index": 0, "message": {"role": "assist'
        ),  # truncated JSON
        Reply(
            body=json.dumps(fx.chat_reply()).encode()[:80], content_length=400
        ),  # shorter than Content-Length
        Reply(body=b""),  # empty 200
        Reply(body=b"<html>OK</html>", headers={"content-type": "text/html"}),
        Reply(body=[1, 2, 3]),
    ],
    ids=["truncated-json", "short-content-length", "empty-200", "html-200", "json-array"],
)
def test_broken_200_bodies_are_malformed_response_errors(server: FakeServer, reply: Reply) -> None:
    server.add(CHAT, reply)
    with pytest.raises(errors.MalformedResponseError) as caught:
        chat(server)
    assert caught.value.retryable is True
    assert not isinstance(caught.value, json.JSONDecodeError)


def test_connection_reset_before_the_reply_is_a_transport_error(server: FakeServer) -> None:
    server.add(CHAT, Reply(reset_before_reply=True))
    with pytest.raises(errors.TransportError) as caught:
        chat(server)
    assert caught.value.retryable is True


def test_a_reply_slower_than_the_timeout_is_a_request_timeout(server: FakeServer) -> None:
    server.add(CHAT, Reply(body=fx.chat_reply(), delay=2.0))
    with pytest.raises(errors.RequestTimeoutError):
        chat(server, {"timeout": 0.2})


def test_an_unreachable_server_is_a_connect_error() -> None:
    with FakeServer() as gone:
        url = gone.url
    driver = OpenAIDriver(api_key=fx.KEY, base_url=f"{url}/v1", model="m", timeout=5.0)
    with pytest.raises(errors.ConnectError) as caught:
        run(driver, lambda d: d.chat(ChatRequest(messages=HI)))
    assert_no_key(caught.value)


# -- streams --------------------------------------------------------------------------------------


def test_stream_yields_text_then_one_last_chunk_with_finish_and_usage(server: FakeServer) -> None:
    server.add(
        CHAT,
        Reply(
            chunks=[sse(*fx.text_stream("The capital", " is Paris."))],
            headers={"content-type": "text/event-stream"},
        ),
    )
    chunks = stream(server)
    assert [c.text for c in chunks] == ["The capital", " is Paris.", ""]
    assert [c.finish_reason for c in chunks] == [None, None, "stop"]
    last = chunks[-1]
    assert (last.raw_finish_reason, last.usage and last.usage.total_tokens, last.id) == (
        "stop",
        12,
        fx.CHAT_ID,
    )
    body = server.requests[0].json
    assert (body["stream"], body["stream_options"]) == (True, {"include_usage": True})
    assert server.requests[0].headers["authorization"] == f"Bearer {fx.KEY}"


def test_stream_without_usage_option_sends_no_stream_options(server: FakeServer) -> None:
    events = fx.text_stream("hi")[:-1]  # no usage chunk when not asked for
    server.add(CHAT, Reply(chunks=[sse(*events)]))
    chunks = stream(server, stream_usage=False)
    assert "stream_options" not in server.requests[0].json
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 0


def test_streamed_tool_call_fragments_join_per_index(server: FakeServer) -> None:
    def call(index: int, **fields: Any) -> dict[str, Any]:
        return fx.chunk({"tool_calls": [{"index": index, **fields}]})

    events = [
        fx.chunk({"role": "assistant", "content": None}),
        call(0, id="call_a", type="function", function={"name": "get_weather", "arguments": ""}),
        call(0, function={"arguments": '{"ci'}),
        call(
            1, id="", type="function", function={"name": "get_time", "arguments": '{"tz"'}
        ),  # Gemini's "" id
        call(0, function={"arguments": 'ty": "Paris"}'}),
        call(1, function={"arguments": ': "CET"}'}),
        fx.chunk({}, finish="tool_calls"),
        fx.chunk(choices=[], usage={"prompt_tokens": 80, "completion_tokens": 40, "total_tokens": 120}),
    ]
    server.add(CHAT, Reply(chunks=[sse(*events)]))
    chunks = stream(server)
    deltas = [d for c in chunks for d in c.tool_calls]
    assert [(d.index, d.id, d.name) for d in deltas[:3]] == [
        (0, "call_a", "get_weather"),
        (0, None, None),
        (1, None, "get_time"),
    ]
    r = collect_chunks(chunks, driver="openai")
    assert [(c.id, c.name, c.arguments) for c in r.tool_calls] == [
        ("call_a", "get_weather", {"city": "Paris"}),
        ("", "get_time", {"tz": "CET"}),
    ]
    assert (r.finish_reason, r.usage.total_tokens) == ("tool_calls", 120)


def test_streamed_tool_arguments_that_join_to_bad_json_fail_at_the_end(server: FakeServer) -> None:
    events = [
        fx.chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": '{"a": '}}]}),
        fx.chunk({}, finish="tool_calls"),
    ]
    server.add(CHAT, Reply(chunks=[sse(*events)]))
    with pytest.raises(errors.MalformedResponseError, match="'f'"):
        stream(server)


def test_streamed_refusal_is_text_with_finish_content_filter(server: FakeServer) -> None:
    events = [
        fx.chunk({"role": "assistant", "content": None, "refusal": ""}),
        fx.chunk({"refusal": "I can't."}),
        fx.chunk({}, finish="stop"),
    ]
    server.add(CHAT, Reply(chunks=[sse(*events)]))
    r = collect_chunks(stream(server))
    assert (r.text, r.finish_reason, r.raw_finish_reason) == ("I can't.", "content_filter", "stop")


def test_legacy_completion_streams(server: FakeServer) -> None:
    def piece(text: str, finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "cmpl-1",
            "object": "text_completion",
            "model": "gpt-3.5-turbo-instruct",
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
        }

    server.add("/v1/completions", Reply(chunks=[sse(piece("Hello"), piece(" there", "length"))]))

    async def go(d: OpenAIDriver) -> list[Chunk]:
        return [c async for c in d.stream(CompletionRequest(prompt="Say", max_tokens=2))]

    r = collect_chunks(run(make(server), go))
    assert (r.text, r.finish_reason) == ("Hello there", "length")
    assert server.requests[0].json["prompt"] == "Say"


def test_only_the_first_choice_is_followed_when_n_is_above_one(server: FakeServer) -> None:
    both = [
        {"index": 1, "delta": {"content": "B"}, "finish_reason": None},
        {"index": 0, "delta": {"content": "A"}, "finish_reason": None},
    ]
    server.add(CHAT, Reply(chunks=[sse(fx.chunk(choices=both), fx.chunk({}, finish="stop"))]))
    assert collect_chunks(stream(server)).text == "A"


# -- broken streams -------------------------------------------------------------------------------


def test_stream_cut_before_finish_and_done_is_incomplete_after_the_partial_text(server: FakeServer) -> None:
    events = fx.text_stream("The capital", " is")[:3]
    server.add(CHAT, Reply(chunks=[sse(*events, done=False)]))
    seen: list[Chunk] = []
    with pytest.raises(errors.IncompleteStreamError, match="before any finish_reason") as caught:
        stream(server, into=seen)
    assert [c.text for c in seen] == ["The capital", " is"]
    assert all(c.finish_reason is None for c in seen)
    assert caught.value.retryable is True


def test_openai_stream_with_finish_but_no_done_is_incomplete(server: FakeServer) -> None:
    server.add(
        CHAT, Reply(chunks=[sse(*fx.text_stream("hi")[:-1], done=False)])
    )  # finish, no usage, no [DONE]
    with pytest.raises(errors.IncompleteStreamError, match="before \\[DONE\\]"):
        stream(server)


def test_done_without_its_blank_line_still_ends_the_stream(server: FakeServer) -> None:
    body = sse(*fx.text_stream("hi"), done=False) + b"data: [DONE]\n"
    server.add(CHAT, Reply(chunks=[body]))
    assert collect_chunks(stream(server)).finish_reason == "stop"


def test_an_unterminated_last_event_is_discarded(server: FakeServer) -> None:
    body = (
        sse(*fx.text_stream("hi")[:2], done=False)
        + b'data: {"choices": [{"index": 0, "delta": {"content": "lost"}}]}'
    )
    server.add(CHAT, Reply(chunks=[body]))
    seen: list[Chunk] = []
    with pytest.raises(errors.IncompleteStreamError):
        stream(server, into=seen)
    assert "lost" not in "".join(c.text for c in seen)


@pytest.mark.parametrize(
    ("error", "cls_name", "retryable"),
    [
        (fx.SERVER_ERROR["error"], "ServerError", True),
        ({"message": "overloaded", "type": "overloaded_error", "code": None}, "OverloadedError", True),
        (
            {"message": "slow down", "type": "rate_limit_error", "code": "rate_limit_exceeded"},
            "RateLimitError",
            True,
        ),
        (fx.QUOTA["error"], "QuotaExhaustedError", False),
        (fx.CONTEXT_LENGTH["error"], "ContextLengthExceededError", False),
        ({"message": "Loading model", "type": "unavailable_error", "code": 503}, "ServerError", True),
    ],
)
def test_mid_stream_error_event_is_a_typed_mid_stream_error(
    server: FakeServer, error: dict[str, Any], cls_name: str, retryable: bool
) -> None:
    events = [*fx.text_stream("The capital")[:2], {"error": error}]
    server.add(CHAT, Reply(chunks=[sse(*events)]))
    seen: list[Chunk] = []
    with pytest.raises(errors.MidStreamError) as caught:
        stream(server, into=seen)
    e = caught.value
    assert (e.retryable, e.details["classified_as"], e.status_code) == (retryable, cls_name, 200)
    assert (e.type, e.code) == (error["type"], None if error["code"] is None else str(error["code"]))
    assert error["message"] in e.message
    assert [c.text for c in seen] == ["The capital"]
    assert pickle.loads(pickle.dumps(e)).details["classified_as"] == cls_name


def test_crlf_line_endings_comments_and_unknown_fields_are_handled(server: FakeServer) -> None:
    raw = fx.sse_utf8(*fx.text_stream("Bonjour ", "à tous")).decode().replace("\n", "\r\n")
    body = ": OPENROUTER PROCESSING\r\n\r\nretry: 3000\r\nid: 7\r\n" + raw.replace(
        "data: {", ": keep-alive\r\ndata: {", 2
    )
    server.add(CHAT, Reply(chunks=[body.encode()]))
    r = collect_chunks(stream(server))
    assert (r.text, r.finish_reason, r.usage.total_tokens) == ("Bonjour à tous", "stop", 12)


def test_events_split_inside_a_utf8_character_and_between_cr_and_lf(server: FakeServer) -> None:
    body = fx.sse_utf8(*fx.text_stream("Grüße, ", "世界")).replace(b"\n", b"\r\n")
    cuts = [
        body.index("ü".encode()) + 1,
        body.index("世".encode()) + 2,
        body.index(b"\r\n\r\n") + 1,
        body.index(b"[DONE]") + 3,
    ]
    cuts = sorted(set(cuts + [body.index(b"\r\n", c) + 1 for c in cuts[:2]]))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    assert b"".join(pieces) == body and any(p.endswith(b"\r") for p in pieces)
    server.add(CHAT, Reply(chunks=pieces, chunk_delay=0.005))
    r = collect_chunks(stream(server))
    assert (r.text, r.finish_reason) == ("Grüße, 世界", "stop")


def test_any_two_way_split_of_a_stream_parses_the_same(server: FakeServer) -> None:
    body = fx.sse_utf8(
        {"choices": [{"index": 0, "delta": {"content": "é€"}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ).replace(b"\n", b"\r\n")
    for cut in range(1, len(body)):
        server.add(CHAT, Reply(chunks=[body[:cut], body[cut:]]))

    async def go(d: OpenAIDriver) -> list[str]:
        texts = []
        for _ in range(1, len(body)):
            texts.append(collect_chunks([c async for c in d.stream(ChatRequest(messages=HI))]).text)
        return texts

    assert set(run(make(server), go)) == {"é€"}


def test_connection_reset_mid_stream_is_an_incomplete_stream(server: FakeServer) -> None:
    pieces = [sse(e, done=False) for e in fx.text_stream("a", "b", "c")]
    server.add(CHAT, Reply(chunks=pieces, reset_after_chunks=2))
    seen: list[Chunk] = []
    with pytest.raises(errors.IncompleteStreamError):
        stream(server, into=seen)
    assert [c.text for c in seen] == ["a"]


def test_connection_reset_before_a_stream_reply_is_a_transport_error(server: FakeServer) -> None:
    server.add(CHAT, Reply(reset_before_reply=True))
    with pytest.raises(errors.TransportError):
        stream(server)


def test_a_stalled_stream_times_out(server: FakeServer) -> None:
    pieces = [sse(e, done=False) for e in fx.text_stream("a", "b")]
    server.add(CHAT, Reply(chunks=pieces, hang_after_chunks=2))
    seen: list[Chunk] = []
    with pytest.raises(errors.RequestTimeoutError):
        stream(server, into=seen, stream_idle_timeout=0.3)
    assert [c.text for c in seen] == ["a"]


def test_a_stream_whose_first_byte_is_late_times_out(server: FakeServer) -> None:
    server.add(CHAT, Reply(chunks=[sse(*fx.text_stream("a"))], delay=2.0))
    with pytest.raises(errors.RequestTimeoutError):
        stream(server, timeout=0.2)


def test_a_non_json_event_is_malformed(server: FakeServer) -> None:
    server.add(CHAT, Reply(chunks=[b'data: {"choices": [\n\n', sse(*fx.text_stream("a"))]))
    with pytest.raises(errors.MalformedResponseError, match="not a JSON object"):
        stream(server)


def test_a_plain_json_reply_to_a_stream_request_is_replayed_as_chunks(server: FakeServer) -> None:
    server.add(
        CHAT, Reply(body=fx.chat_reply("Paris.")), Reply(body=fx.QUOTA), Reply(body=b'{"id": "x", "choi')
    )
    chunks = stream(server)
    assert (chunks[0].text, chunks[-1].finish_reason, chunks[-1].usage and chunks[-1].usage.total_tokens) == (
        "Paris.",
        "stop",
        21,
    )
    with pytest.raises(errors.QuotaExhaustedError):
        stream(server)
    with pytest.raises(errors.IncompleteStreamError):
        stream(server)


def test_an_empty_200_stream_is_incomplete(server: FakeServer) -> None:
    server.add(CHAT, Reply(chunks=[]))
    with pytest.raises(errors.IncompleteStreamError):
        stream(server)


def test_breaking_out_of_a_stream_early_releases_the_connection(server: FakeServer) -> None:
    server.add(
        CHAT, Reply(chunks=[sse(e, done=False) for e in fx.text_stream("a", "b")], hang_after_chunks=2)
    )
    server.add(CHAT, Reply(body=fx.chat_reply("next")))

    async def go(d: OpenAIDriver) -> str:
        async for chunk in d.stream(ChatRequest(messages=HI)):
            if chunk.text:
                break
        return (await d.chat(ChatRequest(messages=HI))).text

    assert run(make(server, max_connections=1), go) == "next"
