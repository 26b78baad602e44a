"""EventBusActor: the process where events are numbered, listened to, and passed on to actors.

Other actors send their events here in batches. In-process listeners (metrics, OpenTelemetry)
hang on the `nova.events.EventBus`; actors `Subscribe` by message (with a topic filter) and get
`EventMessage`s.

Subscribers are isolated from each other and from the bus. Thespian sends one message at a time
to each target and lets an actor have only a few transmits under way in all; a receiver that does
not read holds its transmits until they time out, and enough of them stall every send of this
process (other subscribers, `MetricsReply`, `Pong`). So each subscriber has at most `WINDOW`
messages not yet acknowledged by its transport, and all subscribers together at most
`TOTAL_WINDOW`; the rest waits in the subscriber's own bounded `SubscriberQueue`, which drops its
oldest events when full and puts a gap notice where they were. A subscriber whose message fails
(its actor died, its process is gone, or it took nothing for `SEND_TIMEOUT_S`) is dropped.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from nova.actors.base import PARENT, STARTER_PID, EventBatch, NovaActor
from nova.events import Event, EventBus, SubscriberQueue
from nova.messages import EventMessage, GetMetrics, MetricsReply, Subscribe, Unsubscribe

__all__ = ["SEND_TIMEOUT_S", "TOTAL_WINDOW", "WINDOW", "EventBusActor", "TelemetryInit"]

log = logging.getLogger("nova.eventbus")
WINDOW = 2  # two: the next message is ready when the previous one's ACK comes back
TOTAL_WINDOW = 12  # of Thespian's 20 transmits under way per actor: the rest stays for replies
SEND_TIMEOUT_S = 30.0  # a subscriber that takes no message for this long is dropped


@dataclass(frozen=True)
class TelemetryInit:
    config: Any  # NovaConfig


class _LogStream:
    """A text stream into the log, for console exports that have no terminal to print on."""

    def write(self, text: str) -> int:
        if text.strip():
            log.info("%s", text.rstrip())
        return len(text)

    def flush(self) -> None:
        pass


class _Subscriber:
    def __init__(self, address: Any, message: Subscribe) -> None:
        self.address = address
        self.topics = message.topics
        self.queue = SubscriberQueue(message.queue_size)
        self.in_flight = 0

    def wants(self, event: Event) -> bool:
        return self.topics is None or any(event.name.startswith(t) for t in self.topics)


class EventBusActor(NovaActor):
    init_message = TelemetryInit

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bus = EventBus()
        self.metrics: Any = None
        self.exported: Any = None  # the providers of `[telemetry] exporter`, shut down at exit
        self._console_file: Any = None
        self.otel: Any = None
        # in order of subscription; found by ==: Thespian addresses are unhashable
        self.subscribers: list[_Subscriber] = []
        self.in_flight = 0  # messages to subscribers not yet acknowledged, all subscribers
        self.gone = 0  # subscribers dropped because a message to them failed
        self._pumping = False
        self._pump_again = False

    def handlers(self) -> dict[type, Any]:
        return {
            TelemetryInit: self.on_init,
            EventBatch: self.on_batch,
            Subscribe: self.on_subscribe,
            Unsubscribe: self.on_unsubscribe,
            GetMetrics: self.on_get_metrics,
        }

    def entitled(self) -> dict[type, str]:
        return {**super().entitled(), TelemetryInit: PARENT}

    def sender_name(self) -> str:
        return "eventbus"

    def status_info(self) -> dict[str, Any]:
        return {
            "subscribers": len(self.subscribers),
            "events_waiting": sum(len(s.queue) for s in self.subscribers),
            "events_dropped": sum(s.queue.dropped_total for s in self.subscribers),
        }

    def on_init(self, message: TelemetryInit, sender: Any) -> None:
        telemetry = message.config.telemetry
        if telemetry.metrics:
            from nova.collector import MetricsCollector

            self.metrics = MetricsCollector().attach(self.bus)
        export = message.config.otel_export
        if telemetry.otel or telemetry.otel_setup or export.enabled:
            from nova.otel import OTelListener

            providers: dict[str, Any] = {}
            if telemetry.otel_setup:  # the SDK is configured in this process, where spans are made
                import importlib

                module, _, function = telemetry.otel_setup.partition(":")
                target: Any = importlib.import_module(module)
                for part in function.split("."):
                    target = getattr(target, part)
                target()
            elif export.enabled:
                from nova.otel.export import install

                self.exported = install(export, console=self._console(export))
                providers = {
                    "tracer_provider": self.exported.tracer_provider,
                    "meter_provider": self.exported.meter_provider,
                }
            self.otel = OTelListener(**{k: v for k, v in providers.items() if v is not None})
            self.otel.attach(self.bus)

    def _console(self, export: Any) -> Any:
        """Where the console exporter prints: the standard output of the process that started the
        system (`nova run`'s terminal, or the program's), since actors' own output is /dev/null."""
        if "console" not in (export.traces, export.metrics):
            return None
        starter = os.environ.get(STARTER_PID)
        if starter:
            try:
                self._console_file = open(f"/proc/{starter}/fd/1", "a", buffering=1)  # noqa: SIM115
                return self._console_file
            except OSError:
                log.warning("cannot write to the standard output of process %s; spans go to the log", starter)
        return _LogStream()

    def on_exit(self) -> None:
        super().on_exit()
        if self.exported is not None:  # export what the batch processor and reader still hold
            self.exported.shutdown()
        if self._console_file is not None:
            self._console_file.close()

    def on_batch(self, batch: EventBatch, sender: Any) -> None:
        for event in batch.events:
            self.publish(event)
        self.pump()

    def publish(self, event: Event) -> None:
        event = self.bus.publish(event)
        for subscriber in self.subscribers:
            if subscriber.wants(event):
                subscriber.queue.put(event)

    def on_subscribe(self, message: Subscribe, sender: Any) -> None:
        self._drop(sender)
        self.subscribers.append(_Subscriber(sender, message))

    def on_unsubscribe(self, message: Unsubscribe, sender: Any) -> None:
        self._drop(sender)

    def _drop(self, address: Any) -> None:
        self.subscribers = [s for s in self.subscribers if s.address != address]

    def on_get_metrics(self, message: GetMetrics, sender: Any) -> None:
        snapshot = self.metrics.snapshot().model_dump(mode="json") if self.metrics else {}
        self.send(sender, MetricsReply(snapshot=snapshot))

    # -- delivery -------------------------------------------------------------------------------

    def pump(self) -> None:
        """Send what waits, within each subscriber's window and the total one, round robin."""
        if self._pumping:  # a send completed at once, inside this loop: go round again
            self._pump_again = True
            return
        self._pumping = True
        try:
            self._pump_again = True
            while self._pump_again:
                self._pump_again = False
                sent = True
                while sent and self.in_flight < TOTAL_WINDOW:
                    sent = False
                    for subscriber in list(self.subscribers):
                        if self.in_flight >= TOTAL_WINDOW:
                            break
                        if subscriber.in_flight < WINDOW and subscriber in self.subscribers:
                            items = subscriber.queue.drain(1)
                            if items:
                                self._deliver(subscriber, items[0])
                                sent = True
        finally:
            self._pumping = False

    def _deliver(self, subscriber: _Subscriber, event: Event) -> None:
        dropped = int(event.data.get("dropped", 0)) if event.name == "subscriber.gap" else 0
        message = EventMessage(event=event, dropped=dropped)
        subscriber.in_flight += 1
        self.in_flight += 1
        send_intent = getattr(getattr(self, "_myRef", None), "_send_intent", None)
        if send_intent is None:  # a system base without transmit intents: no acknowledgements
            super().send(subscriber.address, message)
            self._acknowledged(subscriber, True)
            return
        from thespian.system.transport import TransmitIntent

        def done(result: Any, intent: Any) -> None:
            self._acknowledged(subscriber, bool(result))

        send_intent(
            TransmitIntent(
                subscriber.address,
                message,
                onSuccess=done,
                onError=done,
                maxPeriod=timedelta(seconds=SEND_TIMEOUT_S),
            )
        )

    def _acknowledged(self, subscriber: _Subscriber, ok: bool) -> None:
        subscriber.in_flight -= 1
        self.in_flight -= 1
        if not ok and subscriber in self.subscribers:
            log.warning("dropping event subscriber %s: a message to it failed", subscriber.address)
            self.subscribers.remove(subscriber)
            self.gone += 1
        self.pump()
