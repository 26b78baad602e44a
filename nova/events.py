"""Every lifecycle step of a request, as a blinker signal: the events reference.

All signals live in one private `Namespace`. Components never call a signal themselves: they build
an `Event` and hand it to the `EventBus` (in the actor system, by sending it to the EventBus actor),
which numbers it and delivers it to every listener, isolating listeners from each other.

Sender of every signal: the name of the component that saw the step (`SENDERS`: "router", "cache",
"ratelimit", "fallback", "driver:<name>", "supervisor:<name>"). Payload: one `Event`, delivered as
the keyword argument `event`. Which optional fields each signal fills is listed in `SIGNALS`;
docs/events.md is generated from this module (`events_reference()`).

Conventions the listeners rely on:
- `attempt` numbers start at 1; `duration_s` of request.* is measured from request.started.
- request.started carries the requested driver and model. A later event of the same request may
  name another model (the id the service reported, after a fallback another target's): listeners
  join a request's events by `request_id`, and a driver call's by `request_id` + `attempt`, and
  take the request's target from request.started; the reported id is data["response_model"].
- Events of different components (router, cache, fallback, drivers) travel separately, each in
  its own batches, so a listener may get them in any order across components (a driver call's
  start after its request's end): a listener must not depend on the order (`seq` is the order
  of arrival at the bus, not of the steps; `ts` is when the step happened).
- A cache lookup emits exactly one of cache.hit / cache.miss / cache.coalesced.
- request.completed's `cost_usd` is set by the provider before it emits (0 for a cache hit, None
  when the model has no known price), so every listener sees the same cost.

Payloads never contain prompt or answer text and never a secret. The one exception is
`data["content"]`, filled only when `capture_content_enabled()` (the environment variable
OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT) says so: on request.started the input messages
and on request.completed the answer, each as `message_content(...)` builds them.

Remote subscribers (other actors) get events through a `SubscriberQueue` each: bounded, it drops
the oldest events when the subscriber falls behind and tells it so with one "subscriber.gap" event
per run of drops. A slow, stalled or failing subscriber never holds up another one or the bus.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Literal
from urllib.parse import urlsplit

from blinker import Namespace, Signal
from pydantic import BaseModel, ConfigDict, Field

from nova.types import Message, Usage

__all__ = [
    "CONTENT_CAPTURE_ENV",
    "SENDERS",
    "SIGNALS",
    "Event",
    "EventBus",
    "SubscriberQueue",
    "capture_content_enabled",
    "capture_content_mode",
    "events_reference",
    "message_content",
    "server_fields",
    "signal",
]

log = logging.getLogger("nova.events")

# name -> (what happened, the fields it fills besides request_id / driver / model)
SIGNALS: dict[str, str] = {
    "request.started": (
        "the router accepted a call; data: operation (chat | text_completion), stream, traceparent"
        " (W3C, the caller's context; tracestate too when the caller has one), the request parameters"
        " that are set (temperature, max_tokens, top_p, stop_sequences, seed), driver_kind, content;"
        " provider when a component knows a better name than the driver's kind"
    ),
    "request.completed": (
        "the caller got an answer; duration_s, usage, cost_usd (0 for a cache hit, None if unpriced),"
        " data: cached, attempts, response_model, response_id, finish_reason (one string: the span"
        " attribute gen_ai.response.finish_reasons is a list of it), content"
    ),
    "request.failed": "the caller got an error; duration_s, error_type, error_message, data: attempts",
    "cache.hit": "the answer came from the cache; data: key",
    "cache.miss": "the cache had no answer; data: key",
    "cache.coalesced": "an identical call in flight will answer this one too (instead of a miss); data: key",
    "ratelimit.delayed": "the call waits for its limit; data: wait_s, limit",
    "ratelimit.rejected": "the call was refused by a limit; data: limit",
    "ratelimit.paused": "a target is paused by the service's own limit; data: target, until_s",
    "ratelimit.resumed": "a paused target takes calls again; data: target",
    "fallback.attempt": "one try of one target begins; attempt (1 for the first try)",
    "fallback.next_target": "the call leaves this target for the next; error_type, data: target (the next)",
    "fallback.exhausted": "every target failed; error_type, data: attempts",
    "circuit.opened": "a target's breaker opened; data: target, failures",
    "circuit.half_open": "a target's breaker lets one probe through; data: target",
    "circuit.closed": "a target's breaker closed again; data: target",
    "driver.call_started": (
        "a driver actor began a service call; attempt, model (the one the call asks for), data:"
        " stream, driver_kind, and server_address / server_port of the service when the driver calls"
        " one over the network (`server_fields(driver.base_url)`), provider when known"
    ),
    "driver.call_completed": (
        "the service answered; attempt, duration_s, usage, data: response_id, response_model"
    ),
    "driver.call_failed": "the service call failed; attempt, duration_s, error_type, error_message",
    "stream.first_chunk": "the first chunk of a stream arrived; duration_s (time to first chunk)",
    "plugin.failed": (
        "a plugin raised or returned the wrong type (the call then fails with that error, unless an"
        " on_error plugin recovers); the call's request_id, driver and model, error_type,"
        " error_message, data: plugin, hook"
    ),
    "supervisor.child_exited": "a supervised actor stopped; data: child, reason",
    "supervisor.child_restarted": "a supervised actor was restarted; data: child, restarts",
    "supervisor.escalated": "restart intensity exceeded; the supervisor gives up; data: child",
    "subscriber.gap": (
        "never published on the bus: put in a remote subscriber's queue where events were dropped"
        " (its EventMessage's `dropped` is the same count); data: dropped, first_seq, last_seq"
    ),
}

# name -> the component that sends it (the `sender` argument every listener receives)
SENDERS: dict[str, str] = {
    "request.started": "router",
    "request.completed": "router",
    "request.failed": "router",
    "cache.hit": "cache",
    "cache.miss": "cache",
    "cache.coalesced": "cache",
    "ratelimit.delayed": "ratelimit",
    "ratelimit.rejected": "ratelimit",
    "ratelimit.paused": "ratelimit",
    "ratelimit.resumed": "ratelimit",
    "fallback.attempt": "fallback",
    "fallback.next_target": "fallback",
    "fallback.exhausted": "fallback",
    "circuit.opened": "fallback",
    "circuit.half_open": "fallback",
    "circuit.closed": "fallback",
    "driver.call_started": "driver:<name>",
    "driver.call_completed": "driver:<name>",
    "driver.call_failed": "driver:<name>",
    "stream.first_chunk": "router",
    "plugin.failed": "router",
    "supervisor.child_exited": "supervisor:<name>",
    "supervisor.child_restarted": "supervisor:<name>",
    "supervisor.escalated": "supervisor:<name>",
    "subscriber.gap": "events",
}

_namespace = Namespace()


def signal(name: str) -> Signal:
    """The blinker signal of a documented step; an unknown name is an error, not a new signal."""
    if name not in SIGNALS:
        raise KeyError(f"unknown event {name!r}")
    return _namespace.signal(name, doc=f"sender: {SENDERS.get(name, '?')}; {SIGNALS[name]}")


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
    them at start-up). Listeners are synchronous and must not block: `publish` runs them in turn."""

    def __init__(self) -> None:
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self._catch_all: list[Listener] = []
        self.listener_errors = 0

    def connect(self, listener: Listener, name: str | None = None) -> None:
        """Call `listener(sender, event=...)` for the named event, or for every event."""
        if inspect.iscoroutinefunction(listener) or inspect.iscoroutinefunction(
            getattr(listener, "__call__", None)  # noqa: B004 - a callable object's own __call__
        ):
            # it would return an un-awaited coroutine: the listener would silently never run
            raise TypeError("event listeners are synchronous; wrap async work in a queue or a task")
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


