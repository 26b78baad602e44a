"""What every driver promises, checked for each registered driver against a real local server.

Each HTTP driver gets a `Wire` profile: where it posts and a canned valid reply in its service's
own format. The same assertions then run for all of them: the request shape, `chat`, `complete`
and `stream` (of a chat and of a completion) parsed into the same `Response`/`Chunk`s, the error
classes of 401/429/500, `extra` sent unchanged, `aclose`, and no key in any repr. The test
driver gets the same promises without HTTP. A new built-in driver without a profile here fails
`test_every_builtin_driver_has_a_profile`.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from nova import errors
from nova.drivers import BUILTIN, create_driver
from nova.drivers.base import Driver
from nova.types import ChatRequest, Chunk, CompletionRequest, Response, Usage, collect_chunks
from tests.conftest import arun
from tests.fakeserver import FakeServer, Reply, sse

KEY = "sk-test-contract-0001"
ASKED = "contract-model"
SERVED = "served-model"  # the model the reply names; Response.model reports it
QUESTION = "What is the capital of France?"
PROBE = {"nova_contract_probe": {"nested": [1, "two", None, {"x": 1.5}], "flag": True}}
USAGE = Usage(input_tokens=12, output_tokens=3, total_tokens=15)


@dataclass(frozen=True)
class Wire:
    """One service's wire format, as far as the contract needs it."""

    chat_path: str
    complete_path: str
    stream_path: str
    auth_header: tuple[str, str]  # (name, value) carrying KEY
    request_id_header: str
    base_url: Callable[[str], str]  # server root -> the driver's base_url
    chat_reply: Callable[[str], dict[str, Any]]  # raw finish reason -> body
    complete_reply: Callable[[str], dict[str, Any]]
    stream_pieces: list[bytes]  # a streamed "Par" + "is." answer, cut into reads
    stream_type: str
    complete_stream_path: str
    complete_stream_pieces: list[bytes]  # the same answer, streamed as a completion
    error_body: Callable[[int, str], dict[str, Any]]  # status, message -> body
    raw_finish: dict[str, str]  # Nova's finish reason -> the service's


def cut(body: bytes, parts: int = 3) -> list[bytes]:
    """Cut a body into reads at awkward places (inside lines and JSON)."""
    step = max(1, len(body) // parts)
    return [body[i : i + step] for i in range(0, len(body), step)]


# -- OpenAI and OpenAI-compatible ------------------------------------------------------------------


def openai_chat(finish: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-contract",
        "object": "chat.completion",
        "created": 1741569952,
        "model": SERVED,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Paris."}, "finish_reason": finish}
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }


def openai_completion(finish: str) -> dict[str, Any]:
    return {
        "id": "cmpl-contract",
        "object": "text_completion",
        "created": 1741569952,
        "model": SERVED,
        "choices": [{"index": 0, "text": "Paris.", "logprobs": None, "finish_reason": finish}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }


def openai_chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-contract",
        "object": "chat.completion.chunk",
        "model": SERVED,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        "usage": None,
    }


OPENAI_STREAM = sse(
    openai_chunk({"role": "assistant", "content": ""}),
    openai_chunk({"content": "Par"}),
    openai_chunk({"content": "is."}),
    openai_chunk({}, "stop"),
    {
        "id": "chatcmpl-contract",
        "object": "chat.completion.chunk",
        "model": SERVED,
        "choices": [],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    },
)


def openai_completion_chunk(text: str, finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "cmpl-contract",
        "object": "text_completion",
        "model": SERVED,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
    }


OPENAI_COMPLETION_STREAM = sse(
    openai_completion_chunk("Par"),
    openai_completion_chunk("is."),
    openai_completion_chunk("", "stop"),
    {
        "id": "cmpl-contract",
        "object": "text_completion",
        "model": SERVED,
        "choices": [],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    },
)


def openai_error(status: int, message: str) -> dict[str, Any]:
    kind, code = {
        401: ("invalid_request_error", "invalid_api_key"),
        429: ("requests", "rate_limit_exceeded"),
        500: ("server_error", None),
    }[status]
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


OPENAI = Wire(
    chat_path="/v1/chat/completions",
    complete_path="/v1/completions",
    stream_path="/v1/chat/completions",
    auth_header=("authorization", f"Bearer {KEY}"),
    request_id_header="x-request-id",
    base_url=lambda root: f"{root}/v1",
    chat_reply=openai_chat,
    complete_reply=openai_completion,
    stream_pieces=cut(OPENAI_STREAM),
    stream_type="text/event-stream",
    complete_stream_path="/v1/completions",
    complete_stream_pieces=cut(OPENAI_COMPLETION_STREAM),
    error_body=openai_error,
    raw_finish={"stop": "stop", "length": "length"},
)

# -- Anthropic ----------------------------------------------------------------------------------------


def anthropic_message(finish: str) -> dict[str, Any]:
    return {
        "id": "msg_contract",
        "type": "message",
        "role": "assistant",
        "model": SERVED,
        "content": [{"type": "text", "text": "Paris."}],
        "stop_reason": finish,
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 3},
    }


