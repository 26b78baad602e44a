"""The OpenTelemetry listener: GenAI spans and metrics, checked with the SDK in-memory exporter and reader."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes
from opentelemetry.semconv._incubating.metrics import gen_ai_metrics
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from nova.events import CONTENT_CAPTURE_ENV, Event, EventBus, message_content, server_fields
from nova.otel import OTelListener, semconv
from nova.types import Message, Usage

USAGE = Usage(input_tokens=120, output_tokens=30, cached_input_tokens=100, reasoning_tokens=10)


@dataclass
class Otel:
    bus: EventBus
    listener: OTelListener
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader

    def finished(self) -> dict[str, ReadableSpan]:
        return {s.name: s for s in self.spans.get_finished_spans()}

    def points(self) -> dict[str, list[tuple[str, Any]]]:
        out: dict[str, list[tuple[str, Any]]] = {}
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    out.setdefault(m.name, []).extend((m.unit, p) for p in m.data.data_points)
        return out


def make_otel(**kw: Any) -> tuple[Otel, TracerProvider, MeterProvider]:
    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(spans))  # synchronous export
    mp = MeterProvider(metric_readers=[reader])
    bus = EventBus()
    listener = OTelListener(tracer_provider=tp, meter_provider=mp, **kw).attach(bus)  # never the globals
    return Otel(bus, listener, spans, reader), tp, mp


@pytest.fixture
def otel(monkeypatch: pytest.MonkeyPatch) -> Iterator[Otel]:
    monkeypatch.delenv(CONTENT_CAPTURE_ENV, raising=False)
    o, tp, mp = make_otel()
    yield o
    o.listener.detach(o.bus)
    tp.shutdown()
    mp.shutdown()


def publish(bus: EventBus, name: str, rid: str = "r1", **kw: Any) -> Event:
    kw.setdefault("driver", "openai")
    kw.setdefault("model", "gpt-4o-mini")
    return bus.publish(Event(name=name, sender="test", request_id=rid, **kw))


def started(bus: EventBus, rid: str = "r1", **data: Any) -> None:
    publish(bus, "request.started", rid, ts=1000.0, data={"operation": "chat", **data})


def completed(bus: EventBus, rid: str = "r1", **kw: Any) -> None:
    data = {
        "response_model": "gpt-4o-mini-2024-07-18",
        "response_id": "chatcmpl-1",
        "finish_reason": "stop",  # what the provider sends: one string
    }
    data.update(kw.pop("data", {}))
    kw.setdefault("usage", USAGE)
    kw.setdefault("cost_usd", 0.0012)
    publish(bus, "request.completed", rid, ts=1001.5, duration_s=1.5, data=data, **kw)


def test_a_chat_call_is_one_client_span_by_the_genai_conventions(otel: Otel) -> None:
    started(otel.bus, temperature=0.0, max_tokens=50, top_p=1.0, seed=0, stop_sequences=["END"])
    assert otel.spans.get_finished_spans() == ()
    completed(otel.bus)
    span = otel.finished()["chat gpt-4o-mini"]
    assert span.kind is SpanKind.CLIENT and span.status.status_code is StatusCode.UNSET
    attrs = dict(span.attributes or {})
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.request.model"] == "gpt-4o-mini"
    assert attrs["gen_ai.request.temperature"] == 0.0  # falsy settings survive
    assert attrs["gen_ai.request.seed"] == 0
    assert attrs["gen_ai.request.max_tokens"] == 50 and attrs["gen_ai.request.top_p"] == 1.0
    assert attrs["gen_ai.request.stop_sequences"] == ("END",)
    assert "gen_ai.request.stream" not in attrs
    assert attrs["gen_ai.response.model"] == "gpt-4o-mini-2024-07-18"
    assert attrs["gen_ai.response.id"] == "chatcmpl-1"
    assert attrs["gen_ai.response.finish_reasons"] == ("stop",)
    assert attrs["gen_ai.usage.input_tokens"] == 120 and attrs["gen_ai.usage.output_tokens"] == 30
    assert attrs["gen_ai.usage.cache_read.input_tokens"] == 100
    assert attrs["gen_ai.usage.reasoning.output_tokens"] == 10
    assert "gen_ai.usage.cache_write.input_tokens" not in attrs  # zero: unknown, not reported
    assert attrs["nova.cost_usd"] == 0.0012 and attrs["nova.request_id"] == "r1"
    assert "nova.cached" not in attrs
    assert (span.start_time, span.end_time) == (1000 * 10**9, int(1001.5 * 10**9))
    assert span.parent is None  # no traceparent: a root span
    assert otel.listener.open_spans == 0


def test_the_callers_traceparent_is_the_parent(otel: Otel) -> None:
    caller_tp = TracerProvider()
    with caller_tp.get_tracer("app").start_as_current_span("handle request") as caller:
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)
    started(otel.bus, traceparent=carrier["traceparent"])
    completed(otel.bus)
    span = otel.finished()["chat gpt-4o-mini"]
    assert span.parent is not None and span.parent.is_remote
    assert span.parent.span_id == caller.get_span_context().span_id
    assert span.context.trace_id == caller.get_span_context().trace_id


def test_a_failed_call_records_the_error(otel: Otel) -> None:
    started(otel.bus)
    publish(
        otel.bus,
        "request.failed",
        ts=1002.0,
        duration_s=2.0,
        error_type="RateLimitError",
        error_message="slow down",
    )
    span = otel.finished()["chat gpt-4o-mini"]
    assert span.status.status_code is StatusCode.ERROR and span.status.description == "slow down"
    assert span.attributes is not None and span.attributes["error.type"] == "RateLimitError"
    (exc,) = [e for e in span.events if e.name == "exception"]
    assert exc.attributes == {"exception.type": "RateLimitError", "exception.message": "slow down"}
    points = otel.points()
    ((unit, duration),) = points["gen_ai.client.operation.duration"]
    assert unit == "s" and duration.attributes["error.type"] == "RateLimitError" and duration.sum == 2.0
    assert "gen_ai.client.token.usage" not in points


def test_each_driver_call_is_a_child_span_and_pipeline_steps_are_span_events(otel: Otel) -> None:
    started(otel.bus)
    publish(otel.bus, "cache.miss")
    publish(otel.bus, "fallback.attempt", attempt=1)
    publish(
        otel.bus,
        "driver.call_started",
        attempt=1,
        data={"server_address": "api.openai.com", "server_port": 443},
    )
    publish(
        otel.bus,
        "driver.call_failed",
        attempt=1,
        duration_s=0.2,
        error_type="ServerError",
        error_message="502",
    )
    publish(otel.bus, "fallback.next_target", error_type="ServerError", data={"target": "anthropic/claude"})
    publish(otel.bus, "fallback.attempt", attempt=2, driver="anthropic", model="claude-3-5-haiku-latest")
    publish(otel.bus, "driver.call_started", attempt=2, driver="anthropic", model="claude-3-5-haiku-latest")
    publish(
        otel.bus,
        "driver.call_completed",
        attempt=2,
        driver="anthropic",
        model="claude-3-5-haiku-latest",
        usage=USAGE,
    )
    completed(otel.bus, driver="anthropic", model="claude-3-5-haiku-latest")
    spans = otel.finished()
    parent = spans["chat gpt-4o-mini"]
    first, second = spans["attempt openai gpt-4o-mini"], spans["attempt anthropic claude-3-5-haiku-latest"]
    for child in (first, second):
        assert child.kind is SpanKind.INTERNAL
        assert child.parent is not None and child.parent.span_id == parent.context.span_id
        assert (
            child.attributes is not None and "gen_ai.operation.name" not in child.attributes
        )  # counted once
    assert first.status.status_code is StatusCode.ERROR and first.attributes["error.type"] == "ServerError"
    assert first.attributes["server.address"] == "api.openai.com" and first.attributes["server.port"] == 443
    assert first.attributes["nova.attempt"] == 1
    assert second.attributes["gen_ai.provider.name"] == "anthropic"
    assert second.attributes["gen_ai.usage.input_tokens"] == 120
    names = [e.name for e in parent.events]
    assert names == ["cache.miss", "fallback.attempt", "fallback.next_target", "fallback.attempt"]


def one_call(rid: str, ts: float) -> dict[str, list[Event]]:
    """The events of one plain call, per actor that sends them, each actor's in its own order."""

    def ev(name: str, at: float, **kw: Any) -> Event:
        kw.setdefault("driver", "openai")
        kw.setdefault("model", "gpt-4o-mini")
        return Event(name=name, sender="test", request_id=rid, ts=ts + at, **kw)

    return {
        "router": [
            ev("request.started", 0.0, data={"operation": "chat"}),
            ev("request.completed", 0.5, duration_s=0.5, usage=USAGE, data={"response_model": "x-1"}),
        ],
        "fallback": [ev("fallback.attempt", 0.01, attempt=1)],
        "driver": [
            ev("driver.call_started", 0.02, attempt=1, data=server_fields("https://api.openai.com/v1")),
            ev("driver.call_completed", 0.45, attempt=1, duration_s=0.43, usage=USAGE),
        ],
    }