# --- content capture -------------------------------------------------------------------------------

CONTENT_CAPTURE_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
CaptureMode = Literal["NO_CONTENT", "SPAN_ONLY", "EVENT_ONLY", "SPAN_AND_EVENT"]
_MODES: tuple[CaptureMode, ...] = ("NO_CONTENT", "SPAN_ONLY", "EVENT_ONLY", "SPAN_AND_EVENT")


def capture_content_mode() -> CaptureMode:
    """The content capture mode from OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT.

    Case-insensitive; the legacy value "true" means SPAN_ONLY; unset or anything else is NO_CONTENT.
    """
    raw = os.environ.get(CONTENT_CAPTURE_ENV, "").strip().upper()
    if raw == "TRUE":
        return "SPAN_ONLY"
    for mode in _MODES:
        if raw == mode:
            return mode
    return "NO_CONTENT"


def capture_content_enabled() -> bool:
    """Whether components may put prompt and answer text into `Event.data["content"]`."""
    return capture_content_mode() != "NO_CONTENT"


def message_content(messages: Iterable[Message]) -> list[dict[str, Any]]:
    """Messages as plain dicts for `Event.data["content"]` (defaults left out, so they stay small)."""
    return [m.model_dump(mode="json", exclude_defaults=True) for m in messages]


