"""Calls through the real actor system: router → fallback → driver, and back, exactly once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from nova import errors
from nova.messages import CallFailed, CallSucceeded, ChatCall, StreamCall, StreamChunk
from nova.supervisors.system import NovaSystem
from nova.types import ChatRequest
from tests.integration_helpers import (
    Calls,
    EventTap,
    chat_call,
    complete_call,
    config_for,
    running,
    stream_call,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NovaSystem]:
    config = config_for(
        tmp_path_factory.mktemp("pipeline"),
        drivers={
            "default": {"kind": "test", "model": "test-model"},
            "other": {"kind": "test", "model": "other-model"},
        },
    )
    with running(config) as system:
        yield system


def test_chat_answers_with_driver_name_attempts_and_no_cost(system: NovaSystem) -> None:
    response = Calls(system).ok(chat_call("hello there"))
    assert response.text == "echo: hello there"
    assert response.driver == "default"
    assert response.model == "test-model"
    assert response.cost_usd is None  # the test driver's model has no price
    assert response.cached is False
    assert [(a.driver, a.ok) for a in response.attempts] == [("default", True)]
    assert response.usage.output_tokens > 0


def test_complete_answers(system: NovaSystem) -> None:
    response = Calls(system).ok(complete_call("once upon a time"))
    assert response.text == "echo: once upon a time"
    assert response.driver == "default"


def test_per_call_driver_and_model(system: NovaSystem) -> None:
    response = Calls(system).ok(chat_call("hi", driver="other"))
    assert (response.driver, response.model) == ("other", "other-model")
    response = Calls(system).ok(chat_call("hi", driver="other", model="special"))
    assert response.model == "special"


def test_stream_sends_ordered_chunks_then_the_assembled_answer(system: NovaSystem) -> None:
    chunks, final = Calls(system).stream(stream_call("one two three four"))
    assert isinstance(final, CallSucceeded)
    assert "".join(c.text for c in chunks) == "echo: one two three four"
    assert len(chunks) >= 4
    assert final.response.text == "echo: one two three four"
    assert final.response.finish_reason == "stop"
    assert [a.driver for a in final.response.attempts] == ["default"]


def test_unknown_driver_is_a_typed_error_naming_the_known_ones(system: NovaSystem) -> None:
    error = Calls(system).error(chat_call("hi", driver="nope"))
    assert isinstance(error, errors.UnknownDriverError)
    assert "nope" in error.message and "default" in error.message


def test_scripted_service_errors_arrive_typed(system: NovaSystem) -> None:
    error = Calls(system).error(
        chat_call(
            "hi",
            fallback=False,
            test_reply={"error": "AuthenticationError", "message": "bad key", "status_code": 401},
        )
    )
    assert isinstance(error, errors.AuthenticationError)
    assert error.status_code == 401


def test_invalid_request_is_refused_before_the_pipeline(system: NovaSystem) -> None:
    # A request is validated where the call is built (the facade turns that into InvalidInputError,
    # see tests/test_facade.py); a user actor cannot send an invalid one. What the router checks
    # itself: a request id already in flight.
    with pytest.raises(ValidationError) as raised:
        ChatRequest(messages=[])
    assert raised.value.errors()[0]["loc"] == ("messages",)
    slow = chat_call("slow", test_reply={"text": "done", "delay": 0.5})
    twin = ChatCall(request_id=slow.request_id, request=slow.request)
    replies = Calls(system).many([slow, twin])[slow.request_id]
    finals = [r for r in replies if isinstance(r, (CallSucceeded, CallFailed))]
    assert len(finals) == 2
    assert isinstance(finals[0], CallFailed) and isinstance(finals[0].error, errors.InvalidInputError)
    assert "already in flight" in finals[0].error.message
    assert isinstance(finals[1], CallSucceeded) and finals[1].response.text == "done"


def test_exactly_one_reply_per_request(system: NovaSystem) -> None:
    calls = [
        chat_call(f"call {i}", test_reply={"text": f"answer {i}", "delay": 0.05 * (i % 4)}) for i in range(40)
    ]
    calls += [stream_call(f"stream {i}") for i in range(10)]
    calls += [chat_call("bad driver", driver="missing") for _ in range(5)]
    replies = Calls(system).many(calls, timeout=30, linger=0.5)
    for call in calls:
        messages = replies[call.request_id]
        finals = [m for m in messages if isinstance(m, (CallSucceeded, CallFailed))]
        assert len(finals) == 1, f"{call.request_id}: {len(finals)} final replies"
        if isinstance(call, ChatCall) and call.options.driver != "missing":
            assert finals[0].response.text == call.request.extra["test_reply"]["text"]
        # chunks may overtake each other (and the final reply): each index once, as many as counted
        indices = sorted(m.index for m in messages if isinstance(m, StreamChunk))
        assert indices == list(range(finals[0].chunks))
        if isinstance(call, StreamCall):
            assert finals[0].chunks > 0
            text = "".join(
                m.chunk.text
                for m in sorted((m for m in messages if isinstance(m, StreamChunk)), key=lambda m: m.index)
            )
            assert text == finals[0].response.text


def test_lifecycle_events_reach_a_subscriber(system: NovaSystem) -> None:
    with EventTap(system) as tap:
        call = chat_call("observe me")
        Calls(system).ok(call)
        started = tap.wait_for("request.started", request_id=call.request_id)[0]
        completed = tap.wait_for("request.completed", request_id=call.request_id)[0]
        tap.wait_for("driver.call_started", request_id=call.request_id)
        tap.wait_for("driver.call_completed", request_id=call.request_id)
        failing = chat_call("fail", fallback=False, test_reply={"error": "AuthenticationError"})
        Calls(system).error(failing)
        failed = tap.wait_for("request.failed", request_id=failing.request_id)[0]
        tap.wait_for("driver.call_failed", request_id=failing.request_id)
    assert started.driver == "default" and started.model == "test-model"
    assert completed.usage is not None and completed.usage.total_tokens > 0
    assert completed.seq > started.seq
    assert failed.error_type == "AuthenticationError"
    assert "observe me" not in repr(completed)  # no prompt text in events


def test_topic_filter_limits_what_a_subscriber_gets(system: NovaSystem) -> None:
    with EventTap(system, topics=("driver.",)) as tap:
        call = chat_call("filtered")
        Calls(system).ok(call)
        tap.wait_for("driver.call_completed", request_id=call.request_id)
    assert {e.name for e in tap.events} <= {"driver.call_started", "driver.call_completed"}
