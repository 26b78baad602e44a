"""The gateway's wire formats without a server: request bodies to Nova's calls, answers and
chunks to OpenAI's and Anthropic's shapes, errors to statuses, metrics to Prometheus text."""

from __future__ import annotations

import json
from typing import Any

import pytest

from nova import errors
from nova import gateway as wire
from nova.messages import ChatCall, CompleteCall, StreamCall
from nova.types import Chunk, Response, ToolCall, ToolCallDelta, Usage


def test_an_openai_chat_body_becomes_a_chat_call_with_the_rest_in_extra() -> None:
    parsed = wire.parse_chat(
        {
            "model": "openai/gpt-4o-mini",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                    ],
                },
            ],
            "max_completion_tokens": 50,
            "temperature": 0.2,
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "logit_bias": {"42": 1},
            "user": "someone",
        }
    )
    assert isinstance(parsed.call, ChatCall) and not parsed.stream
    request = parsed.call.request
    assert request.model == "openai/gpt-4o-mini" and request.max_tokens == 50 and request.temperature == 0.2
    assert request.messages[0].role == "system"
    assert request.messages[1].content[1].url == "https://example.com/a.png"  # type: ignore[index, union-attr]
    assert request.tool_choice == "f"
    assert request.extra == {"logit_bias": {"42": 1}}


def test_a_streamed_completion_body_becomes_a_stream_call_that_wants_usage() -> None:
    parsed = wire.parse_completion(
        {"model": "m", "prompt": ["once"], "stream": True, "stream_options": {"include_usage": True}}
    )
    assert isinstance(parsed.call, StreamCall) and parsed.include_usage
    assert isinstance(wire.parse_completion({"model": "m", "prompt": "x"}).call, CompleteCall)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body"),
        ({"messages": []}, "model"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "top_p": 7}, "top_p"),
        (
            {"model": "m", "messages": [{"role": "user", "content": [{"type": "audio"}]}]},
            "messages.0.content.0.type",
        ),
    ],
)
def test_invalid_chat_bodies_name_the_field(body: Any, field: str) -> None:
    with pytest.raises(errors.InvalidInputError) as caught:
        wire.parse_chat(body)
    assert caught.value.field == field
    status, shaped = wire.openai_error(caught.value)
    assert status == 400 and shaped["error"]["param"] == field


HELLO: Any = [{"role": "user", "content": "hello"}]


def test_novas_options_come_from_the_nova_object_or_headers_and_never_reach_the_wire() -> None:
    options = {"cache": "refresh", "ttl": 60, "conversation": "c1", "fallback": ["a/x", "b"], "timeout": 5}
    chat = wire.parse_chat({"model": "m", "messages": HELLO, "nova": options})
    assert wire.parse_chat({"model": "m", "messages": HELLO, "nova": {"ttl": 0}}).call.options.ttl_s == 0
    given = chat.call.options
    assert (given.cache, given.ttl_s, given.conversation) == ("refresh", 60, "c1")
    assert (given.fallback, given.timeout_s) == (("a/x", "b"), 5)
    assert chat.call.request.extra == {}

    headers = {"X-Nova-Cache": "false", "X-Nova-Conversation": "c2", "X-Nova-Fallback": "a/x, b/y"}
    text = wire.parse_completion({"model": "m", "prompt": "x", "nova": {"conversation": "c3"}}, 9, headers)
    given = text.call.options
    assert (given.cache, given.fallback, given.timeout_s) == (False, ("a/x", "b/y"), 9)
    assert given.conversation == "c3"  # the body wins over a header
    assert text.call.request.extra == {}

    messages = wire.parse_anthropic_messages(
        {"model": "m", "max_tokens": 5, "messages": HELLO, "nova": {"fallback": False}}
    )
    assert messages.call.options.fallback is False and messages.call.request.extra == {}