def server_fields(base_url: str | None) -> dict[str, Any]:
    """`data` keys naming the service a driver calls: {"server_address", "server_port"}.

    From the driver's base URL: the host only (never the user, password, path or query, which may
    hold a secret), and the port, the scheme's default when the URL has none. Empty for no URL
    (a driver that calls no server, like the test driver) or one without a host.
    """
    if not base_url:
        return {}
    try:
        parts = urlsplit(base_url if "//" in base_url else f"//{base_url}")
        host, port = parts.hostname, parts.port
    except ValueError:  # a malformed port
        return {}
    if not host:
        return {}
    if port is None:
        port = {"https": 443, "http": 80}.get(parts.scheme)
    return {"server_address": host} if port is None else {"server_address": host, "server_port": port}


# --- bounded remote subscribers ----------------------------------------------------------------------


class _Gap:
    __slots__ = ("dropped", "first_seq", "last_seq")

    def __init__(self, seq: int) -> None:
        self.dropped, self.first_seq, self.last_seq = 1, seq, seq

    def add(self, seq: int) -> None:
        self.dropped += 1
        self.first_seq, self.last_seq = min(self.first_seq, seq), max(self.last_seq, seq)

    def event(self) -> Event:
        return Event(
            name="subscriber.gap",
            sender=SENDERS["subscriber.gap"],
            data={"dropped": self.dropped, "first_seq": self.first_seq, "last_seq": self.last_seq},
        )


class SubscriberQueue:
    """Events waiting for one remote subscriber, at most `maxlen` of them.

    When full, "drop_oldest" (the default: a live view wants the latest) drops the oldest waiting
    event, "drop_newest" refuses the incoming one. Every run of drops reaches the subscriber as one
    "subscriber.gap" event in the place where the events were lost, so the order stays truthful.
    Thread-safe.
    """

    def __init__(self, maxlen: int, policy: Literal["drop_oldest", "drop_newest"] = "drop_oldest") -> None:
        if maxlen < 1:
            raise ValueError("maxlen must be at least 1")
        if policy not in ("drop_oldest", "drop_newest"):
            raise ValueError(f"unknown drop policy {policy!r}")
        self.maxlen = maxlen
        self.policy = policy
        self.dropped_total = 0
        self._items: deque[Event | _Gap] = deque()
        self._events = 0  # events waiting, gap markers not counted
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._events

    def put(self, event: Event) -> bool:
        """Queue an event; False when an event (this one or the oldest) had to be dropped."""
        with self._lock:
            if self._events < self.maxlen:
                self._items.append(event)
                self._events += 1
                return True
            self.dropped_total += 1
            if self.policy == "drop_newest":
                last = self._items[-1]
                if isinstance(last, _Gap):
                    last.add(event.seq)
                else:
                    self._items.append(_Gap(event.seq))
                return False
            # drop_oldest: drops always happen at the front, so at most one gap marker, in front
            first = self._items[0]
            if isinstance(first, _Gap):
                oldest = self._items[1]
                del self._items[1]
                assert isinstance(oldest, Event)
                first.add(oldest.seq)
            else:
                oldest = self._items.popleft()
                assert isinstance(oldest, Event)
                self._items.appendleft(_Gap(oldest.seq))
            self._items.append(event)
            return False

    def drain(self, max_items: int | None = None) -> list[Event]:
        """Take up to `max_items` waiting events (all by default), gap events included, in order."""
        out: list[Event] = []
        with self._lock:
            while self._items and (max_items is None or len(out) < max_items):
                item = self._items.popleft()
                if isinstance(item, _Gap):
                    out.append(item.event())
                else:
                    self._events -= 1
                    out.append(item)
        return out


# --- reference ----------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a pipe would end the Markdown table cell