def deliver(bus: EventBus, calls: list[dict[str, list[Event]]], order: str, rng: random.Random) -> None:
    """Publish the calls' events in an order the actor system can produce."""
    streams = {
        actor: [e for call in calls for e in call[actor]] for actor in ("router", "fallback", "driver")
    }
    if order in ("router first", "driver first"):
        actors = ["router", "fallback", "driver"]
        for actor in actors if order == "router first" else actors[::-1]:
            for event in streams[actor]:
                bus.publish(event)
        return
    while any(streams.values()):  # interleaved at random, each actor's events in its order
        actor = rng.choice([a for a, events in streams.items() if events])
        bus.publish(streams[actor].pop(0))


@pytest.mark.parametrize("order", ["router first", "driver first", "interleaved"])
def test_every_attempt_span_is_made_whatever_order_the_actors_events_arrive_in(order: str) -> None:
    o, tp, mp = make_otel()
    try:
        calls = [one_call(f"r{i}", 1000.0 + i) for i in range(20)]
        deliver(o.bus, calls, order, random.Random(order))
        spans = o.spans.get_finished_spans()
        requests = {s.attributes["nova.request_id"]: s for s in spans if s.kind is SpanKind.CLIENT}  # type: ignore[index]
        attempts = [s for s in spans if s.kind is SpanKind.INTERNAL]
        assert len(requests) == 20 and len(attempts) == 20
        by_span_id = {s.context.span_id: s for s in requests.values()}
        for attempt in attempts:
            assert attempt.parent is not None and attempt.parent.span_id in by_span_id
            parent = by_span_id[attempt.parent.span_id]
            assert attempt.context.trace_id == parent.context.trace_id
            assert attempt.start_time == parent.start_time + 20_000_000  # from the event, not arrival
            assert attempt.attributes is not None and attempt.attributes["gen_ai.usage.input_tokens"] == 120
        assert len({a.parent.span_id for a in attempts if a.parent}) == 20  # one per request
        assert o.listener.open_spans == 0 and o.listener.waiting_events == 0
    finally:
        tp.shutdown()
        mp.shutdown()


