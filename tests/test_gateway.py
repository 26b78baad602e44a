"""The HTTP gateway in a real `nova run --http` process, driven by what users drive it with: the
official `openai` SDK (sync, async, streaming, tools, errors), `curl`, and plain httpx for the
Anthropic-format route. Upstreams are real local HTTP servers (tests/fakeserver.py).

Output goes to files, never pipes (see tests/test_cli.py). Every process started here is ended.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest

from tests.drivers.fixtures_openai import chat_reply, chunk
from tests.fakeserver import FakeServer, Reply, sse
from tests.integration_helpers import HTTP_PORTS, next_port, wait_until
from tests.test_cli import STANDARD_VARIABLES, processes_of

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-test-gateway-1"
CONFIG = """
[system]
admin_port = {admin}
state_dir = "{state}"

[drivers.default]
kind = "test"
model = "test-model"

[drivers.limited]
kind = "test"
model = "tiny"

[drivers.upstream]
kind = "openai_compatible"
base_url = "{upstream}/v1"
api_key = "sk-test-upstream-1"
model = "up-model"

[drivers.drip]
kind = "openai_compatible"
base_url = "{drip}/v1"
model = "drip-model"

[cache]
enabled = true

[ratelimit.limits.limited]
requests_per_minute = 1
on_limit = "reject"

