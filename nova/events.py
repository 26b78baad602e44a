"""Every lifecycle step of a request, as a blinker signal: the events reference.

All signals live in one private `Namespace`. Components never call a signal themselves: they build
an `Event` and hand it to the `EventBus` (in the actor system, by sending it to the EventBus actor),
which numbers it and delivers it to every listener, isolating listeners from each other.

Sender of every signal: the name of the component that saw the step ("router", "cache",
"ratelimit", "fallback", "driver:<name>", "supervisor:<name>"). Payload: one `Event`, delivered as
the keyword argument `event`. Which optional fields each signal fills is listed in `SIGNALS`.

Payloads never contain prompt or answer text (unless content capture is on, in `data["content"]`)
and never a secret.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from blinker import Namespace, Signal
from pydantic import BaseModel, ConfigDict, Field

from nova.types import Usage

__all__ = ["SIGNALS", "Event", "EventBus", "signal"]

log = logging.getLogger("nova.events")

# name -> (what happened, the fields it fills besides request_id / driver / model)
SIGNALS: dict[str, str] = {
    "request.started": "the router accepted a call; data: operation, stream",
    "request.completed": "the caller got an answer; duration_s, usage, cost_usd, data: cached, attempts",
    "request.failed": "the caller got an error; duration_s, error_type, error_message",
    "cache.hit": "the answer came from the cache; data: key",
    "cache.miss": "the cache had no answer; data: key",
    "cache.coalesced": "an identical call in flight will answer this one too; data: key",
    "ratelimit.delayed": "the call waits for its limit; data: wait_s, limit",
    "ratelimit.rejected": "the call was refused by a limit; data: limit",
    "ratelimit.paused": "a target is paused by the service's own limit; data: target, until_s",
    "ratelimit.resumed": "a paused target takes calls again; data: target",
    "fallback.attempt": "one try of one target begins; attempt",
    "fallback.next_target": "the call moves to the next target; error_type, data: target",
    "fallback.exhausted": "every target failed; error_type, data: attempts",
    "circuit.opened": "a target's breaker opened; data: target, failures",
    "circuit.half_open": "a target's breaker lets one probe through; data: target",
    "circuit.closed": "a target's breaker closed again; data: target",
    "driver.call_started": "a driver actor began a service call; attempt, data: stream",
    "driver.call_completed": "the service answered; duration_s, usage",
    "driver.call_failed": "the service call failed; duration_s, error_type, error_message",
    "stream.first_chunk": "the first chunk of a stream arrived; duration_s (time to first chunk)",
    "plugin.failed": "a plugin raised; error_type, data: plugin, hook",
    "supervisor.child_exited": "a supervised actor stopped; data: child, reason",
    "supervisor.child_restarted": "a supervised actor was restarted; data: child, restarts",
    "supervisor.escalated": "restart intensity exceeded; the supervisor gives up; data: child",
}

_namespace = Namespace()


def signal(name: str) -> Signal:
    """The blinker signal of a documented step; an unknown name is an error, not a new signal."""
    if name not in SIGNALS:
        raise KeyError(f"unknown event {name!r}")
    return _namespace.signal(name, doc=SIGNALS[name])


class Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    sender: str = ""
    seq: int = 0  # set by the bus: one increasing sequence per bus
    ts: float = Field(default_factory=time.time)  # wall-clock time of the step
    request_id: str | None = None
    driver: str | None = None
    model: str | None = None
    attempt: int | None = None
    duration_s: float | None = None
    usage: Usage | None = None
    cost_usd: float | None = None
    error_type: str | None = None
    error_message: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


Listener = Callable[..., Any]


class EventBus:
    """Numbers events and delivers each to the listeners of its signal and to catch-all listeners.

    A listener that raises is logged and skipped; the others still run. Listeners are connected
    with strong references (blinker is not safe for concurrent connect and disconnect, so connect
    them at start-up)."""

    def __init__(self) -> None:
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self._catch_all: list[Listener] = []
        self.listener_errors = 0

    def connect(self, listener: Listener, name: str | None = None) -> None:
        """Call `listener(sender, event=...)` for the named event, or for every event."""
        if name is None:
            self._catch_all.append(listener)
        else:
            signal(name).connect(listener, weak=False)

    def disconnect(self, listener: Listener, name: str | None = None) -> None:
        if name is None:
            if listener in self._catch_all:
                self._catch_all.remove(listener)
        else:
            signal(name).disconnect(listener)

    def publish(self, event: Event) -> Event:
        with self._lock:
            event = event.model_copy(update={"seq": next(self._seq)})
        sig = signal(event.name)
        for receiver in [*sig.receivers_for(event.sender), *self._catch_all]:
            try:
                receiver(event.sender, event=event)
            except Exception:  # a listener's bug must not stop the others or the request
                self.listener_errors += 1
                log.exception("event listener %r failed on %s", receiver, event.name)
        return event