def test_a_driver_call_end_that_overtakes_its_start_still_ends_the_span(otel: Otel) -> None:
    publish(otel.bus, "driver.call_completed", attempt=1, ts=1000.4, usage=USAGE)
    publish(otel.bus, "driver.call_started", attempt=1, ts=1000.1)
    publish(otel.bus, "request.started", ts=1000.0)
    completed(otel.bus)
    spans = otel.finished()
    assert spans["attempt openai gpt-4o-mini"].end_time == int(1000.4 * 10**9)
    assert otel.listener.open_spans == 0 and otel.listener.waiting_events == 0


def test_events_waiting_for_a_start_that_never_comes_are_bounded_and_given_up() -> None:
    now = [0.0]
    o, tp, mp = make_otel(max_open_spans=3, reorder_s=10.0, clock=lambda: now[0])
    try:
        for i in range(5):
            publish(o.bus, "driver.call_started", f"x{i}", attempt=1)
        assert o.listener.waiting_events == 3 and o.listener.orphan_events == 2
        publish(o.bus, "request.failed", "x4", duration_s=0.2, error_type="ServerError")
        now[0] = 11.0
        started(o.bus, "r1")  # the sweep gives up on what waited past reorder_s
        assert o.listener.waiting_events == 0 and o.listener.orphan_events == 6  # the end too: no span
        assert o.spans.get_finished_spans() == ()
        points = o.points()["gen_ai.client.operation.duration"]
        assert [p.attributes["error.type"] for _, p in points] == ["ServerError"]  # still measured
    finally:
        tp.shutdown()
        mp.shutdown()


