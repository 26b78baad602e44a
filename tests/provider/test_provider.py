"""Provider: the router's brain as a plain object — one answer per call, deadlines, streams."""

from __future__ import annotations

from typing import Any

from nova import errors
from nova.config import parse_config
from nova.features import build_provider
from nova.messages import CallOptions
from nova.provider import Accepted, Answered, Provider
from nova.types import ChatRequest, Chunk, Response, Usage

REQUEST = ChatRequest(messages=[{"role": "user", "content": "hi"}])


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def provider(raw: dict[str, Any] | None = None, **kw: Any) -> tuple[Provider, Clock]:
    clock = Clock()
    p = build_provider(parse_config(raw or {}))
    p.clock = clock
    for k, v in kw.items():
        setattr(p, k, v)
    return p, clock


def accept(p: Provider, request_id: str = "r1", kind: str = "chat", **options: Any) -> Accepted | Answered:
    return p.accept(request_id, kind, REQUEST, CallOptions(**options), caller="caller")


def test_accept_resolves_the_default_driver_and_its_default_model() -> None:
    p, _ = provider()
    decision = accept(p)
    assert isinstance(decision, Accepted)
    assert decision.pending.driver == "default" and decision.pending.request.model == "test-model"
    assert decision.pending.stages == ("fallback",)


def test_unknown_driver_is_answered_at_once_with_a_typed_error() -> None:
    p, _ = provider()
    decision = accept(p, driver="nope")
    assert isinstance(decision, Answered) and isinstance(decision.error, errors.UnknownDriverError)
    assert "nope" in decision.error.message and not p.pending


def test_a_request_id_already_in_flight_is_refused() -> None:
    p, _ = provider()
    accept(p)
    decision = accept(p)
    assert isinstance(decision, Answered) and isinstance(decision.error, errors.InvalidInputError)


def test_enabled_cache_and_limits_put_their_stages_on_the_slip() -> None:
    p, _ = provider(
        {"cache": {"enabled": True}, "ratelimit": {"limits": {"default": {"requests_per_minute": 10}}}}
    )
    decision = accept(p)
    assert isinstance(decision, Accepted)
    assert decision.pending.stages == ("cache", "ratelimit", "fallback")
    assert decision.pending.cache_key and decision.tokens > 0
    assert accept(p, "r2", cache=False).pending.stages == ("ratelimit", "fallback")  # type: ignore[union-attr]


def test_finish_answers_once_and_later_answers_are_dropped() -> None:
    p, _ = provider()
    accept(p)
    outcome = p.finish("r1", Response(text="ok", model="test-model", usage=Usage(input_tokens=1)), None)
    assert outcome is not None and outcome.response is not None and outcome.response.text == "ok"
    assert [name for name, _ in outcome.events] == ["request.completed"]
    assert p.finish("r1", Response(text="again"), None) is None
    assert p.fail("r1", errors.ServerError("late")) is None


def test_failure_becomes_a_request_failed_outcome() -> None:
    p, _ = provider()
    accept(p)
    outcome = p.finish("r1", None, errors.AuthenticationError("bad key"))
    assert outcome is not None and isinstance(outcome.error, errors.AuthenticationError)
    assert outcome.events[0][0] == "request.failed"


def test_calls_past_their_deadline_fail_with_a_timeout() -> None:
    p, clock = provider()
    accept(p, "short", timeout_s=1)
    accept(p, "long", timeout_s=100)
    assert p.expired() == []
    clock.now += 2
    expired = p.expired()
    assert [o.pending.request_id for o in expired] == ["short"]
    assert isinstance(expired[0].error, errors.RequestTimeoutError)
    assert p.next_deadline() == 1100.0


def test_a_stream_finishes_only_when_all_its_chunks_arrived() -> None:
    p, _ = provider()
    accept(p, kind="stream")
    assert [index for _, _, index in p.chunk("r1", 0, Chunk(text="Hel"))] == [0]
    # The result overtook the last chunk: wait for it.
    assert p.finish("r1", Response(), None, chunks_sent=2) is None
    forwarded = p.chunk("r1", 1, Chunk(text="lo", finish_reason="stop", usage=Usage(output_tokens=2)))
    assert [index for _, _, index in forwarded] == [1]
    outcome = p.chunks_complete("r1")
    assert outcome is not None and outcome.response is not None
    assert outcome.response.text == "Hello" and outcome.response.usage.output_tokens == 2


def test_stream_pieces_that_overtook_earlier_ones_wait_for_their_turn() -> None:
    p, _ = provider()
    accept(p, kind="stream")
    assert p.chunk("r1", 2, Chunk(text="c")) == []
    assert p.chunk("r1", 1, Chunk(text="b")) == []
    released = p.chunk("r1", 0, Chunk(text="a"))
    assert [(chunk.text, index) for _, chunk, index in released] == [("a", 0), ("b", 1), ("c", 2)]
    outcome = p.finish("r1", Response(), None, chunks_sent=3)
    assert outcome is not None and outcome.response is not None and outcome.response.text == "abc"


def test_cached_answers_cost_nothing_and_say_so_in_their_event() -> None:
    p, _ = provider({"cache": {"enabled": True}})
    accept(p)
    outcome = p.finish("r1", Response(text="x", model="m"), None, from_cache=True)
    assert outcome is not None and outcome.response is not None
    assert outcome.response.cached and outcome.response.cost_usd == 0.0
    [(name, fields)] = outcome.events
    assert name == "request.completed" and fields["cost_usd"] == 0.0 and fields["data"]["cached"]


def test_a_plugin_can_answer_before_any_driver() -> None:
    p, _ = provider({"plugins": [{"use": "tests.provider.test_provider:Answering"}]})
    decision = accept(p)
    assert isinstance(decision, Answered) and decision.response is not None
    assert decision.response.text == "from plugin"


from nova.plugins import Plugin  # noqa: E402 - the plugin class the config above names


class Answering(Plugin):
    def before_request(self, ctx: Any, request: Any) -> Response:
        return Response(text="from plugin")