@pytest.mark.parametrize(
    ("nova", "headers", "field"),
    [
        ("cache", {}, "nova"),
        ({"cahce": True}, {}, "nova.cahce"),
        ({"cache": "yes"}, {}, "nova.cache"),
        ({"cache": 1}, {}, "nova.cache"),
        ({"ttl": -1}, {}, "nova.ttl"),
        ({"timeout": 0}, {}, "nova.timeout"),
        ({"conversation": 5}, {}, "nova.conversation"),
        ({"fallback": "openai/gpt-4o"}, {}, "nova.fallback"),
        ({"fallback": True}, {}, "nova.fallback"),
        (None, {"X-Nova-Cache": "maybe"}, "X-Nova-Cache"),
        (None, {"X-Nova-Cache-TTL": "soon"}, "X-Nova-Cache-TTL"),
    ],
)
def test_invalid_nova_options_are_a_400_naming_the_option(nova: Any, headers: Any, field: str) -> None:
    body: dict[str, Any] = {"model": "m", "messages": HELLO}
    if nova is not None:
        body["nova"] = nova
    with pytest.raises(errors.InvalidInputError) as caught:
        wire.parse_chat(body, None, headers)
    status, shaped = wire.openai_error(caught.value)
    assert status == 400 and shaped["error"]["param"] == field
    assert field in shaped["error"]["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [{"role": "user", "content": [{"type": "image", "source": "x"}]}],
            },
            "messages.0.content.0.source",
        ),
        (
            {"model": "m", "max_tokens": 5, "system": [{"type": "text", "text": 5}], "messages": HELLO},
            "system.0.text",
        ),
        (
            {
                "model": "m",
                "max_tokens": 5,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "tool_result", "content": [{"type": "text", "text": None}]}],
                    }
                ],
            },
            "messages.0.content.0.content.0.text",
        ),
    ],
)
def test_malformed_anthropic_blocks_are_a_400_naming_the_field_not_a_gateway_failure(
    body: Any, field: str
) -> None:
    with pytest.raises(errors.InvalidInputError) as caught:
        wire.parse_anthropic_messages(body)
    assert caught.value.field == field
    status, shaped = wire.anthropic_error(caught.value)
    assert status == 400 and field in shaped["error"]["message"]


def test_a_malformed_openai_tool_call_names_it() -> None:
    messages = [{"role": "assistant", "content": None, "tool_calls": [{"id": "a", "function": "f"}]}, *HELLO]
    with pytest.raises(errors.InvalidInputError) as caught:
        wire.parse_chat({"model": "m", "messages": messages})
    assert caught.value.field == "messages.0.tool_calls.0"