def test_server_address_and_port_come_from_the_driver_call(otel: Otel) -> None:
    started(otel.bus)
    publish(otel.bus, "driver.call_started", attempt=1, data=server_fields("https://api.openai.com/v1"))
    publish(otel.bus, "driver.call_failed", attempt=1, error_type="ServerError")
    data = server_fields("http://user:hunter2@127.0.0.1:11434")
    publish(otel.bus, "driver.call_started", attempt=2, driver="local", model="llama3", data=data)
    publish(otel.bus, "driver.call_completed", attempt=2, driver="local", model="llama3")
    completed(otel.bus)
    spans = otel.finished()
    first, request = spans["attempt openai gpt-4o-mini"], spans["chat gpt-4o-mini"]
    assert first.attributes is not None and request.attributes is not None
    assert (first.attributes["server.address"], first.attributes["server.port"]) == ("api.openai.com", 443)
    # the request span and its metric name the server of the try that answered
    assert (request.attributes["server.address"], request.attributes["server.port"]) == ("127.0.0.1", 11434)
    ((_, duration),) = otel.points()["gen_ai.client.operation.duration"]
    assert (
        duration.attributes["server.address"] == "127.0.0.1" and duration.attributes["server.port"] == 11434
    )
    assert "hunter2" not in json.dumps(data) and server_fields("") == {} and server_fields(None) == {}


def test_metrics_have_the_conventional_names_units_and_buckets(otel: Otel) -> None:
    started(otel.bus, stream=True, server_address="api.openai.com", server_port=443)
    publish(otel.bus, "stream.first_chunk", duration_s=0.3)
    completed(otel.bus)
    span = otel.finished()["chat gpt-4o-mini"]
    assert span.attributes is not None and span.attributes["gen_ai.request.stream"] is True
    assert span.attributes["gen_ai.response.time_to_first_chunk"] == 0.3
    points = otel.points()
    ((unit, duration),) = points["gen_ai.client.operation.duration"]
    assert unit == "s" and duration.count == 1 and duration.sum == 1.5
    assert tuple(duration.explicit_bounds) == semconv.DURATION_BUCKETS
    assert duration.attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "server.address": "api.openai.com",
        "server.port": 443,
    }  # low cardinality: no request id, no content
    tokens = {p.attributes["gen_ai.token.type"]: (u, p) for u, p in points["gen_ai.client.token.usage"]}
    assert tokens["input"][0] == "{token}" and tokens["input"][1].sum == 120 and tokens["output"][1].sum == 30
    assert tuple(tokens["input"][1].explicit_bounds) == semconv.TOKEN_BUCKETS
    ((unit, ttfc),) = points["gen_ai.client.operation.time_to_first_chunk"]
    assert unit == "s" and ttfc.sum == 0.3 and tuple(ttfc.explicit_bounds) == semconv.DURATION_BUCKETS
    ((unit, cost),) = points["nova.client.cost"]
    assert unit == "{USD}" and cost.value == pytest.approx(0.0012)


def test_a_cache_hit_is_marked_and_reports_no_tokens(otel: Otel) -> None:
    started(otel.bus)
    publish(otel.bus, "cache.hit")
    completed(otel.bus, cost_usd=0.0, data={"cached": True})
    span = otel.finished()["chat gpt-4o-mini"]
    attrs = dict(span.attributes or {})
    assert attrs["nova.cached"] is True and attrs["nova.cost_usd"] == 0.0
    assert "gen_ai.usage.input_tokens" not in attrs
    points = otel.points()
    assert "gen_ai.client.token.usage" not in points and "nova.client.cost" not in points
    assert points["gen_ai.client.operation.duration"][0][1].count == 1


