"""EventBusActor: the process where events are numbered, listened to, and passed on to actors.

Other actors send their events here in batches. In-process listeners (metrics, OpenTelemetry)
hang on the `nova.events.EventBus`; actors `Subscribe` by message (with a topic filter) and get
`EventMessage`s. A subscriber that falls behind loses the oldest events, counted in `dropped`,
never growing this process's memory without bound.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from thespian.actors import WakeupMessage

from actors.base import PARENT, EventBatch, NovaActor
from nova.events import Event, EventBus, SubscriberQueue
from nova.messages import EventMessage, GetMetrics, MetricsReply, Subscribe, Unsubscribe

__all__ = ["EventBusActor", "TelemetryInit"]

log = logging.getLogger("nova.eventbus")
_PUSH = "nova:push-events"
PUSH_INTERVAL_S = 0.02
PUSH_MAX = 50  # events sent to one subscriber per push: a burst of sends stalls Thespian
QUEUE_MAX = 10_000


@dataclass(frozen=True)
class TelemetryInit:
    config: Any  # NovaConfig


class _Subscriber:
    def __init__(self, topics: tuple[str, ...] | None) -> None:
        self.topics = topics
        self.queue = SubscriberQueue(QUEUE_MAX)

    def wants(self, event: Event) -> bool:
        return self.topics is None or any(event.name.startswith(t) for t in self.topics)


class EventBusActor(NovaActor):
    init_message = TelemetryInit

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bus = EventBus()
        self.metrics: Any = None
        self.otel: Any = None
        # (address, subscriber) pairs, found by ==: Thespian addresses are unhashable
        self.subscribers: list[tuple[Any, _Subscriber]] = []
        self._push_pending = False

    def handlers(self) -> dict[type, Any]:
        return {
            TelemetryInit: self.on_init,
            EventBatch: self.on_batch,
            Subscribe: self.on_subscribe,
            Unsubscribe: self.on_unsubscribe,
            GetMetrics: self.on_get_metrics,
            WakeupMessage: self.on_wakeup,
        }

    def entitled(self) -> dict[type, str]:
        return {**super().entitled(), TelemetryInit: PARENT}

    def sender_name(self) -> str:
        return "eventbus"

    def on_init(self, message: TelemetryInit, sender: Any) -> None:
        telemetry = message.config.telemetry
        if telemetry.metrics:
            from nova.metrics import MetricsCollector

            self.metrics = MetricsCollector().attach(self.bus)
        if telemetry.otel:
            from nova.otel import OTelListener

            if telemetry.otel_setup:  # the SDK is configured in this process, where spans are made
                import importlib

                module, _, function = telemetry.otel_setup.partition(":")
                getattr(importlib.import_module(module), function)()

            self.otel = OTelListener()
            self.otel.attach(self.bus)

    def on_batch(self, batch: EventBatch, sender: Any) -> None:
        for event in batch.events:
            self.publish(event)

    def publish(self, event: Event) -> None:
        event = self.bus.publish(event)
        for _, subscriber in self.subscribers:
            if subscriber.wants(event):
                subscriber.queue.put(event)
        if self.subscribers and not self._push_pending:
            self._push_pending = True
            self.wakeupAfter(PUSH_INTERVAL_S, payload=_PUSH)

    def on_subscribe(self, message: Subscribe, sender: Any) -> None:
        self._drop(sender)
        self.subscribers.append((sender, _Subscriber(message.topics)))

    def on_unsubscribe(self, message: Unsubscribe, sender: Any) -> None:
        self._drop(sender)

    def _drop(self, sender: Any) -> None:
        self.subscribers = [(a, s) for a, s in self.subscribers if a != sender]

    def on_get_metrics(self, message: GetMetrics, sender: Any) -> None:
        snapshot = self.metrics.snapshot().model_dump(mode="json") if self.metrics else {}
        self.send(sender, MetricsReply(snapshot=snapshot))

    def on_wakeup(self, message: WakeupMessage, sender: Any) -> None:
        if message.payload != _PUSH:
            return
        self._push_pending = False
        more = False
        for address, subscriber in self.subscribers:
            for event in subscriber.queue.drain(PUSH_MAX):
                self.send(address, EventMessage(event=event))
            more = more or len(subscriber.queue) > 0
        if more:
            self._push_pending = True
            self.wakeupAfter(PUSH_INTERVAL_S, payload=_PUSH)
