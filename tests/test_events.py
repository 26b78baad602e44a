"""The event bus: numbering, listener isolation, bounded subscriber queues, content capture, the reference."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from nova.events import (
    CATALOGUE,
    CONTENT_CAPTURE_ENV,
    SENDERS,
    SIGNALS,
    STRICT_ENV,
    Event,
    EventBus,
    SubscriberQueue,
    UnknownEventError,
    capture_content_enabled,
    capture_content_mode,
    checked,
    events_reference,
    known,
    message_content,
    signal,
    violations,
)
from nova.metrics import MetricsCollector
from nova.types import Message

ROOT = Path(__file__).resolve().parents[1]


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, sender: str, *, event: Event, **extra: Any) -> None:
        self.events.append(event)


def boom(sender: str, *, event: Event, **extra: Any) -> None:
    raise RuntimeError("listener bug")


def test_sequence_numbers_increase_and_the_original_event_is_untouched() -> None:
    bus, rec = EventBus(), Recorder()
    bus.connect(rec)
    original = Event(name="cache.miss", sender="cache", request_id="r1")
    published = [bus.publish(original) for _ in range(5)]
    assert [e.seq for e in published] == [1, 2, 3, 4, 5]
    assert [e.seq for e in rec.events] == [1, 2, 3, 4, 5]
    assert original.seq == 0


def test_a_raising_listener_harms_nothing(caplog: pytest.LogCaptureFixture) -> None:
    bus, named, catch_all = EventBus(), Recorder(), Recorder()
    metrics = MetricsCollector().attach(bus)
    bus.connect(boom, "request.started")
    bus.connect(named, "request.started")
    bus.connect(boom)
    bus.connect(catch_all)
    try:
        with caplog.at_level(logging.ERROR, logger="nova.events"):
            event = bus.publish(
                Event(name="request.started", sender="router", request_id="r1", driver="test")
            )
        assert event.seq == 1  # publish returned normally: the request goes on
        assert [e.request_id for e in named.events] == ["r1"]
        assert [e.request_id for e in catch_all.events] == ["r1"]
        assert metrics.snapshot().totals.requests == 1
        assert bus.listener_errors == 2
        assert "listener bug" in caplog.text
    finally:
        signal("request.started").disconnect(boom)
        signal("request.started").disconnect(named)


def test_an_unknown_event_is_dropped_alone_and_async_listeners_are_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus, rec = EventBus(), Recorder()
    bus.connect(rec)
    with caplog.at_level(logging.ERROR, logger="nova.events"):
        for name in ("cache.miss", "request.exploded", "cache.hit"):  # one batch, a typo inside
            bus.publish(Event(name=name, sender="cache"))
    assert [e.name for e in rec.events] == ["cache.miss", "cache.hit"]
    assert bus.unknown_events == 1 and "request.exploded" in caplog.text
    with pytest.raises(UnknownEventError, match="request.exploded"):
        bus.connect(rec, "request.exploded")

    async def on_event(sender: str, *, event: Event) -> None:  # would never run
        pass

    with pytest.raises(TypeError, match="synchronous"):
        bus.connect(on_event)


def test_an_unknown_name_fails_where_it_is_emitted_in_tests_and_at_import_in_tables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(STRICT_ENV, "1")
    with pytest.raises(UnknownEventError):
        checked("cache.mis")
    monkeypatch.delenv(STRICT_ENV)
    assert checked("cache.mis") is False and checked("cache.miss") is True  # in production: logged
    with pytest.raises(UnknownEventError, match="fallback.attmept"):
        known("fallback.attempt", "fallback.attmept")


def test_every_event_is_declared_once_with_its_sender_and_payload() -> None:
    assert set(SENDERS) == set(SIGNALS) == set(CATALOGUE)
    for name, spec in CATALOGUE.items():
        assert spec.name == name and spec.doc and spec.senders
        assert f"sender: {SENDERS[name]}" in (signal(name).__doc__ or "")


def test_an_event_that_breaks_its_declaration_is_told_how() -> None:
    event = Event(name="cache.hit", sender="router", request_id="r1", attempt=2, data={"key": 5, "x": 1})
    assert violations(event) == [
        "sender 'router' is not one of ('cache',)",
        "driver is missing",
        "attempt is filled but not declared",
        "data['key'] = 5 is not a <class 'str'>",
        "data['x'] is not declared",
    ]
    assert (
        violations(Event(name="cache.hit", sender="cache", request_id="r1", driver="d", data={"key": "k"}))
        == []
    )
    assert (
        violations(
            Event(
                name="driver.call_started",
                sender="driver:fast",
                request_id="r",
                driver="fast",
                attempt=1,
                data={"stream": False, "driver_kind": "test", "server_port": 443},
            )
        )
        == []
    )


def test_docs_events_md_is_the_generated_reference() -> None:
    text = (ROOT / "docs" / "events.md").read_text()
    assert text == events_reference(), "regenerate: python -m nova.events > docs/events.md"
    for name in SIGNALS:
        assert f"`{name}`" in text


def test_the_request_completed_event_the_provider_sends_is_the_declared_one() -> None:
    from nova.config import parse_config
    from nova.features import build_provider
    from nova.messages import CallOptions
    from nova.types import ChatRequest, Response, Usage

    provider = build_provider(parse_config({}))
    request = ChatRequest(messages=[{"role": "user", "content": "hi"}])
    provider.accept("r1", "chat", request, CallOptions(), caller="caller")
    answer = Response(text="ok", model="test-model-1", id="resp-1", finish_reason="stop", usage=Usage())
    outcome = provider.finish("r1", answer, None)
    assert outcome is not None
    ((name, fields),) = [(n, f) for n, f in outcome.events if n == "request.completed"]
    assert fields["data"]["finish_reason"] == "stop"
    assert violations(Event(name=name, sender="router", **fields)) == []


def _events(seqs: range) -> list[Event]:
    return [Event(name="cache.miss", seq=s) for s in seqs]


def _shape(events: list[Event]) -> list[Any]:
    return [
        (e.data["dropped"], e.data["first_seq"], e.data["last_seq"]) if e.name == "subscriber.gap" else e.seq
        for e in events
    ]


def test_subscriber_queue_drop_oldest_puts_one_gap_before_the_survivors() -> None:
    q = SubscriberQueue(3)
    accepted = [q.put(e) for e in _events(range(1, 7))]
    assert accepted == [True, True, True, False, False, False]
    assert len(q) == 3 and q.dropped_total == 3
    assert _shape(q.drain()) == [(3, 1, 3), 4, 5, 6]
    assert q.drain() == []


def test_subscriber_queue_drop_newest_puts_the_gap_where_the_events_were_lost() -> None:
    q = SubscriberQueue(2, policy="drop_newest")
    for e in _events(range(1, 4)):
        q.put(e)
    assert _shape(q.drain(1)) == [1]
    q.put(Event(name="cache.miss", seq=4))  # room again: accepted after the gap
    q.put(Event(name="cache.miss", seq=5))  # full again: a second gap
    assert _shape(q.drain()) == [2, (1, 3, 3), 4, (1, 5, 5)]


def test_subscriber_queue_memory_stays_bounded_when_the_subscriber_never_reads() -> None:
    for policy in ("drop_oldest", "drop_newest"):
        q = SubscriberQueue(100, policy=policy)  # type: ignore[arg-type]
        for e in _events(range(1, 10_001)):
            q.put(e)
        assert len(q) == 100
        assert len(q._items) <= 101  # the events plus at most one gap marker
        drained = q.drain()
        assert sum(e.data.get("dropped", 0) for e in drained) == 9_900 == q.dropped_total
    with pytest.raises(ValueError):
        SubscriberQueue(0)


@pytest.mark.parametrize(
    ("value", "mode"),
    [
        (None, "NO_CONTENT"),
        ("", "NO_CONTENT"),
        ("no_content", "NO_CONTENT"),
        ("span_only", "SPAN_ONLY"),
        ("SPAN_AND_EVENT", "SPAN_AND_EVENT"),
        ("event_only", "EVENT_ONLY"),
        ("true", "SPAN_ONLY"),
        ("yes please", "NO_CONTENT"),
    ],
)
def test_content_capture_follows_the_otel_environment_variable(
    monkeypatch: pytest.MonkeyPatch, value: str | None, mode: str
) -> None:
    if value is None:
        monkeypatch.delenv(CONTENT_CAPTURE_ENV, raising=False)
    else:
        monkeypatch.setenv(CONTENT_CAPTURE_ENV, value)
    assert capture_content_mode() == mode
    assert capture_content_enabled() is (mode != "NO_CONTENT")


def test_message_content_is_small_plain_data() -> None:
    content = message_content([Message(role="user", content="hi")])
    assert content == [{"role": "user", "content": "hi"}]


def test_every_event_name_written_at_an_emit_site_is_declared() -> None:
    """Emit sites a test run may not reach still cannot hold a typo: their literal names are read
    from the source."""
    import ast

    emitted: set[str] = set()
    for package in ("nova", "actors", "supervisors"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.Call) or not node.args:
                    continue
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                first = node.args[0]
                if (
                    name in ("emit", "_emit")
                    and isinstance(first, ast.Constant)
                    and isinstance(first.value, str)
                ):
                    emitted.add(first.value)
    assert len(emitted) > 15  # the scan finds the emit sites
    assert emitted - CATALOGUE.keys() == set()
