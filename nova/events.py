"""Every lifecycle step of a request, as a blinker signal: the events reference.

All signals live in one private `Namespace`. Components never call a signal themselves: they build
an `Event` and hand it to the `EventBus` (in the actor system, by sending it to the EventBus actor),
which numbers it and delivers it to every listener, isolating listeners from each other.

Every event is declared once in this module (`CATALOGUE`, one `EventSpec` each): its sender (the
component that saw the step: "router", "cache", "ratelimit", "fallback", "driver:<name>",
"supervisor:<name>"), the `Event` fields it always fills and those it may fill, its `data` payload
(a TypedDict) and what it means. Payload: one `Event`, delivered as the keyword argument `event`.
An undeclared name raises where it is emitted when NOVA_STRICT_EVENTS is set (the tests set it), is
otherwise logged and dropped alone, and fails at import in tables of names built with `known()`;
`violations(event)` says how an event breaks its declaration. docs/events.md is generated from
this module: `python -m nova.events > docs/events.md` (`events_reference()`).

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
from dataclasses import dataclass
from types import UnionType
from typing import Any, Literal, NotRequired, TypedDict, Union, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

from blinker import Namespace, Signal
from pydantic import BaseModel, ConfigDict, Field

from nova.errors import InvalidInputError
from nova.types import Message, Usage

__all__ = [
    "CATALOGUE",
    "CONTENT_CAPTURE_ENV",
    "SENDERS",
    "SIGNALS",
    "STRICT_ENV",
    "Event",
    "EventBus",
    "EventSpec",
    "SubscriberQueue",
    "UnknownEventError",
    "capture_content_enabled",
    "capture_content_mode",
    "checked",
    "events_reference",
    "known",
    "message_content",
    "server_fields",
    "signal",
    "violations",
]

log = logging.getLogger("nova.events")

STRICT_ENV = "NOVA_STRICT_EVENTS"  # set (tests do): an unknown event name raises where it is emitted


# --- the payloads: what each event's `data` holds ---------------------------------------------------


class NoData(TypedDict):
    """The event fills no `data` keys."""


class RequestStartedData(TypedDict):
    operation: Literal["chat", "text_completion"]
    stream: bool
    traceparent: str | None  # W3C trace context of the caller's span
    driver_kind: str
    tracestate: NotRequired[str]
    temperature: NotRequired[float]
    max_tokens: NotRequired[int]
    top_p: NotRequired[float]
    stop_sequences: NotRequired[list[str]]
    seed: NotRequired[int]
    content: NotRequired[list[dict[str, Any]]]  # only when content capture is on
    provider: NotRequired[str]  # when a component knows a better name than the driver's kind


class RequestCompletedData(TypedDict):
    cached: bool
    attempts: int
    finish_reason: str  # one string: the span attribute gen_ai.response.finish_reasons is a list of it
    response_id: str
    response_model: str
    content: NotRequired[dict[str, Any]]  # only when content capture is on


class CacheData(TypedDict):
    key: str  # the start of the cache key


class DelayedData(TypedDict):
    wait_s: float


class RejectedData(TypedDict):
    limit: str


class PauseData(TypedDict):
    target: str
    until_s: float
    reason: str


class ResumedData(TypedDict):
    target: str


class NextTargetData(TypedDict):
    target: str  # the next one, "driver/model"


class ExhaustedData(TypedDict):
    attempts: int


class CircuitData(TypedDict):
    target: str | None
    failures: int


class CallStartedData(TypedDict):
    stream: bool
    driver_kind: str
    server_address: NotRequired[str]
    server_port: NotRequired[int]
    provider: NotRequired[str]


class CallCompletedData(TypedDict):
    response_id: str
    response_model: str


class PluginFailedData(TypedDict):
    plugin: str
    hook: str


class ChildExitedData(TypedDict):
    child: str
    supervisor: str
    reason: Literal["normal", "abnormal"]  # normal: it stopped itself; abnormal: it died


class ChildRestartedData(TypedDict):
    child: str
    supervisor: str
    restarts: int


class EscalatedData(TypedDict):
    child: str
    supervisor: str
    reason: str


class GapData(TypedDict):
    dropped: int
    first_seq: int
    last_seq: int


# --- the catalogue ------------------------------------------------------------------------------------

# The `Event` fields besides name, sender, seq, ts and data that an event may fill.
FIELDS = (
    "request_id",
    "driver",
    "model",
    "attempt",
    "duration_s",
    "usage",
    "cost_usd",
    "error_type",
    "error_message",
)
_ENDS_A_CALL = ("router", "cache", "ratelimit", "fallback", "driver:<name>")  # whoever answers the caller


@dataclass(frozen=True)
class EventSpec:
    """One event, declared once: its sender(s), the fields it always fills (`required`, never
    None), those it may fill (`optional`), its `data` payload (a TypedDict) and what it means."""

    name: str
    doc: str
    senders: tuple[str, ...]
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    data: type = NoData

    def violations(self, event: Event) -> list[str]:
        """How `event` breaks this declaration (empty: it keeps it)."""
        found = []
        if not any(_sender_matches(pattern, event.sender) for pattern in self.senders):
            found.append(f"sender {event.sender!r} is not one of {self.senders}")
        for name in FIELDS:
            value = getattr(event, name)
            if name in self.required and value is None:
                found.append(f"{name} is missing")
            elif value is not None and name not in self.required and name not in self.optional:
                found.append(f"{name} is filled but not declared")
        hints = get_type_hints(self.data, include_extras=True)
        for key, hint in hints.items():
            optional = get_origin(hint) is NotRequired
            kind = get_args(hint)[0] if optional else hint
            if key not in event.data:
                if not optional:
                    found.append(f"data[{key!r}] is missing")
            elif not _is_a(event.data[key], kind):
                found.append(f"data[{key!r}] = {event.data[key]!r} is not a {kind}")
        found += [f"data[{key!r}] is not declared" for key in event.data if key not in hints]
        return found


def _sender_matches(pattern: str, sender: str) -> bool:
    prefix, wildcard, _ = pattern.partition("<")
    return sender.startswith(prefix) and len(sender) > len(prefix) if wildcard else sender == pattern


def _is_a(value: Any, kind: Any) -> bool:
    """Whether `value` fits the annotation `kind` (unions, Literal, None, generics by their origin)."""
    if kind is Any:
        return True
    if kind is None or kind is type(None):
        return value is None
    origin = get_origin(kind)
    if origin in (Union, UnionType):
        return any(_is_a(value, k) for k in get_args(kind))
    if origin is Literal:
        return value in get_args(kind)
    if origin is not None:
        return isinstance(value, origin)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


CATALOGUE: dict[str, EventSpec] = {}


def _declare(
    name: str,
    doc: str,
    *,
    sender: str | tuple[str, ...],
    required: tuple[str, ...] = (),
    optional: tuple[str, ...] = (),
    data: type = NoData,
) -> EventSpec:
    if name in CATALOGUE:
        raise ValueError(f"event {name!r} is declared twice")
    unknown = set(required + optional) - set(FIELDS)
    if unknown:
        raise ValueError(f"event {name!r} declares fields an Event does not have: {sorted(unknown)}")
    spec = EventSpec(name, doc, (sender,) if isinstance(sender, str) else sender, required, optional, data)
    CATALOGUE[name] = spec
    return spec


_CALL = ("request_id", "driver")  # every event of a call names it and its target's driver

REQUEST_STARTED = _declare(
    "request.started",
    "the router accepted a call; `model` is the requested one (none: the driver's default), data"
    " holds only the request parameters that are set",
    sender="router",
    required=_CALL,
    optional=("model",),
    data=RequestStartedData,
)
REQUEST_COMPLETED = _declare(
    "request.completed",
    "the caller got an answer; `cost_usd` is 0 for a cache hit and none when the model has no known"
    " price; sent by whoever answered the caller",
    sender=_ENDS_A_CALL,
    required=(*_CALL, "duration_s", "usage"),
    optional=("model", "cost_usd"),
    data=RequestCompletedData,
)
REQUEST_FAILED = _declare(
    "request.failed",
    "the caller got an error, or cancelled the call (error_type CancelledError);"
    " sent by whoever answered the caller",
    sender=_ENDS_A_CALL,
    required=(*_CALL, "duration_s", "error_type", "error_message"),
    optional=("model",),
)
CACHE_HIT = _declare(
    "cache.hit",
    "the answer came from the cache",
    sender="cache",
    required=_CALL,
    optional=("model",),
    data=CacheData,
)
CACHE_MISS = _declare(
    "cache.miss",
    "the cache had no answer, and no identical call is in flight: this one goes upstream",
    sender="cache",
    required=_CALL,
    optional=("model",),
    data=CacheData,
)
CACHE_COALESCED = _declare(
    "cache.coalesced",
    "an identical call in flight will answer this one too (instead of a miss)",
    sender="cache",
    required=_CALL,
    optional=("model",),
    data=CacheData,
)
RATELIMIT_DELAYED = _declare(
    "ratelimit.delayed",
    "the call waited for its limit (or for a target the service paused) and goes on now",
    sender=("ratelimit", "fallback"),
    required=_CALL,
    optional=("model",),
    data=DelayedData,
)
RATELIMIT_REJECTED = _declare(
    "ratelimit.rejected",
    "the call was refused by a limit",
    sender="ratelimit",
    required=_CALL,
    optional=("model",),
    data=RejectedData,
)
RATELIMIT_PAUSED = _declare(
    "ratelimit.paused",
    "a target is paused by the service's own limit (a 429, or rate-limit headers at zero)",
    sender=("ratelimit", "fallback"),
    data=PauseData,
)
RATELIMIT_RESUMED = _declare(
    "ratelimit.resumed",
    "a paused target takes calls again",
    sender="ratelimit",
    data=ResumedData,
)
FALLBACK_ATTEMPT = _declare(
    "fallback.attempt",
    "one try of one target begins; `attempt` is 1 for the first try",
    sender="fallback",
    required=(*_CALL, "attempt"),
    optional=("model",),
)
FALLBACK_NEXT_TARGET = _declare(
    "fallback.next_target",
    "the call leaves a target for the next (the event's driver and model); `error_type` is the"
    " error that made it leave",
    sender="fallback",
    required=(*_CALL, "attempt"),
    optional=("model", "error_type"),
    data=NextTargetData,
)
FALLBACK_EXHAUSTED = _declare(
    "fallback.exhausted",
    "every target of a call with more than one attempt failed; `error_type` is the final error",
    sender="fallback",
    required=(*_CALL, "error_type"),
    optional=("model",),
    data=ExhaustedData,
)
CIRCUIT_OPENED = _declare(
    "circuit.opened",
    "a target's breaker opened",
    sender="fallback",
    optional=("driver",),
    data=CircuitData,
)
CIRCUIT_HALF_OPEN = _declare(
    "circuit.half_open",
    "a target's breaker lets one probe through",
    sender="fallback",
    optional=("driver",),
    data=CircuitData,
)
CIRCUIT_CLOSED = _declare(
    "circuit.closed",
    "a target's breaker closed again",
    sender="fallback",
    optional=("driver",),
    data=CircuitData,
)
DRIVER_CALL_STARTED = _declare(
    "driver.call_started",
    "a driver actor began a service call; `model` is the one the call asks for; server_address /"
    " server_port name the service when the driver calls one over the network"
    " (`server_fields(driver.base_url)`)",
    sender="driver:<name>",
    required=(*_CALL, "attempt"),
    optional=("model",),
    data=CallStartedData,
)
DRIVER_CALL_COMPLETED = _declare(
    "driver.call_completed",
    "the service answered",
    sender="driver:<name>",
    required=(*_CALL, "attempt", "duration_s", "usage"),
    optional=("model",),
    data=CallCompletedData,
)
DRIVER_CALL_FAILED = _declare(
    "driver.call_failed",
    "the service call failed",
    sender="driver:<name>",
    required=(*_CALL, "attempt", "duration_s", "error_type", "error_message"),
    optional=("model",),
)
STREAM_FIRST_CHUNK = _declare(
    "stream.first_chunk",
    "the first chunk of a stream arrived; `duration_s` is the time to first chunk",
    sender=("router", "driver:<name>"),
    required=(*_CALL, "duration_s"),
    optional=("model",),
)
PLUGIN_FAILED = _declare(
    "plugin.failed",
    "a plugin raised or returned the wrong type (the call then fails with that error, unless an"
    " on_error plugin recovers)",
    sender="router",
    required=("request_id", "error_type", "error_message"),
    optional=("driver", "model"),
    data=PluginFailedData,
)
SUPERVISOR_CHILD_EXITED = _declare(
    "supervisor.child_exited",
    "a supervised actor stopped",
    sender="supervisor:<name>",
    data=ChildExitedData,
)
SUPERVISOR_CHILD_RESTARTED = _declare(
    "supervisor.child_restarted",
    "a supervised actor was restarted",
    sender="supervisor:<name>",
    data=ChildRestartedData,
)
SUPERVISOR_ESCALATED = _declare(
    "supervisor.escalated",
    "restart intensity exceeded: the supervisor gives up and exits, its own supervisor decides",
    sender="supervisor:<name>",
    data=EscalatedData,
)
SUBSCRIBER_GAP = _declare(
    "subscriber.gap",
    "never published on the bus: put in a remote subscriber's queue where events were dropped"
    " (its EventMessage's `dropped` is the same count)",
    sender="events",
    data=GapData,
)

# name -> what happened; name -> the component that sends it (views of the catalogue)
SIGNALS: dict[str, str] = {name: spec.doc for name, spec in CATALOGUE.items()}
SENDERS: dict[str, str] = {name: " | ".join(spec.senders) for name, spec in CATALOGUE.items()}


class UnknownEventError(InvalidInputError, KeyError):
    """An event name the catalogue does not declare (a typo)."""


def known(*names: str) -> tuple[str, ...]:
    """`names`, each checked against the catalogue: for tables of event names built at import,
    so that a typo fails when the module is imported."""
    for name in names:
        if name not in CATALOGUE:
            raise UnknownEventError(f"unknown event {name!r}")
    return names


def checked(name: str) -> bool:
    """Whether an event of this name may be emitted. An unknown name raises when STRICT_ENV is set
    (the tests), else it is logged and only that event is dropped."""
    if name in CATALOGUE:
        return True
    if os.environ.get(STRICT_ENV):
        raise UnknownEventError(f"unknown event {name!r}")
    log.error("dropped an event of unknown name %r", name)
    return False


def violations(event: Event) -> list[str]:
    """How `event` breaks its declaration (an unknown name is one violation)."""
    spec = CATALOGUE.get(event.name)
    return [f"unknown event {event.name!r}"] if spec is None else spec.violations(event)


_namespace = Namespace()


def signal(name: str) -> Signal:
    """The blinker signal of a declared event; an unknown name is an error, not a new signal."""
    spec = CATALOGUE.get(name)
    if spec is None:
        raise UnknownEventError(f"unknown event {name!r}")
    return _namespace.signal(name, doc=f"sender: {' | '.join(spec.senders)}; {spec.doc}")


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
        self.unknown_events = 0

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
        """Number `event` and deliver it; an event of unknown name is logged and dropped alone
        (never an exception that would lose the rest of the batch it came in)."""
        if event.name not in CATALOGUE:
            self.unknown_events += 1
            log.error("dropped an event of unknown name %r from %s", event.name, event.sender)
            return event
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


def _type_name(kind: Any) -> str:
    if kind is None or kind is type(None):
        return "None"
    origin = get_origin(kind)
    if origin in (Union, UnionType):
        return " or ".join(_type_name(k) for k in get_args(kind))
    if origin is Literal:
        return " or ".join(repr(v) for v in get_args(kind))
    if origin is not None:
        return str(getattr(origin, "__name__", origin))
    return str(getattr(kind, "__name__", kind))


def _data_cell(data: type) -> str:
    keys = []
    for key, hint in get_type_hints(data, include_extras=True).items():
        optional = get_origin(hint) is NotRequired
        kind = get_args(hint)[0] if optional else hint
        keys.append(f"`{key}`{'?' if optional else ''}: {_type_name(kind)}")
    return ", ".join(keys) or "-"


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
    lines += [
        "",
        "## Signals",
        "",
        "Fields: those the event always fills; `?` marks those it may leave None. Data: its `data`",
        "keys with their types; `?` marks the keys it may leave out.",
        "",
        "| signal | sender | what happened | fields | data |",
        "|---|---|---|---|---|",
    ]
    for name, spec in CATALOGUE.items():
        fields = [f"`{f}`" for f in spec.required] + [f"`{f}`?" for f in spec.optional]
        lines.append(
            f"| `{name}` | {', '.join(f'`{s}`' for s in spec.senders)} | {_cell(spec.doc)}"
            f" | {', '.join(fields) or '-'} | {_cell(_data_cell(spec.data))} |"
        )
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
        '- export them: `[telemetry] exporter = "otlp"` (or the `OTEL_*` variables), or an SDK setup',
        '  of your own with `otel_setup = "myapp.telemetry:setup"` (docs/observability.md);',
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


if __name__ == "__main__":  # python -m nova.events > docs/events.md
    import sys

    sys.stdout.write(events_reference())
