"""The scriptable test driver: queues, handlers, scripted errors and streams, all deterministic."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from nova import errors
from nova.drivers.testing import TestDriver
from nova.types import ChatRequest, Chunk, CompletionRequest, Response, ToolCall, Usage, collect_chunks
from tests.conftest import arun

HI = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
]


def ask(driver: TestDriver, **request: Any) -> Response:
    request.setdefault("messages", HI)
    return arun(driver.chat(ChatRequest(**request)))


def stream(driver: TestDriver, into: list[Chunk] | None = None, **request: Any) -> list[Chunk]:
    request.setdefault("messages", HI)
    chunks = [] if into is None else into

    async def go() -> list[Chunk]:
        async for chunk in driver.stream(ChatRequest(**request)):
            chunks.append(chunk)
        return chunks

    return arun(go())


def scripted_handler(request: ChatRequest | CompletionRequest) -> Any:
    """Used by name ("module:attr"), as a config file would give it."""
    if isinstance(request, CompletionRequest):
        return f"completed {request.prompt}"
    return {"text": f"{len(request.messages)} messages", "finish_reason": "length"}


def test_echo_is_the_default_answer() -> None:
    driver = TestDriver()
    response = ask(driver)
    assert response.text == "echo: What is the capital of France?"
    assert (response.finish_reason, response.driver, response.model) == ("stop", "test", "test-model")
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    done = arun(driver.complete(CompletionRequest(prompt="Say hi")))
    assert done.text == "echo: Say hi"


def test_the_request_model_wins_over_the_default() -> None:
    assert ask(TestDriver(model="m-default"), model="m-asked").model == "m-asked"
    with pytest.raises(errors.InvalidInputError) as caught:
        ask(TestDriver(model=""))
    assert caught.value.field == "model"


def test_queued_replies_come_in_order_then_the_echo() -> None:
    driver = TestDriver(replies=["first", "second"])
    driver.push("third")
    assert [ask(driver).text for _ in range(4)] == [
        "first",
        "second",
        "third",
        "echo: What is the capital of France?",
    ]


def test_a_reply_in_extra_wins_and_leaves_the_queue_alone() -> None:
    driver = TestDriver(replies=["queued"])
    assert ask(driver, extra={"test_reply": "from extra"}).text == "from extra"
    assert (
        ask(driver, extra={"test_reply": {"text": "dict", "finish_reason": "length"}}).finish_reason
        == "length"
    )
    assert ask(driver).text == "queued"


def test_a_handler_function_or_its_dotted_name() -> None:
    for handler in (scripted_handler, "tests.drivers.test_testing_driver:scripted_handler"):
        driver = TestDriver(handler=handler)
        response = ask(driver)
        assert (response.text, response.finish_reason) == ("2 messages", "length")
        assert arun(driver.complete(CompletionRequest(prompt="p"))).text == "completed p"


def test_the_queue_goes_before_the_handler() -> None:
    driver = TestDriver(replies=["queued"], handler=lambda request: "handled")
    assert [ask(driver).text, ask(driver).text] == ["queued", "handled"]


def test_callable_replies_and_response_objects() -> None:
    canned = Response(text="canned", model="x", driver="test")
    driver = TestDriver(replies=[lambda request: request.messages[-1].text.upper(), canned])
    assert ask(driver).text == "WHAT IS THE CAPITAL OF FRANCE?"
    assert ask(driver) == canned


def test_every_request_is_recorded() -> None:
    driver = TestDriver()
    ask(driver, temperature=0.3)
    arun(driver.complete(CompletionRequest(prompt="p")))
    assert [type(r) for r in driver.requests] == [ChatRequest, CompletionRequest]
    assert driver.requests[0].temperature == 0.3


def test_dict_replies_set_finish_tool_calls_and_usage() -> None:
    driver = TestDriver()
    response = ask(
        driver,
        extra={
            "test_reply": {
                "text": "",
                "tool_calls": [{"id": "c1", "name": "weather", "arguments": {"city": "Paris"}}],
                "usage": {"input_tokens": 3, "output_tokens": 5, "cached_input_tokens": 1},
            }
        },
    )
    assert response.tool_calls == (ToolCall(id="c1", name="weather", arguments={"city": "Paris"}),)
    assert response.finish_reason == "tool_calls"  # the default when there are calls
    assert response.usage == Usage(input_tokens=3, output_tokens=5, total_tokens=8, cached_input_tokens=1)


def test_scripted_errors_by_class_name_with_their_facts() -> None:
    driver = TestDriver(replies=[{"error": "RateLimitError", "message": "slow down", "retry_after": 1.5,
                                  "status_code": 429}])  # fmt: skip
    with pytest.raises(errors.RateLimitError) as caught:
        ask(driver)
    error = caught.value
    assert (error.message, error.retry_after, error.status_code, error.retryable) == (
        "slow down",
        1.5,
        429,
        True,
    )
    assert (error.driver, error.model) == ("test", "test-model")


def test_error_instances_are_raised_as_they_are() -> None:
    boom = errors.AuthenticationError("bad key", driver="test")
    with pytest.raises(errors.AuthenticationError) as caught:
        ask(TestDriver(replies=[boom]))
    assert caught.value is boom


def test_an_unknown_error_class_name_is_a_clear_error() -> None:
    with pytest.raises(errors.InvalidInputError, match=r"unknown error class 'RateLimit'.*'RateLimitError'"):
        ask(TestDriver(replies=[{"error": "RateLimit"}]))
    with pytest.raises(errors.InvalidInputError, match="unknown error class 'ValueError'"):
        ask(TestDriver(replies=[{"error": "ValueError"}]))


def test_an_unknown_reply_key_is_a_clear_error() -> None:
    with pytest.raises(errors.InvalidInputError, match=r"'txt' \(did you mean 'text'\?\)"):
        ask(TestDriver(replies=[{"txt": "hi"}]))
    with pytest.raises(errors.InvalidInputError, match="cannot use int"):
        ask(TestDriver(replies=[42]))


def test_delay_holds_the_answer_back() -> None:
    async def go() -> None:
        driver = TestDriver(replies=[{"text": "late", "delay": 30}])
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(driver.chat(ChatRequest(messages=HI)), 0.05)

    arun(go())


def test_streams_come_in_word_chunks_and_end_with_finish_and_usage() -> None:
    driver = TestDriver(
        replies=[{"text": "Paris is the capital.", "usage": {"input_tokens": 7, "output_tokens": 4}}]
    )
    chunks = stream(driver)
    assert [c.text for c in chunks] == ["Paris ", "is ", "the ", "capital.", ""]
    assert all(c.finish_reason is None and c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert (last.finish_reason, last.usage) == ("stop", Usage(input_tokens=7, output_tokens=4))
    assert collect_chunks(chunks, driver="test").text == "Paris is the capital."


def test_streamed_tool_calls_arrive_on_the_last_chunk() -> None:
    calls = [{"id": "c1", "name": "weather", "arguments": {"city": "Paris"}}]
    chunks = stream(TestDriver(replies=[{"tool_calls": calls}]))
    response = collect_chunks(chunks)
    assert response.tool_calls == (ToolCall(**calls[0]),)
    assert json.loads(chunks[-1].tool_calls[0].arguments) == {"city": "Paris"}
    assert response.finish_reason == "tool_calls"


def test_a_stream_can_break_after_some_chunks() -> None:
    got: list[Chunk] = []
    with pytest.raises(errors.IncompleteStreamError):
        stream(TestDriver(replies=[{"text": "one two three", "fail_after_chunks": 2}]), into=got)
    assert [c.text for c in got] == ["one ", "two "]


def test_a_stream_breaks_with_the_named_error() -> None:
    got: list[Chunk] = []
    with pytest.raises(errors.MidStreamError, match="overloaded"):
        stream(TestDriver(replies=[{"text": "a b", "fail_after_chunks": 1, "error": "MidStreamError",
                                    "message": "overloaded"}]), into=got)  # fmt: skip
    assert [c.text for c in got] == ["a "]


def test_a_stream_breaking_after_all_its_text_still_has_no_last_chunk() -> None:
    got: list[Chunk] = []
    with pytest.raises(errors.IncompleteStreamError):
        stream(TestDriver(replies=[{"text": "a b", "fail_after_chunks": 2}]), into=got)
    assert [c.text for c in got] == ["a ", "b"] and not any(c.is_last for c in got)


def test_a_stream_with_an_error_and_no_chunk_count_fails_before_any_chunk() -> None:
    got: list[Chunk] = []
    with pytest.raises(errors.OverloadedError):
        stream(TestDriver(replies=[{"error": "OverloadedError"}]), into=got)
    assert got == []


def test_unknown_constructor_options_are_rejected() -> None:
    with pytest.raises(errors.ConfigurationError, match="reply"):
        TestDriver(reply=["x"])  # type: ignore[call-arg]


def test_repr_and_aclose() -> None:
    driver = TestDriver(model="m")
    assert repr(driver) == "TestDriver(model='m')"
    arun(driver.aclose())
    arun(driver.aclose())
