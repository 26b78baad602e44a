"""Conversations in the provider: one call at a time per conversation, summaries of dropped turns."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from nova import errors
from nova.config import parse_config
from nova.context import SUMMARY_PREFIX, TurnQueue, is_summary
from nova.features import build_provider
from nova.messages import CallOptions
from nova.provider import Accepted, Answered, Outcome, Provider, Waiting
from nova.types import ChatRequest, Message, Response, Usage

COUNTER = "tests.provider.test_context:FakeCounter"  # 10 tokens per message


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def provider(ratelimit: dict[str, Any] | None = None, **context: Any) -> tuple[Provider, Clock]:
    raw: dict[str, Any] = {
        "drivers": {
            "default": {"kind": "test", "model": "test-model"},
            "summarizer": {"kind": "test", "model": "tiny"},
        },
        "context": {"token_counter": COUNTER, **context},
        "ratelimit": ratelimit or {},
    }
    p = build_provider(parse_config(raw))
    clock = Clock()
    p.clock = clock
    return p, clock


def ask(
    p: Provider,
    request_id: str,
    text: str,
    conv: str | None = "c1",
    max_tokens: int | None = None,
    **options: Any,
) -> Any:
    request = ChatRequest(messages=(Message(role="user", content=text),), max_tokens=max_tokens)
    return p.accept(request_id, "chat", request, CallOptions(conversation=conv, **options), caller="me")


def answer(p: Provider, request_id: str, text: str) -> Outcome:
    outcome = p.finish(request_id, Response(text=text, model="test-model", usage=Usage(input_tokens=3)), None)
    assert outcome is not None
    return outcome


def texts(decision: Accepted) -> list[str]:
    request = decision.pending.request
    assert isinstance(request, ChatRequest)
    return [m.text for m in request.messages]


# -- TurnQueue ------------------------------------------------------------------------------------


def test_turn_queue_lets_one_call_run_and_the_next_follows_in_arrival_order() -> None:
    q = TurnQueue()
    assert q.enter("c", "a") and not q.enter("c", "b") and not q.enter("c", "c")
    assert q.enter("other", "x")  # another conversation is not held up
    assert q.running("c") == "a" and q.waiting("c") == 2
    assert q.leave("c", "a") == "b"
    assert q.leave("c", "c") is None  # a waiter that gave up: nobody new may run
    assert q.leave("c", "b") is None and q.running("c") is None and len(q) == 1
    assert q.leave("c", "unknown") is None


# -- one call at a time ---------------------------------------------------------------------------


def test_a_second_call_on_a_busy_conversation_waits_and_then_sees_the_first_turn() -> None:
    p, _ = provider()
    first = ask(p, "r1", "my name is Ada")
    second = ask(p, "r2", "what is my name?")
    assert isinstance(first, Accepted) and isinstance(second, Waiting)
    assert isinstance(ask(p, "r3", "elsewhere", conv="c2"), Accepted)  # other conversations run
    assert p.take_ready() == []
    answer(p, "r1", "hello Ada")
    [started] = p.take_ready()
    assert isinstance(started, Accepted) and started.pending.request_id == "r2"
    assert texts(started) == ["my name is Ada", "hello Ada", "what is my name?"]
    assert started.pending.stages == ("fallback",)


def test_waiting_calls_start_in_arrival_order_even_when_the_running_one_fails() -> None:
    p, _ = provider()
    decisions = [ask(p, f"r{i}", f"q{i}") for i in range(3)]
    assert [type(d) for d in decisions] == [Accepted, Waiting, Waiting]
    outcome = p.finish("r0", None, errors.ServerError("down"))
    assert outcome is not None and outcome.error is not None
    [second] = p.take_ready()
    assert isinstance(second, Accepted) and second.pending.request_id == "r1"
    answer(p, "r1", "a1")
    [third] = p.take_ready()
    assert isinstance(third, Accepted) and texts(third) == ["q1", "a1", "q2"]  # the failed turn left nothing


def test_a_waiting_call_past_its_deadline_times_out_and_the_queue_moves_on() -> None:
    p, clock = provider()
    ask(p, "r1", "slow one", timeout_s=100)
    assert isinstance(ask(p, "r2", "impatient", timeout_s=1), Waiting)
    assert isinstance(ask(p, "r3", "patient", timeout_s=100), Waiting)
    clock.now += 2
    [expired] = p.expired()
    assert expired.pending.request_id == "r2" and isinstance(expired.error, errors.RequestTimeoutError)
    assert [name for name, _ in expired.events] == ["request.failed"]
    assert p.take_ready() == []  # r1 still runs
    answer(p, "r1", "done")
    [started] = p.take_ready()
    assert isinstance(started, Accepted) and started.pending.request_id == "r3"
    assert "impatient" not in texts(started)


def test_a_cancelled_waiting_call_never_runs() -> None:
    p, _ = provider()
    ask(p, "r1", "first")
    assert isinstance(ask(p, "r2", "cancel me"), Waiting)
    assert p.fail("r2", errors.CancelledError("cancelled by the caller")) is not None
    answer(p, "r1", "ok")
    assert p.take_ready() == [] and not p.pending and len(p.turns) == 0


def test_a_waiting_call_whose_turn_does_not_fit_fails_and_the_next_one_starts() -> None:
    p, _ = provider(default_context_window=30, reply_budget_tokens=0)  # 3 messages fit
    ask(p, "r1", "short")
    ask(p, "r2", "too long", max_tokens=25)  # its reply budget leaves room for none
    ask(p, "r3", "fine")
    answer(p, "r1", "ok")
    failed, started = p.take_ready()
    assert isinstance(failed, Outcome) and failed.pending.request_id == "r2"
    assert isinstance(failed.error, errors.ContextLengthExceededError)
    assert [name for name, _ in failed.events] == ["request.failed"]  # closes its request.started
    assert isinstance(started, Accepted) and started.pending.request_id == "r3"


def test_a_turn_that_does_not_fit_at_accept_is_a_typed_answer_and_frees_the_conversation() -> None:
    p, _ = provider(default_context_window=30, reply_budget_tokens=0)
    request = ChatRequest(messages=(Message(role="user", content="x"),), max_tokens=30)
    decision = p.accept("r1", "chat", request, CallOptions(conversation="c1"), caller="me")
    assert isinstance(decision, Answered) and isinstance(decision.error, errors.ContextLengthExceededError)
    assert isinstance(ask(p, "r2", "next"), Accepted)


def test_a_crashing_token_counter_answers_the_call_and_frees_the_conversation() -> None:
    p, _ = provider(token_counter="tests.actors.handlers:ExplodingCounter")
    decision = ask(p, "r1", "boom")
    assert isinstance(decision, Answered) and isinstance(decision.error, errors.ProviderError)
    assert "RuntimeError" in decision.error.message and len(p.turns) == 0


def test_calls_without_a_conversation_are_never_queued() -> None:
    p, _ = provider()
    assert isinstance(ask(p, "r1", "a", conv=None), Accepted)
    assert isinstance(ask(p, "r2", "b", conv=None), Accepted)


# -- summaries ------------------------------------------------------------------------------------


def fill(p: Provider, conv: str = "c1", turns: int = 3) -> None:
    """Run `turns` calls on `conv` one after the other (each answered)."""
    for i in range(turns):
        decision = ask(p, f"{conv}-{i}", f"turn {i}", conv=conv)
        assert isinstance(decision, Accepted), decision
        answer(p, f"{conv}-{i}", f"reply {i}")


def test_summaries_are_off_by_default() -> None:
    p, _ = provider(default_context_window=40, reply_budget_tokens=0)
    fill(p)
    assert p.take_ready() == []


def test_a_call_that_dropped_turns_starts_a_summary_job_after_its_own_turn() -> None:
    p, _ = provider(
        default_context_window=40, reply_budget_tokens=0, summarize=True, summary_driver="summarizer"
    )
    fill(p, turns=2)  # 4 messages: everything fits
    assert p.take_ready() == []
    call = ask(p, "r3", "turn 2")
    assert isinstance(call, Accepted) and texts(call) == ["turn 1", "reply 1", "turn 2"]  # turn 0 dropped
    assert p.take_ready() == []  # nothing before the call's own answer: the caller never waits
    answer(p, "r3", "reply 2")
    [job] = p.take_ready()
    assert isinstance(job, Accepted) and job.pending.caller is None
    assert job.pending.driver == "summarizer" and job.pending.request.model == "tiny"
    assert job.pending.stages == ("fallback",) and job.pending.kind == "chat"
    assert "turn 0" in texts(job)[-1] and "reply 0" in texts(job)[-1]
    done = p.finish(job.pending.request_id, Response(text="Ada said hi", model="tiny"), None)
    assert done is not None and done.events == []  # no request.* events: not a user's call
    history = p.conversations.conversation.history("c1")
    assert is_summary(history[0]) and history[0].text == SUMMARY_PREFIX + "Ada said hi"
    nxt = ask(p, "r4", "turn 3")
    assert isinstance(nxt, Accepted) and texts(nxt)[0] == SUMMARY_PREFIX + "Ada said hi"


def test_the_summary_uses_the_calls_driver_and_its_default_model_when_none_is_configured() -> None:
    p, _ = provider(default_context_window=40, reply_budget_tokens=0, summarize=True)
    fill(p)
    [job] = p.take_ready()
    assert isinstance(job, Accepted)
    assert job.pending.driver == "default" and job.pending.request.model == "test-model"


def test_one_summary_at_a_time_per_conversation() -> None:
    p, _ = provider(default_context_window=40, reply_budget_tokens=0, summarize=True)
    fill(p, turns=3)
    [job] = p.take_ready()
    assert isinstance(ask(p, "r9", "turn 9"), Accepted)
    answer(p, "r9", "reply 9")
    assert p.take_ready() == []  # it dropped turns too, but c1 has its summary job out
    fill(p, conv="c2")
    assert len(p.take_ready()) == 1  # other conversations are not held up
    assert isinstance(job, Accepted)
    p.finish(job.pending.request_id, Response(text="s"), None)
    assert isinstance(ask(p, "r10", "turn 10"), Accepted)
    answer(p, "r10", "reply 10")
    assert len(p.take_ready()) == 1


def test_a_failed_summary_is_a_warning_and_changes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    p, _ = provider(default_context_window=40, reply_budget_tokens=0, summarize=True)
    fill(p)
    [job] = p.take_ready()
    assert isinstance(job, Accepted)
    before = p.conversations.conversation.history("c1")
    with caplog.at_level(logging.WARNING, logger="nova.provider"):
        outcome = p.finish(job.pending.request_id, None, errors.ServerError("summary driver down"))
    assert outcome is not None and outcome.events == [] and outcome.pending.caller is None
    assert p.conversations.conversation.history("c1") == before
    assert "summarising" in caplog.text and "ServerError" in caplog.text
    fill(p, turns=1)  # the next call that drops turns tries again
    assert len(p.take_ready()) == 1


def test_a_summary_that_never_answers_times_out_and_releases_the_limiter() -> None:
    p, clock = provider(
        default_context_window=40,
        reply_budget_tokens=0,
        summarize=True,
        ratelimit={"limits": {"summarizer": {"requests_per_minute": 10}}},
    )
    fill(p)
    [job] = p.take_ready()
    assert isinstance(job, Accepted) and job.pending.stages == ("ratelimit", "fallback") and job.tokens > 0
    clock.now += p.config.llm.timeout_s + 1
    [expired] = p.expired()
    # the router cancels an expired call in every stage it visits: the limiter frees its place
    assert expired.pending is job.pending and "ratelimit" in expired.pending.stages
    assert isinstance(expired.error, errors.RequestTimeoutError) and expired.events == []


def test_a_summary_driver_that_is_not_configured_is_a_configuration_error() -> None:
    with pytest.raises(errors.ConfigurationError, match="context.summary_driver"):
        provider(summarize=True, summary_driver="nope")


def test_a_plugin_that_answers_the_summary_job_stops_it(caplog: pytest.LogCaptureFixture) -> None:
    p, _ = provider(default_context_window=40, reply_budget_tokens=0, summarize=True)

    class StopSummaries:
        def before_request(self, pending: Any) -> Answered | None:
            return Answered(None, errors.PluginError("no")) if pending.caller is None else None

        def after(self, pending: Any, response: Any, error: Any) -> Any:
            return response, error

    p.plugins = StopSummaries()
    with caplog.at_level(logging.WARNING, logger="nova.provider"):
        fill(p)
    assert p.take_ready() == [] and "plugin stopped the summary" in caplog.text