def test_an_answer_with_tool_calls_in_openais_and_anthropics_shapes() -> None:
    response = Response(
        text="",
        finish_reason="tool_calls",
        tool_calls=(ToolCall(id="call_1", name="f", arguments={"x": 1}),),
        usage=Usage(input_tokens=10, output_tokens=3, cached_input_tokens=4),
        model="gpt-4o-mini-2024",
    )
    openai = wire.chat_completion(response, "openai/gpt-4o-mini", "r1")
    choice = openai["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"x": 1}'}
    assert openai["usage"]["prompt_tokens_details"]["cached_tokens"] == 4
    anthropic = wire.anthropic_message(response, "m", "r1")
    assert anthropic["stop_reason"] == "tool_use"
    assert anthropic["content"] == [{"type": "tool_use", "id": "call_1", "name": "f", "input": {"x": 1}}]
    assert anthropic["usage"]["input_tokens"] == 6 and anthropic["usage"]["cache_read_input_tokens"] == 4


def test_an_openai_stream_names_the_role_once_and_each_tool_call_once() -> None:
    stream = wire.OpenAIStream("m", "r1", chat=True, include_usage=True)
    out = stream.chunk(Chunk(text="Hi"))
    out += stream.chunk(Chunk(tool_calls=(ToolCallDelta(index=0, id="c1", name="f", arguments='{"a"'),)))
    out += stream.chunk(Chunk(tool_calls=(ToolCallDelta(index=0, arguments=": 1}"),)))
    out += stream.chunk(Chunk(finish_reason="tool_calls", usage=Usage(input_tokens=2, output_tokens=5)))
    out += stream.end(None)
    deltas = [o["choices"][0]["delta"] for o in out if o["choices"]]
    assert deltas[0] == {"role": "assistant", "content": "Hi"}
    assert deltas[1]["tool_calls"][0] == {
        "index": 0,
        "id": "c1",
        "type": "function",
        "function": {"arguments": '{"a"', "name": "f"},
    }
    assert deltas[2]["tool_calls"][0] == {"index": 0, "function": {"arguments": ": 1}"}}
    assert out[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert out[-1]["choices"] == [] and out[-1]["usage"]["completion_tokens"] == 5


def test_the_usage_chunk_names_the_model_the_other_chunks_name() -> None:
    stream = wire.OpenAIStream("openai/gpt-4o-mini", "r1", chat=True, include_usage=True)
    out = stream.chunk(Chunk(text="Hi", model="gpt-4o-mini-2024-07-18"))
    out += stream.chunk(Chunk(finish_reason="stop", model="gpt-4o-mini-2024-07-18"))
    out += stream.end(None)
    assert {o["model"] for o in out} == {"gpt-4o-mini-2024-07-18"}


def test_an_anthropic_stream_opens_and_closes_a_block_for_text_and_each_tool_call() -> None:
    stream = wire.AnthropicStream("m", "r1")
    events = stream.chunk(Chunk(text="Let me check."))
    events += stream.chunk(Chunk(tool_calls=(ToolCallDelta(index=0, id="t1", name="f", arguments='{"x":'),)))
    events += stream.chunk(
        Chunk(tool_calls=(ToolCallDelta(index=0, arguments="1}"),), finish_reason="tool_calls")
    )
    events += stream.end(None)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[4][1]["content_block"] == {"type": "tool_use", "id": "t1", "name": "f", "input": {}}
    assert (
        "".join(d["delta"].get("partial_json", "") for n, d in events if n == "content_block_delta")
        == '{"x":1}'
    )
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.InvalidInputError("bad"), 400),
        (errors.UnknownDriverError("no such driver"), 404),
        (errors.NotFoundError("no such model", status_code=404), 404),
        (errors.RateLimitError("slow down", retry_after=1.2), 429),
        (errors.RateLimitExceededError("limit", retry_after=30), 429),
        (errors.AllTargetsFailedError("all failed"), 503),
        (errors.DriverUnavailableError("gone"), 503),
        (errors.RequestTimeoutError("late"), 504),
        (errors.AuthenticationError("upstream refused the key", status_code=401), 502),
        (errors.ServerError("boom", status_code=500), 502),
        (errors.RequestTooLargeError("big"), 413),
    ],
)
def test_errors_map_to_statuses_in_both_shapes(error: errors.NovaError, status: int) -> None:
    assert wire.openai_error(error)[0] == status
    code, body = wire.anthropic_error(error)
    assert code == status and body["type"] == "error" and body["error"]["message"]


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    assert wire.retry_after(errors.RateLimitError("x", retry_after=1.2)) == "2"
    assert wire.retry_after(errors.RateLimitError("x")) is None
    nested = errors.AllTargetsFailedError("x", errors=[errors.RateLimitError("y", retry_after=3)])
    assert wire.retry_after(nested) == "3"


def test_an_error_body_never_shows_a_key() -> None:
    error = errors.ServerError("upstream said: invalid key sk-test-abcdefgh12345 given")
    assert "sk-test-abcdefgh12345" not in json.dumps(wire.openai_error(error)[1])


def test_models_and_prometheus_text() -> None:
    models = wire.model_list({"openai": ("openai", "gpt-4o-mini"), "local": ("test", "")})
    assert [m["id"] for m in models["data"]] == ["local", "openai/gpt-4o-mini", "openai"]
    snapshot = {
        "targets": [
            {
                "driver": "openai",
                "model": "gpt-4o-mini",
                "requests": 3,
                "completed": 2,
                "failed": 1,
                "tokens": {"input": 10, "output": 4},
                "errors_by_type": {"RateLimitError": 1},
                "latency_s": {"count": 2, "sum": 0.5, "p50": 0.2, "p95": 0.3, "p99": 0.3},
                "cost_usd": 0.001,
            }
        ]
    }
    text = wire.prometheus_text(snapshot, {("chat", 200): 2})
    assert 'nova_requests_total{driver="openai",model="gpt-4o-mini"} 3' in text
    assert 'nova_tokens_total{driver="openai",model="gpt-4o-mini",kind="input"} 10' in text
    assert 'nova_request_latency_seconds{driver="openai",model="gpt-4o-mini",quantile="0.95"} 0.3' in text
    assert 'nova_request_latency_seconds_count{driver="openai",model="gpt-4o-mini"} 2' in text
    assert 'nova_gateway_requests_total{route="chat",status="200"} 2' in text