[server]
api_keys = ["{key}"]
max_body_bytes = 65536
"""


def free_http_port() -> int:
    for port in HTTP_PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {HTTP_PORTS}")


class WatchedServer(FakeServer):
    """A FakeServer that counts the connections that have ended (the client closed them)."""

    closed = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await super()._serve(reader, writer)
        finally:
            self.closed += 1


class Gateway:
    def __init__(
        self, url: str, proc: subprocess.Popen[bytes], upstream: FakeServer, drip: WatchedServer
    ) -> None:
        self.url, self.proc, self.upstream, self.drip = url, proc, upstream, drip

    def client(self, key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=30)

    def aclient(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=KEY, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("gateway")
    upstream, drip = FakeServer().start(), WatchedServer().start()
    upstream.default["/v1/chat/completions"] = Reply(body=chat_reply("from upstream"))
    config = tmp / "config.toml"
    config.write_text(
        CONFIG.format(admin=next_port(), state=tmp, upstream=upstream.url, drip=drip.url, key=KEY)
    )
    port = free_http_port()
    env = {k: v for k, v in os.environ.items() if k not in STANDARD_VARIABLES and k != "NOVA_CONFIG"}
    env["PYTHONPATH"] = str(ROOT)
    with (tmp / "run.out").open("wb") as out, (tmp / "run.err").open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nova.cli", "--config", str(config), "run", "--http", f"127.0.0.1:{port}"],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        assert wait_until(ready, 60), (tmp / "run.err").read_text()
        yield Gateway(url, proc, upstream, drip)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for leftover in processes_of(config):
            leftover.kill()
        upstream.stop()
        drip.stop()


def still_serving(gateway: Gateway) -> None:
    answer = gateway.client().chat.completions.create(
        model="default/test-model", messages=[{"role": "user", "content": "still there?"}]
    )
    assert answer.choices[0].message.content == "echo: still there?"


# -- the openai SDK ----------------------------------------------------------------------------------


def test_the_openai_sdk_chats_and_completes_through_the_gateway(gateway: Gateway) -> None:
    client = gateway.client()
    answer = client.chat.completions.create(
        model="default/test-model", messages=[{"role": "user", "content": "What is the capital of France?"}]
    )
    assert answer.choices[0].message.content == "echo: What is the capital of France?"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None and answer.usage.total_tokens > 0

    upstream = client.chat.completions.create(
        model="upstream/up-model", messages=[{"role": "user", "content": "hi"}]
    )
    assert upstream.choices[0].message.content == "from upstream"
    assert gateway.upstream.requests[-1].json["model"] == "up-model"

    text = client.completions.create(model="test-model", prompt="Once upon a time")
    assert text.choices[0].text == "echo: Once upon a time"
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(model="test-model", prompt="a b c", stream=True)
        if c.choices
    )
    assert streamed == "echo: a b c"


def test_provider_features_apply_an_identical_call_is_a_cache_hit_that_never_reaches_upstream(
    gateway: Gateway,
) -> None:
    client = gateway.client()
    question: Any = [{"role": "user", "content": "a question worth caching"}]
    before = len(gateway.upstream.requests)
    first = client.chat.completions.with_raw_response.create(model="upstream/up-model", messages=question)
    again = client.chat.completions.with_raw_response.create(model="upstream/up-model", messages=question)
    assert (
        first.parse().choices[0].message.content
        == again.parse().choices[0].message.content
        == "from upstream"
    )
    assert (first.headers["x-nova-cached"], again.headers["x-nova-cached"]) == ("false", "true")
    assert first.headers["x-nova-driver"] == "upstream" and first.headers["x-request-id"]
    assert len(gateway.upstream.requests) == before + 1


def test_novas_cache_option_over_http_skips_or_refreshes_the_cache(gateway: Gateway) -> None:
    client = gateway.client()

    def ask(question: str, **kwargs: Any) -> str:
        answer = client.chat.completions.with_raw_response.create(
            model="upstream/up-model", messages=[{"role": "user", "content": question}], **kwargs
        )
        assert answer.parse().choices[0].message.content == "from upstream"
        return answer.headers["x-nova-cached"]

    before = len(gateway.upstream.requests)
    no_cache: Any = {"nova": {"cache": False}}
    assert [ask("not cached", extra_body=no_cache) for _ in range(2)] == ["false", "false"]
    header = {"X-Nova-Cache": "false"}
    assert [ask("not cached either", extra_headers=header) for _ in range(2)] == ["false", "false"]
    assert len(gateway.upstream.requests) == before + 4

    assert ask("cached, then refreshed") == "false"
    assert ask("cached, then refreshed") == "true"
    assert ask("cached, then refreshed", extra_body={"nova": {"cache": "refresh"}}) == "false"
    assert len(gateway.upstream.requests) == before + 6


def test_novas_fallback_option_over_http_answers_from_the_next_target(gateway: Gateway) -> None:
    client = gateway.client()
    failing: Any = {"test_reply": {"error": "ServerError", "message": "the primary is down"}}
    hello: Any = [{"role": "user", "content": "hello"}]
    # a model of its own: these failures open its circuit, not the one of the model other tests use
    with pytest.raises(openai.APIStatusError) as down:  # no fallback configured
        client.chat.completions.create(model="default/failing-model", messages=hello, extra_body=failing)
    assert down.value.status_code in (502, 503)

    saved = client.chat.completions.with_raw_response.create(
        model="default/failing-model",
        messages=hello,
        extra_body={**failing, "nova": {"fallback": ["upstream/up-model"]}},
    )
    assert saved.parse().choices[0].message.content == "from upstream"
    assert saved.headers["x-nova-driver"] == "upstream"
    hit = client.chat.completions.with_raw_response.create(
        model="default/failing-model",
        messages=hello,
        extra_body={**failing, "nova": {"fallback": ["upstream/up-model"]}},
    )
    assert (hit.headers["x-nova-cached"], hit.headers["x-nova-driver"]) == ("true", "upstream")
    by_header = client.chat.completions.with_raw_response.create(
        model="default/failing-model",
        messages=[{"role": "user", "content": "hello again"}],  # not the cached answer above
        extra_body=failing,
        extra_headers={"X-Nova-Fallback": "upstream/up-model"},
    )
    assert by_header.headers["x-nova-driver"] == "upstream"
    assert "nova" not in gateway.upstream.requests[-1].json  # Nova's options never reach a service


def test_novas_conversation_option_over_http_sends_the_history(gateway: Gateway) -> None:
    client = gateway.client()
    conversation: Any = {"nova": {"conversation": "http-conv-1"}}
    client.chat.completions.create(
        model="upstream/up-model",
        messages=[{"role": "user", "content": "My name is Ada."}],
        extra_body=conversation,
    )
    client.chat.completions.create(
        model="upstream/up-model",
        messages=[{"role": "user", "content": "What is my name?"}],
        extra_body=conversation,
    )
    sent = gateway.upstream.requests[-1].json["messages"]
    assert [(m["role"], m["content"]) for m in sent] == [
        ("user", "My name is Ada."),
        ("assistant", "from upstream"),
        ("user", "What is my name?"),
    ]
    httpx.post(  # the Anthropic route, the id in a header
        f"{gateway.url}/v1/messages",
        headers={"x-api-key": KEY, "X-Nova-Conversation": "http-conv-1"},
        json={
            "model": "upstream/up-model",
            "max_tokens": 20,
            "messages": [{"role": "user", "content": "And?"}],
        },
        timeout=30,
    ).raise_for_status()
    assert len(gateway.upstream.requests[-1].json["messages"]) == 5


def test_invalid_nova_options_over_http_get_a_400_naming_them(gateway: Gateway) -> None:
    client = gateway.client()
    hello: Any = [{"role": "user", "content": "hello"}]
    with pytest.raises(openai.BadRequestError) as typo:
        client.chat.completions.create(
            model="test-model", messages=hello, extra_body={"nova": {"cahce": False}}
        )
    assert isinstance(typo.value.body, dict) and typo.value.body["param"] == "nova.cahce"
    with pytest.raises(openai.BadRequestError) as header:
        client.chat.completions.create(
            model="test-model", messages=hello, extra_headers={"X-Nova-Cache": "maybe"}
        )
    assert isinstance(header.value.body, dict) and header.value.body["param"] == "X-Nova-Cache"
    still_serving(gateway)


def test_the_async_sdk_gets_exactly_its_own_answer_for_each_of_many_concurrent_calls(
    gateway: Gateway,
) -> None:
    async def main() -> list[str]:
        client = gateway.aclient()
        try:
            answers = await asyncio.gather(
                *(
                    client.chat.completions.create(
                        model="default/test-model", messages=[{"role": "user", "content": f"question {i}"}]
                    )
                    for i in range(40)
                )
            )
        finally:
            await client.close()
        return [a.choices[0].message.content or "" for a in answers]

    assert asyncio.run(main()) == [f"echo: question {i}" for i in range(40)]


def test_a_stream_has_its_text_its_usage_chunk_and_ends(gateway: Gateway) -> None:
    stream = gateway.client().chat.completions.create(
        model="default/test-model",
        messages=[{"role": "user", "content": "tell me a short story"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: tell me a short story"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert (
        chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    )

    def first_chunks_timed() -> int:  # the stream's time to first chunk reaches the metrics
        text = httpx.get(f"{gateway.url}/metrics", timeout=10).text
        prefix = 'nova_time_to_first_chunk_seconds_count{driver="default",model="test-model"}'
        return sum(int(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))

    assert wait_until(lambda: first_chunks_timed() > 0, 10)


def test_tools_and_streamed_tool_calls_work(gateway: Gateway) -> None:
    client = gateway.client()
    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    reply = {
        "test_reply": {
            "tool_calls": [{"id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}]
        }
    }
    messages: Any = [{"role": "user", "content": "Weather in Paris?"}]
    answer = client.chat.completions.create(
        model="test-model", messages=messages, tools=tools, extra_body=reply
    )
    call = answer.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert answer.choices[0].finish_reason == "tool_calls"
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "call_1",
        "get_weather",
        {"city": "Paris"},
    )

    # the tool's answer goes back in the next turn
    follow = client.chat.completions.create(
        model="test-model",
        messages=[
            *messages,
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "user", "content": "so?"},
        ],
        tools=tools,
    )
    assert follow.choices[0].message.content == "echo: so?"

    calls: dict[int, dict[str, str]] = {}
    finish = None
    for piece in client.chat.completions.create(
        model="test-model", messages=messages, tools=tools, extra_body=reply, stream=True
    ):
        for delta in piece.choices[0].delta.tool_calls or []:
            entry = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] = delta.id or entry["id"]
            entry["name"] = (delta.function and delta.function.name) or entry["name"]
            entry["arguments"] += (delta.function and delta.function.arguments) or ""
        finish = piece.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert calls[0]["id"] == "call_1" and calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}


def test_errors_reach_the_sdk_with_their_status_codes_and_the_gateway_keeps_serving(gateway: Gateway) -> None:
    client = gateway.client()
    hello: Any = [{"role": "user", "content": "hello"}]
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nowhere/some-model", messages=hello)
    assert missing.value.status_code == 404 and "nowhere" in missing.value.message

    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="test-model", messages=hello, temperature="hot")  # type: ignore[arg-type]
    assert bad.value.status_code == 400
    assert isinstance(bad.value.body, dict) and bad.value.body["param"] == "temperature"

    client.chat.completions.create(model="limited/tiny", messages=hello)  # the minute's one request
    with pytest.raises(openai.RateLimitError) as limited:  # another question: not a cache hit
        client.chat.completions.create(model="limited/tiny", messages=[{"role": "user", "content": "more"}])
    assert limited.value.status_code == 429
    assert int(limited.value.response.headers["retry-after"]) >= 1

    slow = {"test_reply": {"text": "late", "delay": 30}}
    with pytest.raises(openai.APIStatusError) as late:
        client.chat.completions.create(
            model="test-model", messages=hello, extra_body=slow, extra_headers={"X-Nova-Timeout": "0.5"}
        )
    assert late.value.status_code == 504

    failing = {"test_reply": {"error": "AllTargetsFailedError", "message": "nothing answered"}}
    with pytest.raises(openai.APIStatusError) as down:
        client.chat.completions.create(model="test-model", messages=hello, extra_body=failing)
    assert down.value.status_code == 503
    still_serving(gateway)


def test_a_wrong_gateway_key_gets_401_and_never_reaches_a_driver(gateway: Gateway) -> None:
    before = len(gateway.upstream.requests)
    for key in ("sk-test-wrong-key", ""):
        with pytest.raises(openai.AuthenticationError) as denied:
            gateway.client(key=key or "x").chat.completions.create(
                model="upstream/up-model", messages=[{"role": "user", "content": "hi"}]
            )
        assert denied.value.status_code == 401
        assert "sk-test-wrong-key" not in str(denied.value.body) and KEY not in str(denied.value.body)
    anthropic = httpx.post(
        f"{gateway.url}/v1/messages",
        headers={"x-api-key": "sk-test-wrong-key"},
        json={"model": "upstream/up-model", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert anthropic.status_code == 401 and anthropic.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{gateway.url}/v1/models").status_code == 401
    assert len(gateway.upstream.requests) == before  # the upstream's call count did not move
    gateway.client().chat.completions.create(  # the right key: this one goes upstream
        model="upstream/up-model", messages=[{"role": "user", "content": "with the right key"}]
    )
    assert len(gateway.upstream.requests) == before + 1


# -- plain HTTP ---------------------------------------------------------------------------------------


def post(gateway: Gateway, path: str, body: Any, **kwargs: Any) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    headers = {
        "Authorization": f"Bearer {KEY}",
        "Content-Type": "application/json",
        **kwargs.pop("headers", {}),
    }
    kwargs.setdefault("timeout", 30)
    return httpx.post(f"{gateway.url}{path}", content=content, headers=headers, **kwargs)


def test_invalid_json_and_invalid_fields_get_400_naming_the_field(gateway: Gateway) -> None:
    broken = post(gateway, "/v1/chat/completions", b'{"model": "test-model", "messages": [')
    assert broken.status_code == 400 and broken.json()["error"]["param"] == "body"
    deep = post(gateway, "/v1/chat/completions", b"[" * 20_000 + b"]" * 20_000)
    assert deep.status_code == 400 and "nested too deeply" in deep.json()["error"]["message"]
    lone = b'{"model": "test-model", "messages": [{"role": "user", "content": "a \\ud800 b"}]}'
    surrogate = post(gateway, "/v1/chat/completions", lone)  # JSON allows it; UTF-8 cannot carry it
    assert surrogate.status_code == 400 and surrogate.json()["error"]["param"] == "messages.0"
    assert "surrogate" in surrogate.json()["error"]["message"]
    for body, field in (
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": "test-model", "messages": "hi"}, "messages"),
        ({"model": "test-model", "messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, "stream"),
        ({"model": "test-model", "messages": [{"role": "user", "content": "hi"}], "n": 3}, "n"),
    ):
        reply = post(gateway, "/v1/chat/completions", body)
        assert reply.status_code == 400, body
        assert reply.json()["error"]["param"] == field
        assert reply.json()["error"]["type"] == "invalid_request_error"
    assert (
        post(gateway, "/v1/completions", {"model": "test-model", "prompt": 7}).json()["error"]["param"]
        == "prompt"
    )
    still_serving(gateway)


def test_a_wrong_path_or_method_gets_an_error_body_the_sdk_can_show(gateway: Gateway) -> None:
    no_v1 = openai.OpenAI(base_url=gateway.url, api_key=KEY, max_retries=0, timeout=30)
    with pytest.raises(openai.NotFoundError) as missing:  # a base URL without /v1
        no_v1.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "hi"}])
    assert "/v1" in missing.value.message and "/chat/completions" in missing.value.message

    get = httpx.get(
        f"{gateway.url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=10
    )
    assert get.status_code == 405 and get.headers["Allow"] == "POST"
    assert get.json()["error"]["message"] == "GET is not allowed on /v1/chat/completions (use POST)"
    anthropic = httpx.get(f"{gateway.url}/v1/messages", headers={"x-api-key": KEY}, timeout=10)
    assert anthropic.status_code == 405 and anthropic.json()["type"] == "error"
    assert httpx.head(f"{gateway.url}/health", timeout=10).status_code == 200


def test_a_body_over_the_limit_gets_413(gateway: Gateway) -> None:
    big = {"model": "test-model", "messages": [{"role": "user", "content": "x" * 100_000}]}
    reply = post(gateway, "/v1/chat/completions", big)
    assert reply.status_code == 413
    assert "max_body_bytes" in reply.json()["error"]["message"]
    still_serving(gateway)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed on this machine")
def test_curl_streams_and_gets_errors(gateway: Gateway) -> None:
    def curl(*args: str) -> str:
        done = subprocess.run(
            [
                "curl",
                "-sS",
                "-N",
                "-H",
                f"Authorization: Bearer {KEY}",
                "-H",
                "Content-Type: application/json",
                *args,
            ],
            capture_output=True,
            timeout=30,
            check=True,
        )
        return done.stdout.decode()

    body = {"model": "test-model", "stream": True, "messages": [{"role": "user", "content": "one two"}]}
    out = curl(f"{gateway.url}/v1/chat/completions", "-d", json.dumps(body))
    events = [line.removeprefix("data: ") for line in out.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert text == "echo: one two"
    status = curl(
        "-o", "/dev/null", "-w", "%{http_code}", f"{gateway.url}/v1/chat/completions", "-d", "{not json"
    )
    assert status == "400"
    assert (
        json.loads(curl(f"{gateway.url}/v1/chat/completions", "-d", json.dumps({**body, "stream": False})))[
            "choices"
        ][0]["message"]["content"]
        == "echo: one two"
    )


def test_the_anthropic_messages_route_answers_streams_and_fails_in_anthropics_format(
    gateway: Gateway,
) -> None:
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    base = {
        "model": "test-model",
        "max_tokens": 100,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "hi there"}],
    }
    answer = httpx.post(f"{gateway.url}/v1/messages", headers=headers, json=base).json()
    assert answer["type"] == "message" and answer["role"] == "assistant"
    assert answer["content"] == [{"type": "text", "text": "echo: hi there"}]
    assert answer["stop_reason"] == "end_turn" and answer["usage"]["output_tokens"] > 0

    names, text = [], ""
    with httpx.stream(
        "POST", f"{gateway.url}/v1/messages", headers=headers, json={**base, "stream": True}
    ) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        event = ""
        for line in reply.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
                names.append(event)
            elif line.startswith("data: ") and event == "content_block_delta":
                text += json.loads(line.removeprefix("data: "))["delta"]["text"]
    assert text == "echo: hi there"
    assert names[0] == "message_start" and names[1] == "content_block_start"
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]

    tool = {"name": "get_weather", "description": "weather", "input_schema": {"type": "object"}}
    reply_spec = {"tool_calls": [{"id": "toolu_1", "name": "get_weather", "arguments": {"city": "Oslo"}}]}
    used = httpx.post(
        f"{gateway.url}/v1/messages",
        headers=headers,
        json={**base, "tools": [tool], "test_reply": reply_spec},
    ).json()
    assert used["stop_reason"] == "tool_use"
    assert used["content"] == [
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}
    ]
    turn = {
        **base,
        "tools": [tool],
        "messages": [
            {"role": "user", "content": "weather in Oslo?"},
            {"role": "assistant", "content": used["content"]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "rain"},
                    {"type": "text", "text": "and?"},
                ],
            },
        ],
    }
    assert (
        httpx.post(f"{gateway.url}/v1/messages", headers=headers, json=turn).json()["content"][0]["text"]
        == "echo: and?"
    )

    missing = httpx.post(f"{gateway.url}/v1/messages", headers=headers, json={**base, "model": "nowhere/x"})
    assert missing.status_code == 404
    assert missing.json()["type"] == "error" and missing.json()["error"]["type"] == "not_found_error"
    invalid = httpx.post(
        f"{gateway.url}/v1/messages",
        headers=headers,
        json={k: v for k, v in base.items() if k != "max_tokens"},
    )
    assert invalid.status_code == 400 and invalid.json()["error"]["type"] == "invalid_request_error"


def test_health_models_and_prometheus_metrics(gateway: Gateway) -> None:
    health = httpx.get(f"{gateway.url}/health")
    assert health.status_code == 200 and health.json()["ready"] is True
    models = {m.id for m in gateway.client().models.list()}
    assert {"default/test-model", "upstream/up-model", "limited/tiny", "drip"} <= models
    for model in ("upstream", "upstream/up-model", "default"):  # each id works as `model`
        answer = gateway.client().chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": f"which driver? {model}"}]
        )
        assert answer.headers["x-nova-driver"] == model.partition("/")[0]
    assert gateway.upstream.requests[-1].json["model"] == "up-model"
    still_serving(gateway)

    def counted() -> str | None:
        text = httpx.get(f"{gateway.url}/metrics").text
        return (
            text
            if 'nova_requests_total{driver="default",model="default/test-model"}' in text
            or 'nova_requests_total{driver="default"' in text
            else None
        )

    text = wait_until(counted, 10)
    assert text is not None
    assert "# TYPE nova_requests_total counter" in text
    assert 'nova_gateway_requests_total{route="chat",status="200"}' in text


def test_the_gateway_listens_on_loopback_only(gateway: Gateway) -> None:
    port = int(gateway.url.rsplit(":", 1)[1])
    listening = [
        c.laddr.ip
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    ]
    assert listening == ["127.0.0.1"]


# -- a client that leaves cancels its upstream call ----------------------------------------------------


def drip_stream(n: int = 2000) -> Reply:
    pieces = [sse(chunk({"role": "assistant", "content": ""}), done=False)]
    pieces += [sse(chunk({"content": "a"}), done=False)] * n
    return Reply(chunks=pieces, chunk_delay=0.02, headers={"content-type": "text/event-stream"})


def drip_in_flight(gateway: Gateway) -> int:
    """The calls to the drip driver that `/metrics` counts in flight."""
    text = httpx.get(f"{gateway.url}/metrics", timeout=10).text
    return sum(
        int(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('nova_requests_in_flight{driver="drip"')
    )


def test_a_client_that_disconnects_mid_stream_closes_the_upstream_connection(gateway: Gateway) -> None:
    drip = gateway.drip
    drip.add("/v1/chat/completions", drip_stream())
    before = drip.closed
    body = {"model": "drip/drip-model", "stream": True, "messages": [{"role": "user", "content": "go"}]}
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
    ) as reply:
        lines = reply.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))  # the stream is flowing
    # the client has closed; the upstream would drip for 40 s more
    assert wait_until(lambda: drip.closed > before, 10), "the upstream stream outlived its client"
    assert wait_until(lambda: drip_in_flight(gateway) == 0, 10), "a cancelled call still counts in flight"
    still_serving(gateway)


def test_many_clients_that_leave_mid_stream_at_once_leave_nothing_in_flight(gateway: Gateway) -> None:
    drip = gateway.drip
    drip.add("/v1/chat/completions", *[drip_stream() for _ in range(12)])
    before = drip.closed

    async def leave(i: int, client: httpx.AsyncClient) -> None:
        body = {
            "model": "drip/drip-model",
            "stream": True,
            "messages": [{"role": "user", "content": f"go {i}"}],
        }
        async with client.stream("POST", f"{gateway.url}/v1/chat/completions", json=body) as reply:
            async for line in reply.aiter_lines():
                if line.startswith("data: "):
                    return  # the stream is flowing: go

    async def main() -> None:
        headers = {"Authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(timeout=30, headers=headers) as client:
            await asyncio.gather(*(leave(i, client) for i in range(12)))

    asyncio.run(main())
    assert wait_until(lambda: drip.closed >= before + 12, 10), "an upstream stream outlived its client"
    assert wait_until(lambda: drip_in_flight(gateway) == 0, 10), "cancelled calls still count in flight"
    # rows are the requested model's, not the one the service names in its chunks
    assert 'driver="drip",model="gpt-4o-mini-2024-07-18"' not in httpx.get(f"{gateway.url}/metrics").text
    still_serving(gateway)


def test_a_client_that_disconnects_mid_call_closes_the_upstream_connection(gateway: Gateway) -> None:
    drip = gateway.drip
    drip.add("/v1/chat/completions", Reply(chunks=[" "] * 2000, chunk_delay=0.02))  # a body that never ends
    before = drip.closed
    body = {"model": "drip/drip-model", "messages": [{"role": "user", "content": "go and hang"}]}
    with pytest.raises(httpx.ReadTimeout):
        post(gateway, "/v1/chat/completions", body, timeout=httpx.Timeout(30, read=1.0))
    assert wait_until(lambda: drip.closed > before, 10), "the upstream call outlived its client"
    assert wait_until(lambda: drip_in_flight(gateway) == 0, 10), "a cancelled call still counts in flight"
    still_serving(gateway)


def test_a_stream_that_breaks_after_its_first_chunk_ends_with_an_error_not_a_done(gateway: Gateway) -> None:
    broken = {"test_reply": {"text": "one two three four five", "fail_after_chunks": 2}}
    stream = gateway.client().chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": "go"}], stream=True, extra_body=broken
    )
    seen = []
    with pytest.raises(openai.APIError) as caught:
        for piece in stream:
            seen.append(piece.choices[0].delta.content)
    assert seen and "IncompleteStreamError" in str(caught.value.body)
    body = {"model": "test-model", "stream": True, "messages": [{"role": "user", "content": "go"}], **broken}
    text = post(gateway, "/v1/chat/completions", body).text
    assert "[DONE]" not in text and text.rstrip().endswith("}")
    still_serving(gateway)


def test_a_killed_gateway_is_restarted_by_its_supervisor_and_serves_again(gateway: Gateway) -> None:
    port = int(gateway.url.rsplit(":", 1)[1])

    def listener() -> int | None:
        for c in psutil.net_connections(kind="inet"):
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid:
                return c.pid
        return None

    first = listener()
    assert first is not None
    os.kill(first, signal.SIGKILL)
    assert wait_until(lambda: (listener() or first) != first, 20), "no new gateway listens"
    assert wait_until(lambda: httpx.get(f"{gateway.url}/health").status_code == 200, 20)
    still_serving(gateway)


def test_nova_run_with_its_http_port_taken_stops_at_start_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[system]\nadmin_port = {next_port()}\nstate_dir = "{tmp_path}"\n')
    env = {k: v for k, v in os.environ.items() if k not in STANDARD_VARIABLES and k != "NOVA_CONFIG"}
    env["PYTHONPATH"] = str(ROOT)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with (tmp_path / "run.err").open("wb") as err:  # a file, never a pipe (see tests/test_cli.py)
            done = subprocess.run(
                [sys.executable, "-m", "nova.cli", "--config", str(config), "run", "--http", str(port)],
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=ROOT,
                env=env,
                timeout=60,
            )
    assert done.returncode == 2
    assert f"server.port {port}" in (tmp_path / "run.err").read_text()


def test_an_abandoned_stream_does_not_hold_back_an_identical_call_after_it(gateway: Gateway) -> None:
    drip = gateway.drip
    drip.add("/v1/chat/completions", drip_stream())
    before = drip.closed
    messages = [{"role": "user", "content": "asked, abandoned, asked again"}]
    body = {"model": "drip/drip-model", "stream": True, "messages": messages}
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
    ) as reply:
        assert next(line for line in reply.iter_lines() if line.startswith("data: "))
    assert wait_until(lambda: drip.closed > before, 10)
    drip.add("/v1/chat/completions", Reply(body=chat_reply("answered")))
    again = post(gateway, "/v1/chat/completions", {**body, "stream": False}, headers={"X-Nova-Timeout": "10"})
    assert again.status_code == 200, again.text  # not left waiting behind the abandoned call
    assert again.json()["choices"][0]["message"]["content"] == "answered"
