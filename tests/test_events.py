"""The event bus: numbering, listener isolation, bounded subscriber queues, content capture, the reference."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest

from nova.events import (
    CONTENT_CAPTURE_ENV,
    SENDERS,
    SIGNALS,
    Event,
    EventBus,
    SubscriberQueue,
    capture_content_enabled,
    capture_content_mode,
    events_reference,
    message_content,
    signal,
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


def test_unknown_events_and_async_listeners_are_refused() -> None:
    bus = EventBus()
    with pytest.raises(KeyError, match="request.exploded"):
        bus.publish(Event(name="request.exploded"))

    async def on_event(sender: str, *, event: Event) -> None:  # would never run
        pass

    with pytest.raises(TypeError, match="synchronous"):
        bus.connect(on_event)


def test_every_signal_is_documented_with_its_sender() -> None:
    assert set(SENDERS) == set(SIGNALS)
    for name in SIGNALS:
        assert f"sender: {SENDERS[name]}" in (signal(name).__doc__ or "")


def test_docs_events_md_is_the_generated_reference() -> None:
    text = (ROOT / "docs" / "events.md").read_text()
    assert text == events_reference(), (
        "regenerate: python -c 'import nova.events as e; print(e.events_reference())'"
    )
    for name in SIGNALS:
        assert f"`{name}`" in text


def documented_data_keys(name: str) -> set[str]:
    """The `data` keys the events reference lists for a signal (the words after "data:")."""
    listed = SIGNALS[name].partition("data:")[2]
    return {m.group(1) for part in listed.split(",") if (m := re.match(r"\s*([a-z_]+)", part))}


def test_the_request_completed_event_the_provider_sends_is_the_documented_one() -> None:
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
    sent = set(fields["data"])
    assert fields["data"]["finish_reason"] == "stop"
    assert sent == documented_data_keys(name) - {"content"}  # content only when capture is on
    Event(name=name, **fields)  # every field is an Event field


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