# -- the [server] section and `nova run --http` ---------------------------------------------------


def test_the_server_section_is_validated_with_did_you_mean_and_keeps_keys_secret() -> None:
    from nova.config import parse_config

    config = parse_config({"server": {"api_keys": ["sk-test-gw-0123456789"]}})
    assert config.server.host == "127.0.0.1" and not config.server.enabled  # loopback, off by default
    assert (
        "sk-test-gw-0123456789" not in repr(config)
        and config.server.api_keys[0].reveal() == "sk-test-gw-0123456789"
    )
    with pytest.raises(errors.ConfigurationError) as caught:
        parse_config({"server": {"prot": 4000, "max_body_bytes": 10, "api_keys": [""]}}, source="nova.toml")
    message = caught.value.message
    assert "unknown key 'server.prot' (did you mean 'port'?)" in message
    assert "server.max_body_bytes" in message and "server.api_keys" in message


def test_http_addresses_of_nova_run() -> None:
    import argparse

    from nova.cli import _http_address, _with_http
    from nova.config import parse_config

    assert _http_address("127.0.0.1:4000") == ("127.0.0.1", 4000)
    assert _http_address("4001") == (None, 4001)
    assert _http_address("[::1]:4002") == ("::1", 4002)
    for bad in ("localhost:http", "127.0.0.1:70000"):
        with pytest.raises(argparse.ArgumentTypeError):
            _http_address(bad)
    config = _with_http(parse_config({}), (None, 4003))
    assert (config.server.enabled, config.server.host, config.server.port) == (True, "127.0.0.1", 4003)


def test_whether_a_port_is_taken_is_answered_for_ipv6_addresses_and_names_too() -> None:
    import socket

    from nova.supervisors.system import port_in_use

    try:
        listener = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    with listener:
        port = listener.getsockname()[1]
        assert port_in_use("::1", port)  # `nova run --http [::1]:PORT` used to fail with gaierror
    assert not port_in_use("::1", port)
    assert not port_in_use("no-such-host.invalid", port)


# -- the server in-process, without an actor system -----------------------------------------------


def test_health_is_503_until_the_tree_is_ready_and_calls_without_a_router_fail_typed(tmp_path: Any) -> None:
    import socket

    import httpx

    from nova.actors.gateway import GatewayServer
    from nova.config import parse_config

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lanes = tmp_path / "lanes"
    lanes.mkdir(mode=0o700)
    config = parse_config({"system": {"lane_dir": str(lanes)}, "server": {"enabled": True, "port": port}})
    server = GatewayServer(config)
    server.start()
    try:
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/health").status_code == 503  # no tree yet
        body = {"model": "test-model", "messages": [{"role": "user", "content": "anyone?"}]}
        reply = httpx.post(
            f"{url}/v1/chat/completions", json=body, headers={"X-Nova-Timeout": "0.3"}, timeout=10
        )
        assert reply.status_code in (503, 504) and reply.json()["error"]["type"] in (
            "overloaded_error",
            "timeout_error",
        )
        server.routes["chat"].parse = lambda body, timeout, headers: 1 / 0  # a bug in the gateway
        broken = httpx.post(f"{url}/v1/chat/completions", json=body)
        assert (
            broken.status_code == 500
            and broken.json()["error"]["message"] == "the gateway failed: ZeroDivisionError"
        )
        server.ready = True
        assert httpx.get(f"{url}/health").json() == {"status": "ok", "ready": True}
        assert (
            'nova_gateway_requests_total{route="health",status="503"} 1' in httpx.get(f"{url}/metrics").text
        )
    finally:
        server.stop()