ANTHROPIC_STREAM = sse(
    {
        "type": "message_start",
        "message": {
            "id": "msg_contract",
            "type": "message",
            "role": "assistant",
            "model": SERVED,
            "content": [],
            "stop_reason": None,
            "usage": {"input_tokens": 12, "output_tokens": 1},
        },
    },
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Par"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "is."}},
    {"type": "content_block_stop", "index": 0},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 3},
    },
    {"type": "message_stop"},
    event_names=True,
    done=False,
)


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    kind = {401: "authentication_error", 429: "rate_limit_error", 500: "api_error"}[status]
    return {"type": "error", "error": {"type": kind, "message": message}}


ANTHROPIC = Wire(
    chat_path="/v1/messages",
    complete_path="/v1/messages",
    stream_path="/v1/messages",
    auth_header=("x-api-key", KEY),
    request_id_header="request-id",
    base_url=lambda root: root,
    chat_reply=anthropic_message,
    complete_reply=anthropic_message,
    stream_pieces=cut(ANTHROPIC_STREAM, 5),
    stream_type="text/event-stream",
    complete_stream_path="/v1/messages",  # a completion is one user message
    complete_stream_pieces=cut(ANTHROPIC_STREAM, 5),
    error_body=anthropic_error,
    raw_finish={"stop": "end_turn", "length": "max_tokens"},
)

# -- Ollama -------------------------------------------------------------------------------------------


def ollama_done(**fields: Any) -> dict[str, Any]:
    return {
        "model": SERVED,
        "created_at": "2025-06-01T10:00:00.000000Z",
        **fields,
        "done": True,
        "total_duration": 5_000_000,
        "load_duration": 1_000_000,
        "prompt_eval_count": 12,
        "prompt_eval_duration": 2_000_000,
        "eval_count": 3,
        "eval_duration": 2_000_000,
    }