def events_reference() -> str:
    """The events reference as Markdown (docs/events.md is this text; a test keeps them equal)."""
    lines = [
        "# Events reference",
        "",
        "<!-- generated from nova/events.py by nova.events.events_reference(); do not edit by hand -->",
        "",
        (__doc__ or "").strip(),
        "",
        "## Payload: `nova.events.Event`",
        "",
        "| field | type | meaning |",
        "|---|---|---|",
    ]
    meaning = {
        "name": "the signal name (below)",
        "sender": "the component that saw the step",
        "seq": "set by the bus: increases by one per published event",
        "ts": "wall-clock time of the step (seconds since the epoch)",
        "request_id": "the request the step belongs to",
        "driver": "driver name of the target",
        "model": "model of the target",
        "attempt": "try number, from 1",
        "duration_s": "seconds since the start of the request (or of the driver call)",
        "usage": "token counts (`nova.types.Usage`)",
        "cost_usd": "cost of the call in USD; None when unpriced",
        "error_type": "the Nova error class name",
        "error_message": "the error message (never a secret)",
        "data": "the step's own keys, listed per signal",
    }
    for field, info in Event.model_fields.items():
        kind = getattr(info.annotation, "__name__", None) or str(info.annotation)
        lines.append(f"| `{field}` | `{_cell(kind)}` | {meaning.get(field, '')} |")
    lines += ["", "## Signals", "", "| signal | sender | what happened; fields it fills |", "|---|---|---|"]
    for name, doc in SIGNALS.items():
        lines.append(f"| `{name}` | `{SENDERS[name]}` | {_cell(doc)} |")
    lines += [
        "",
        "## Subscribing",
        "",
        "Events are numbered and delivered inside the EventBus actor, in its own process: a program",
        "that calls Nova never holds that bus. What it does instead:",
        "",
        "- watch them live: `nova events` (all), `nova events --topic request. --topic plugin.failed`",
        "  (names or prefixes), `--count N` or `--timeout SECONDS` to stop; each event is one line for",
        "  people (number, time, name, target, duration, request, error), or with `--json` one JSON object;",
        "- read the figures: `nova metrics` (`--json`), or `nova.metrics.snapshot()` in code;",
        '- export them: `[telemetry] otel = true` with `otel_setup = "myapp.telemetry:setup"`',
        "  (docs/observability.md);",
        "- receive them in code, from the system the process talks to:",
        "",
        "```python",
        "from nova import llm",
        "from nova.messages import EventMessage, Subscribe, Unsubscribe",
        "",
        "system = llm.system()  # attached to `nova run`, or the embedded system",
        "with system.asys.private() as ctx:",
        '    ctx.tell(system.event_bus, Subscribe(topics=("request.", "plugin.failed")))  # None: all',
        "    try:",
        "        while True:",
        "            message = ctx.listen(1.0)  # None after a second without events",
        "            if isinstance(message, EventMessage):",
        "                print(message.event.name, message.event.request_id)",
        "    finally:",
        "        ctx.tell(system.event_bus, Unsubscribe())",
        "```",
        "",
        "Each subscriber has its own queue, 10,000 events unless `Subscribe(queue_size=...)` says",
        "otherwise. The bus sends a subscriber at most two messages that its Thespian transport has",
        "not yet acknowledged (twelve for all subscribers together); the rest wait in its queue. So a",
        "subscriber that is slow, stops reading or raises in its handler costs the others and the",
        "bus (`nova metrics`, `nova status`) nothing but its own queue (while at most six are",
        "stalled at once: more hold all twelve until they are dropped). When the queue is full it",
        "loses the oldest events and later gets, where they were, one gap notice: an `EventMessage`",
        "whose event is `subscriber.gap` and whose `dropped` counts them (`dropped` is 0 on every",
        "other message). A subscriber a message cannot reach (its actor or process is gone, or it",
        "took nothing for 30 seconds) is dropped: subscribe again to come back. `nova status` shows",
        "the bus's `subscribers`, `events_waiting` and `events_dropped`.",
        "",
        "Code that owns an `EventBus` itself (the EventBus actor, tests, an",
        "embedding of the plain objects) connects listeners to it: `bus.connect(on_event)` for every",
        'signal or `bus.connect(on_event, "request.completed")` for one, with',
        "`def on_event(sender: str, *, event: Event, **extra) -> None`. Such listeners are",
        "synchronous and must not block; one that raises is logged and skipped, the other listeners",
        "and the request go on.",
        "",
    ]
    return "\n".join(lines)