@pytest.mark.parametrize(
    ("driver", "data", "provider"),
    [
        ("anthropic", {}, "anthropic"),
        ("ollama", {}, "ollama"),
        ("openai_compatible", {}, "openai"),
        ("openai_compatible", {"provider": "groq"}, "groq"),
        ("test", {}, "test"),
        ("fast", {"driver_kind": "anthropic"}, "anthropic"),  # a configured driver name
    ],
)
def test_provider_names(otel: Otel, driver: str, data: dict[str, Any], provider: str) -> None:
    publish(
        otel.bus, "request.started", driver=driver, model="m", data={"operation": "text_completion", **data}
    )
    publish(otel.bus, "request.completed", driver=driver, model="m", duration_s=0.1)
    span = otel.finished()["text_completion m"]
    assert span.attributes is not None and span.attributes["gen_ai.provider.name"] == provider


def _content_run(monkeypatch: pytest.MonkeyPatch, mode: str | None) -> dict[str, Any]:
    if mode is None:
        monkeypatch.delenv(CONTENT_CAPTURE_ENV, raising=False)
    else:
        monkeypatch.setenv(CONTENT_CAPTURE_ENV, mode)
    o, tp, mp = make_otel()
    try:
        content = message_content(
            [Message(role="system", content="be brief"), Message(role="user", content="hi")]
        )
        started(o.bus, content=content)
        completed(o.bus, data={"content": message_content([Message(role="assistant", content="hello")])[0]})
        return dict(o.finished()["chat gpt-4o-mini"].attributes or {})
    finally:
        tp.shutdown()
        mp.shutdown()


def test_content_is_off_by_default_and_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for mode in (None, "NO_CONTENT", "EVENT_ONLY"):
        attrs = _content_run(monkeypatch, mode)
        assert "gen_ai.input.messages" not in attrs and "gen_ai.output.messages" not in attrs
    for mode in ("SPAN_ONLY", "span_and_event"):
        attrs = _content_run(monkeypatch, mode)
        assert json.loads(attrs["gen_ai.input.messages"]) == [
            {"role": "system", "parts": [{"type": "text", "content": "be brief"}]},
            {"role": "user", "parts": [{"type": "text", "content": "hi"}]},
        ]
        assert json.loads(attrs["gen_ai.output.messages"]) == [
            {"role": "assistant", "parts": [{"type": "text", "content": "hello"}], "finish_reason": "stop"}
        ]


def test_spans_of_requests_that_never_finish_are_dropped_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    o, tp, mp = make_otel(span_ttl_s=60.0, max_open_spans=3, clock=lambda: now[0])
    started(o.bus, "lost")
    publish(o.bus, "driver.call_started", "lost", attempt=1)
    now[0] = 61.0
    started(o.bus, "r2")  # the sweep drops "lost" and its driver call
    assert o.listener.dropped_spans == 2 and o.listener.open_spans == 1
    completed(o.bus, "lost")
    assert o.listener.orphan_events == 1 and o.spans.get_finished_spans() == ()
    for i in range(5):
        started(o.bus, f"many{i}")
    assert o.listener.open_spans == 3 and o.listener.dropped_spans == 5
    tp.shutdown()
    mp.shutdown()


def test_our_names_match_the_installed_conventions_where_they_still_exist() -> None:
    ours = {
        n: getattr(semconv, n)
        for n in semconv.__all__
        if n.startswith("GEN_AI_") and not n.endswith("BUCKETS")
    }
    checked = 0
    for name, value in ours.items():
        theirs = getattr(gen_ai_attributes, name, None) or getattr(gen_ai_metrics, name, None)
        if theirs is not None:
            assert value == theirs, name
            checked += 1
    assert checked >= 20
    # the one deliberate difference: the newer cache-write name (semantic-conventions-genai#440)
    assert (
        gen_ai_attributes.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS
        == "gen_ai.usage.cache_creation.input_tokens"
    )
    assert semconv.GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS == "gen_ai.usage.cache_write.input_tokens"