def ollama_line(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode() + b"\n"


OLLAMA_STREAM = b"".join(
    [
        ollama_line({"model": SERVED, "message": {"role": "assistant", "content": "Par"}, "done": False}),
        ollama_line({"model": SERVED, "message": {"role": "assistant", "content": "is."}, "done": False}),
        ollama_line(ollama_done(message={"role": "assistant", "content": ""}, done_reason="stop")),
    ]
)

OLLAMA_GENERATE_STREAM = b"".join(
    [
        ollama_line({"model": SERVED, "response": "Par", "done": False}),
        ollama_line({"model": SERVED, "response": "is.", "done": False}),
        ollama_line(ollama_done(response="", done_reason="stop")),
    ]
)

OLLAMA = Wire(
    chat_path="/api/chat",
    complete_path="/api/generate",
    stream_path="/api/chat",
    auth_header=("authorization", f"Bearer {KEY}"),
    request_id_header="x-request-id",
    base_url=lambda root: root,
    chat_reply=lambda finish: ollama_done(
        message={"role": "assistant", "content": "Paris."}, done_reason=finish
    ),
    complete_reply=lambda finish: ollama_done(response="Paris.", done_reason=finish),
    stream_pieces=cut(OLLAMA_STREAM),
    stream_type="application/x-ndjson",
    complete_stream_path="/api/generate",
    complete_stream_pieces=cut(OLLAMA_GENERATE_STREAM),
    error_body=lambda status, message: {"error": message},
    raw_finish={"stop": "stop", "length": "length"},
)

WIRES: dict[str, Wire] = {
    "openai": OPENAI,
    "openai_compatible": OPENAI,
    "anthropic": ANTHROPIC,
    "ollama": OLLAMA,
}
HTTP_DRIVERS = sorted(WIRES)


def test_every_builtin_driver_has_a_profile() -> None:
    assert set(WIRES) == set(BUILTIN) - {"test"}


# -- running calls ------------------------------------------------------------------------------------


def make(name: str, server: FakeServer) -> Driver:
    return create_driver(
        name,
        api_key=KEY,
        base_url=WIRES[name].base_url(server.url),
        model=ASKED,
        timeout=10.0,
        stream_idle_timeout=10.0,
    )


def chat_request(**fields: Any) -> ChatRequest:
    return ChatRequest(messages=[{"role": "user", "content": QUESTION}], **fields)


async def collect(chunks: AsyncIterator[Chunk]) -> list[Chunk]:
    return [chunk async for chunk in chunks]


def call(name: str, server: FakeServer, kind: str, **fields: Any) -> Any:
    """Run one chat / complete / stream call on a fresh driver; close it afterwards."""

    async def go() -> Any:
        driver = make(name, server)
        try:
            if kind == "chat":
                return await driver.chat(chat_request(**fields))
            if kind == "complete":
                return await driver.complete(CompletionRequest(prompt=QUESTION, **fields))
            if kind == "stream_complete":
                return await collect(driver.stream(CompletionRequest(prompt=QUESTION, **fields)))
            return await collect(driver.stream(chat_request(**fields)))
        finally:
            await driver.aclose()

    return arun(go())


def failure(name: str, server: FakeServer, kind: str) -> errors.NovaError:
    with pytest.raises(errors.NovaError) as caught:
        call(name, server, kind)
    return caught.value


def stream_reply(wire: Wire) -> Reply:
    return Reply(chunks=list(wire.stream_pieces), headers={"content-type": wire.stream_type})


def complete_stream_reply(wire: Wire) -> Reply:
    return Reply(chunks=list(wire.complete_stream_pieces), headers={"content-type": wire.stream_type})


def assert_answer(response: Response, name: str, finish: str = "stop") -> None:
    assert response.text == "Paris."
    assert response.finish_reason == finish
    assert response.usage == USAGE
    assert response.model == SERVED
    assert response.driver == name


def assert_no_key(*values: object) -> None:
    for value in values:
        assert KEY not in repr(value) and KEY not in str(value), value


# -- the contract -------------------------------------------------------------------------------------


@pytest.mark.parametrize("finish", ["stop", "length"])
@pytest.mark.parametrize("name", HTTP_DRIVERS)
def test_chat(name: str, finish: str, server: FakeServer) -> None:
    wire = WIRES[name]
    raw = wire.raw_finish[finish]
    server.add(wire.chat_path, Reply(body=wire.chat_reply(raw)))
    response = call(name, server, "chat", max_tokens=50)
    assert_answer(response, name, finish)
    assert response.raw_finish_reason == raw
    sent = server.requests[0]
    assert (sent.method, sent.path) == ("POST", wire.chat_path)
    assert sent.headers["content-type"].startswith("application/json")
    assert sent.headers[wire.auth_header[0]] == wire.auth_header[1]
    assert sent.json["model"] == ASKED
    assert QUESTION in json.dumps(sent.json)
    assert sent.json.get("stream") in (None, False)


@pytest.mark.parametrize("name", HTTP_DRIVERS)
def test_complete(name: str, server: FakeServer) -> None:
    wire = WIRES[name]
    server.add(wire.complete_path, Reply(body=wire.complete_reply(wire.raw_finish["stop"])))
    assert_answer(call(name, server, "complete"), name)
    sent = server.requests[0]
    assert sent.path == wire.complete_path
    assert sent.json["model"] == ASKED and QUESTION in json.dumps(sent.json)


@pytest.mark.parametrize("name", HTTP_DRIVERS)
def test_stream(name: str, server: FakeServer) -> None:
    wire = WIRES[name]
    server.add(wire.stream_path, stream_reply(wire))
    chunks = call(name, server, "stream")
    assert "".join(c.text for c in chunks) == "Paris."
    last = chunks[-1]
    assert (last.finish_reason, last.usage) == ("stop", USAGE)
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert_answer(collect_chunks(chunks, driver=name), name)
    sent = server.requests[0]
    assert sent.path == wire.stream_path and sent.json["stream"] is True
    assert sent.json["model"] == ASKED


@pytest.mark.parametrize("name", HTTP_DRIVERS)
def test_stream_a_completion(name: str, server: FakeServer) -> None:
    wire = WIRES[name]
    server.add(wire.complete_stream_path, complete_stream_reply(wire))
    chunks = call(name, server, "stream_complete", max_tokens=50)
    assert "".join(c.text for c in chunks) == "Paris."
    assert (chunks[-1].finish_reason, chunks[-1].usage) == ("stop", USAGE)
    assert all(c.finish_reason is None for c in chunks[:-1])
    assert_answer(collect_chunks(chunks, driver=name), name)
    sent = server.requests[0]
    assert sent.path == wire.complete_stream_path and sent.json["stream"] is True
    assert sent.json["model"] == ASKED and QUESTION in json.dumps(sent.json)


@pytest.mark.parametrize("kind", ["chat", "complete", "stream", "stream_complete"])
@pytest.mark.parametrize("name", HTTP_DRIVERS)
def test_extra_reaches_the_wire_unchanged(name: str, kind: str, server: FakeServer) -> None:
    wire = WIRES[name]
    if kind == "chat":
        server.add(wire.chat_path, Reply(body=wire.chat_reply(wire.raw_finish["stop"])))
    elif kind == "complete":
        server.add(wire.complete_path, Reply(body=wire.complete_reply(wire.raw_finish["stop"])))
    elif kind == "stream_complete":
        server.add(wire.complete_stream_path, complete_stream_reply(wire))
    else:
        server.add(wire.stream_path, stream_reply(wire))
    call(name, server, kind, extra=PROBE)
    sent = server.requests[0].json
    assert sent["nova_contract_probe"] == PROBE["nova_contract_probe"]


# A lone surrogate in text ("caf\udce9") is refused when the request is built (tests/test_types.py).
UNENCODABLE = {
    "set-in-extra": ({"extra": {"nova_tags": {"a", "b"}}}, "nova_tags"),
    "nan-in-extra": ({"extra": {"nova_weight": float("nan")}}, "nova_weight"),
}


@pytest.mark.parametrize("kind", ["chat", "complete", "stream"])
@pytest.mark.parametrize("case", sorted(UNENCODABLE))
@pytest.mark.parametrize("name", HTTP_DRIVERS)
def test_input_that_cannot_be_encoded_is_refused_before_any_request(
    name: str, case: str, kind: str, server: FakeServer
) -> None:
    fields, named = UNENCODABLE[case]

    async def go() -> None:
        driver = make(name, server)
        try:
            if kind == "complete":
                text = fields["messages"][0]["content"] if "messages" in fields else QUESTION
                await driver.complete(CompletionRequest(prompt=text, extra=fields.get("extra", {})))
                return
            request = ChatRequest(**{"messages": [{"role": "user", "content": QUESTION}], **fields})
            if kind == "chat":
                await driver.chat(request)
            else:
                await collect(driver.stream(request))
        finally:
            await driver.aclose()

    with pytest.raises(errors.InvalidInputError) as caught:
        arun(go())
    assert named in caught.value.message and caught.value.driver == name
    assert caught.value.field  # the place in the request body, e.g. "messages.0.content"
    assert not caught.value.retryable
    assert server.requests == []


ERRORS: list[tuple[int, dict[str, str], type[errors.NovaError], bool]] = [
    (401, {}, errors.AuthenticationError, False),
    (429, {"retry-after": "2"}, errors.RateLimitError, True),
    (500, {}, errors.ServerError, True),
]


@pytest.mark.parametrize("kind", ["chat", "stream"])
@pytest.mark.parametrize(("status", "headers", "cls", "retryable"), ERRORS, ids=[str(e[0]) for e in ERRORS])
@pytest.mark.parametrize("name", HTTP_DRIVERS)
def test_error_statuses_map_to_the_same_classes(
    name: str,
    status: int,
    headers: dict[str, str],
    cls: type[errors.NovaError],
    retryable: bool,
    kind: str,
    server: FakeServer,
) -> None:
    wire = WIRES[name]
    message = f"Incorrect API key provided: {KEY}" if status == 401 else f"failure {status}"
    body = wire.error_body(status, message)
    headers = {**headers, wire.request_id_header: "req-contract"}
    server.add(wire.chat_path, Reply(status=status, body=body, headers=headers))
    error = failure(name, server, kind)
    assert type(error) is cls, repr(error)
    assert (error.status_code, error.retryable, error.driver) == (status, retryable, name)
    assert error.request_id == "req-contract"
    assert error.model == ASKED
    if status == 429:
        assert error.retry_after == 2.0
    assert_no_key(error, pickle.loads(pickle.dumps(error)), error.message)


@pytest.mark.parametrize("name", HTTP_DRIVERS)
def test_aclose_is_idempotent_and_repr_hides_the_key(name: str, server: FakeServer) -> None:
    wire = WIRES[name]
    server.add(wire.chat_path, Reply(body=wire.chat_reply(wire.raw_finish["stop"])))

    async def go() -> None:
        unused = make(name, server)
        await unused.aclose()
        await unused.aclose()
        driver = make(name, server)
        assert_no_key(driver, vars(driver))
        assert_answer(await driver.chat(chat_request()), name)
        assert_no_key(driver, vars(driver))
        await driver.aclose()
        await driver.aclose()

    arun(go())


# -- the test driver: the same promises without HTTP ------------------------------------------------


def scripted_call(kind: str, reply: Any = None, **fields: Any) -> Any:
    from nova.drivers.testing import TestDriver

    async def go() -> Any:
        driver = create_driver("test", model=ASKED)
        assert isinstance(driver, TestDriver)
        if reply is not None:
            driver.push(reply)
        try:
            if kind == "chat":
                result: Any = await driver.chat(chat_request(**fields))
            elif kind == "complete":
                result = await driver.complete(CompletionRequest(prompt=QUESTION, **fields))
            elif kind == "stream_complete":
                result = await collect(driver.stream(CompletionRequest(prompt=QUESTION, **fields)))
            else:
                result = await collect(driver.stream(chat_request(**fields)))
            return result, driver.requests
        finally:
            await driver.aclose()
            await driver.aclose()

    return arun(go())


SCRIPTED = {"text": "Paris.", "usage": {"input_tokens": 12, "output_tokens": 3}}


@pytest.mark.parametrize("kind", ["chat", "complete"])
def test_the_test_driver_answers(kind: str) -> None:
    response, requests = scripted_call(kind, SCRIPTED, extra=PROBE)
    assert (response.text, response.finish_reason, response.usage) == ("Paris.", "stop", USAGE)
    assert (response.model, response.driver) == (ASKED, "test")
    assert requests[0].extra == PROBE


@pytest.mark.parametrize("kind", ["stream", "stream_complete"])
def test_the_test_driver_streams(kind: str) -> None:
    chunks, _ = scripted_call(kind, SCRIPTED)
    assert "".join(c.text for c in chunks) == "Paris."
    assert (chunks[-1].finish_reason, chunks[-1].usage) == ("stop", USAGE)
    assert all(c.finish_reason is None for c in chunks[:-1])


@pytest.mark.parametrize("kind", ["chat", "stream"])
@pytest.mark.parametrize(("status", "headers", "cls", "retryable"), ERRORS, ids=[str(e[0]) for e in ERRORS])
def test_the_test_driver_scripts_the_same_errors(
    status: int, headers: dict[str, str], cls: type[errors.NovaError], retryable: bool, kind: str
) -> None:
    reply = {"error": cls.__name__, "status_code": status, "retry_after": 2.0 if headers else None}
    with pytest.raises(cls) as caught:
        scripted_call(kind, reply)
    error = caught.value
    assert (error.status_code, error.retryable, error.driver) == (status, retryable, "test")
    if status == 429:
        assert error.retry_after == 2.0
