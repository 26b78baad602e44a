"""Turns bus events into OpenTelemetry spans and metrics by the GenAI semantic conventions.

One span per request, "{operation} {model}", kind CLIENT, opened by request.started (its parent is
the caller's context from data["traceparent"]) and ended by request.completed / request.failed.
Each driver call (driver.call_started -> driver.call_completed / failed, keyed by request id and
attempt) is an INTERNAL child span "attempt {driver} {model}" without `gen_ai.operation.name`, so
GenAI backends count the request once. Cache, rate-limit and fallback steps are span events on the
request span. Metrics: gen_ai.client.operation.duration, gen_ai.client.token.usage and
gen_ai.client.operation.time_to_first_chunk with the recommended buckets, plus nova.client.cost.

Events come from different actors, each sending its own in batches, so they reach the listener in
any order across actors: a driver call can start after its request has ended, or before the request
has started. The listener builds the same spans whatever the order: events of a request whose start
has not arrived wait for it, a driver call's end that overtook its start waits for that start, and
a request that has ended is remembered, so that its late driver calls still become its children.
Waiting events and remembered requests are bounded (`max_open_spans` of each, and `reorder_s`
seconds); events given up on are counted in `orphan_events`. Spans whose request never finishes are
dropped (not exported) after `span_ttl_s`, or when more than `max_open_spans` are open;
`dropped_spans` counts them.

`server.address` / `server.port` come from the driver calls (data server_address / server_port of
driver.call_started, see `nova.events.server_fields`); the request span and its duration metric
take them from its latest try.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from nova.events import Event, EventBus, capture_content_mode, known
from nova.otel import semconv as sc
from nova.otel.content import messages_json

__all__ = ["OTelListener", "provider_name"]

_PROVIDERS = {"openai": "openai", "anthropic": "anthropic", "ollama": "ollama", "openai_compatible": "openai"}
_PARAMS = {
    "temperature": sc.GEN_AI_REQUEST_TEMPERATURE,
    "max_tokens": sc.GEN_AI_REQUEST_MAX_TOKENS,
    "top_p": sc.GEN_AI_REQUEST_TOP_P,
    "seed": sc.GEN_AI_REQUEST_SEED,
}
_STEP_EVENTS = known("cache.hit", "cache.miss", "cache.coalesced", "ratelimit.delayed")
_STEP_EVENTS += known("fallback.attempt", "fallback.next_target", "fallback.exhausted")
_propagator = TraceContextTextMapPropagator()

try:
    _VERSION = metadata.version("nova-llm")
except metadata.PackageNotFoundError:  # running from a source tree
    _VERSION = ""


def provider_name(driver: str | None, data: dict[str, Any]) -> str:
    """`gen_ai.provider.name` of a target: data["provider"] if the component set it, else by the
    driver's kind (data["driver_kind"], for a configured name like "fast"), else by its name."""
    kind = data.get("driver_kind") or driver or ""
    return data.get("provider") or _PROVIDERS.get(kind, kind or "_OTHER")


@dataclass
class _Open:
    span: Span
    opened: float  # listener clock, for the TTL
    metric_attrs: dict[str, Any]
    ttfc_seen: bool = False
    children: list[tuple[str, int]] = field(default_factory=list)
    server_attempt: int = -1  # the try whose server.* the request span carries


_CALL_ENDS = known("driver.call_completed", "driver.call_failed")
_REQUEST_ENDS = known("request.completed", "request.failed")
_MAX_EARLY_PER_REQUEST = 256  # events of one request waiting for its start


def _ns(ts: float) -> int:
    return int(ts * 1e9)


def _server(data: dict[str, Any]) -> dict[str, Any]:
    address = data.get("server_address", data.get(sc.SERVER_ADDRESS))
    port = data.get("server_port", data.get(sc.SERVER_PORT))
    out: dict[str, Any] = {}
    if address:
        out[sc.SERVER_ADDRESS] = str(address)
        if port is not None:
            out[sc.SERVER_PORT] = int(port)
    return out


def _usage_attrs(event: Event) -> dict[str, Any]:
    u = event.usage
    if u is None:
        return {}
    out: dict[str, Any] = {
        sc.GEN_AI_USAGE_INPUT_TOKENS: u.input_tokens,
        sc.GEN_AI_USAGE_OUTPUT_TOKENS: u.output_tokens,
    }
    for name, n in (
        (sc.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, u.cached_input_tokens),
        (sc.GEN_AI_USAGE_CACHE_WRITE_INPUT_TOKENS, u.cache_write_tokens),
        (sc.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS, u.reasoning_tokens),
    ):
        if n:
            out[name] = n
    return out


def _response_attrs(event: Event) -> dict[str, Any]:
    data = event.data
    out: dict[str, Any] = {}
    model = data.get("response_model") or event.model
    if model:
        out[sc.GEN_AI_RESPONSE_MODEL] = model
    if data.get("response_id"):
        out[sc.GEN_AI_RESPONSE_ID] = str(data["response_id"])
    reasons = data.get("finish_reasons", data.get("finish_reason"))
    if reasons:
        out[sc.GEN_AI_RESPONSE_FINISH_REASONS] = (
            [reasons] if isinstance(reasons, str) else [str(r) for r in reasons]
        )
    return out


class OTelListener:
    """A bus listener that emits GenAI spans and metrics through the given (or global) providers.

    `capture_content=None` follows OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT: SPAN_ONLY or
    SPAN_AND_EVENT put gen_ai.input.messages / gen_ai.output.messages on the request span.
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        capture_content: bool | None = None,
        *,
        span_ttl_s: float = 900.0,
        max_open_spans: int = 10_000,
        reorder_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tracer = trace.get_tracer("nova", _VERSION, tracer_provider=tracer_provider)
        meter = metrics.get_meter("nova", _VERSION, meter_provider=meter_provider)
        self._duration = meter.create_histogram(
            sc.GEN_AI_CLIENT_OPERATION_DURATION,
            unit="s",
            description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=list(sc.DURATION_BUCKETS),
        )
        self._tokens = meter.create_histogram(
            sc.GEN_AI_CLIENT_TOKEN_USAGE,
            unit="{token}",
            description="Number of input and output tokens used",
            explicit_bucket_boundaries_advisory=list(sc.TOKEN_BUCKETS),
        )
        self._ttfc = meter.create_histogram(
            sc.GEN_AI_CLIENT_OPERATION_TIME_TO_FIRST_CHUNK,
            unit="s",
            description="Time to receive the first chunk of a streamed response",
            explicit_bucket_boundaries_advisory=list(sc.DURATION_BUCKETS),
        )
        self._cost = meter.create_counter(
            sc.NOVA_CLIENT_COST, unit="{USD}", description="Cost of answered calls"
        )
        if capture_content is None:
            capture_content = capture_content_mode() in ("SPAN_ONLY", "SPAN_AND_EVENT")
        self.capture_content = capture_content
        self._ttl = span_ttl_s
        self._max_open = max_open_spans
        self._reorder = reorder_s
        self._sweep_every = min(span_ttl_s / 10, reorder_s / 2, 60.0)
        self._clock = clock
        self._last_sweep = clock()
        self._lock = threading.Lock()
        self._open: dict[str, _Open] = {}
        self._calls: dict[tuple[str, int], tuple[Span, float]] = {}
        # request id -> its span's context once ended (None: dropped), for events that come late
        self._done: dict[str, tuple[SpanContext | None, float]] = {}
        # request id -> its events that came before its request.started
        self._early: dict[str, tuple[float, list[Event]]] = {}
        # (request id, attempt) -> a driver call's end that came before the call's start
        self._early_ends: dict[tuple[str, int], tuple[Event, float]] = {}
        self.dropped_spans = 0
        self.orphan_events = 0  # events given up on: their request was dropped or never started
        self._handlers: dict[str, Callable[[Event], None]] = {
            "request.started": self._started,
            "request.completed": self._finished,
            "request.failed": self._finished,
            "stream.first_chunk": self._first_chunk,
            "driver.call_started": self._call_started,
            "driver.call_completed": self._call_finished,
            "driver.call_failed": self._call_finished,
            **{name: self._step for name in _STEP_EVENTS},
        }

    def attach(self, bus: EventBus) -> OTelListener:
        bus.connect(self.on_event)
        return self

    def detach(self, bus: EventBus) -> None:
        bus.disconnect(self.on_event)

    @property
    def open_spans(self) -> int:
        return len(self._open) + len(self._calls)

    @property
    def waiting_events(self) -> int:
        """Events held until an event they depend on arrives."""
        return sum(len(events) for _, events in self._early.values()) + len(self._early_ends)

    def on_event(self, sender: str, *, event: Event, **extra: Any) -> None:
        if event.name in self._handlers and event.request_id is not None:
            with self._lock:
                self._dispatch(event)
                self._bound()

    def _dispatch(self, event: Event) -> None:
        rid = event.request_id
        assert rid is not None
        name = event.name
        if name == "request.started":
            self._started(event)
            for early in self._early.pop(rid, (0.0, []))[1]:
                self._dispatch(early)
        elif name in _CALL_ENDS:
            self._call_finished(event)
        elif rid in self._open:
            self._handlers[name](event)
        elif rid in self._done:
            parent = self._done[rid][0]
            if name == "driver.call_started" and parent is not None:
                self._call_started(event, parent)  # a late try is still the request's child
            elif name in _REQUEST_ENDS:
                self._finished(event)  # counted as an orphan; its metrics are still recorded
            else:
                self.orphan_events += 1  # a step after the end: its span can take no more events
        else:
            self._wait_for_start(event)

    def _wait_for_start(self, event: Event) -> None:
        assert event.request_id is not None
        waiting = self._early.get(event.request_id)
        if waiting is None:
            waiting = self._early[event.request_id] = (self._clock(), [])
        if len(waiting[1]) >= _MAX_EARLY_PER_REQUEST:
            self.orphan_events += 1
            return
        waiting[1].append(event)

    # --- request span -------------------------------------------------------------------------

    def _started(self, event: Event) -> None:
        data = event.data
        operation = data.get("operation") or "chat"
        attrs: dict[str, Any] = {
            sc.GEN_AI_OPERATION_NAME: operation,
            sc.GEN_AI_PROVIDER_NAME: provider_name(event.driver, data),
        }
        if event.model:
            attrs[sc.GEN_AI_REQUEST_MODEL] = event.model
        attrs.update(_server(data))
        metric_attrs = dict(attrs)
        if data.get("stream"):
            attrs[sc.GEN_AI_REQUEST_STREAM] = True
        for key, name in _PARAMS.items():
            if data.get(key) is not None:  # 0 and 0.0 are real settings: keep them
                attrs[name] = data[key]
        stop = data.get("stop_sequences", data.get("stop"))
        if stop:
            attrs[sc.GEN_AI_REQUEST_STOP_SEQUENCES] = (
                [stop] if isinstance(stop, str) else [str(s) for s in stop]
            )
        attrs[sc.NOVA_REQUEST_ID] = event.request_id
        if event.driver:
            attrs[sc.NOVA_DRIVER] = event.driver
        if self.capture_content and data.get("content") is not None:
            attrs[sc.GEN_AI_INPUT_MESSAGES] = messages_json(data["content"], output=False)
        parent = None
        if data.get("traceparent"):
            carrier = {
                "traceparent": str(data["traceparent"]),
                "tracestate": str(data.get("tracestate") or ""),
            }
            parent = _propagator.extract(carrier)
        span = self._tracer.start_span(
            f"{operation} {event.model}" if event.model else operation,
            context=parent,
            kind=SpanKind.CLIENT,
            attributes=attrs,
            start_time=_ns(event.ts),
        )
        assert event.request_id is not None
        self._open[event.request_id] = _Open(span, self._clock(), metric_attrs)
        self._bound()

    def _finished(self, event: Event) -> None:
        assert event.request_id is not None
        open_ = self._open.pop(event.request_id, None)
        data = event.data
        cached = bool(data.get("cached"))
        response = _response_attrs(event)
        if open_ is None:
            self.orphan_events += 1
            metric_attrs = {
                sc.GEN_AI_OPERATION_NAME: data.get("operation") or "chat",
                sc.GEN_AI_PROVIDER_NAME: provider_name(event.driver, data),
            }
        else:
            metric_attrs = dict(open_.metric_attrs)
        if sc.GEN_AI_RESPONSE_MODEL in response:
            metric_attrs[sc.GEN_AI_RESPONSE_MODEL] = response[sc.GEN_AI_RESPONSE_MODEL]
        failed = event.name == "request.failed"
        if failed:
            metric_attrs[sc.ERROR_TYPE] = event.error_type or "_OTHER"
        if open_ is not None:
            span = open_.span
            span.set_attributes(response)
            if failed:
                self._fail(span, event)
            else:
                if not cached:  # a cache hit consumed no tokens: no usage to report twice
                    span.set_attributes(_usage_attrs(event))
                if event.cost_usd is not None:
                    span.set_attribute(sc.NOVA_COST_USD, event.cost_usd)
                if cached:
                    span.set_attribute(sc.NOVA_CACHED, True)
                if self.capture_content and data.get("content") is not None:
                    reasons = response.get(sc.GEN_AI_RESPONSE_FINISH_REASONS) or [None]
                    out = messages_json(data["content"], output=True, finish_reason=reasons[0])
                    span.set_attribute(sc.GEN_AI_OUTPUT_MESSAGES, out)
            span.end(end_time=_ns(event.ts))
            self._done[event.request_id] = (span.get_span_context(), self._clock())
        if event.duration_s is not None:
            self._duration.record(event.duration_s, metric_attrs)
        if not failed and not cached and event.usage is not None:
            self._tokens.record(event.usage.input_tokens, {**metric_attrs, sc.GEN_AI_TOKEN_TYPE: "input"})
            self._tokens.record(event.usage.output_tokens, {**metric_attrs, sc.GEN_AI_TOKEN_TYPE: "output"})
        if not failed and event.cost_usd:
            self._cost.add(event.cost_usd, metric_attrs)

    @staticmethod
    def _fail(span: Span, event: Event) -> None:
        error = event.error_type or "_OTHER"
        span.set_attribute(sc.ERROR_TYPE, error)
        span.add_event(
            "exception",
            {sc.EXCEPTION_TYPE: error, sc.EXCEPTION_MESSAGE: event.error_message or ""},
            timestamp=_ns(event.ts),
        )
        span.set_status(Status(StatusCode.ERROR, event.error_message))

    def _first_chunk(self, event: Event) -> None:
        assert event.request_id is not None
        open_ = self._open.get(event.request_id)
        if open_ is None:
            self.orphan_events += 1
            return
        if open_.ttfc_seen or event.duration_s is None:
            return
        open_.ttfc_seen = True
        open_.span.set_attribute(sc.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK, event.duration_s)
        self._ttfc.record(event.duration_s, open_.metric_attrs)

    def _step(self, event: Event) -> None:
        assert event.request_id is not None
        open_ = self._open.get(event.request_id)
        if open_ is None:
            return
        attrs: dict[str, Any] = {}
        if event.attempt is not None:
            attrs[sc.NOVA_ATTEMPT] = event.attempt
        if event.driver:
            attrs[sc.NOVA_DRIVER] = event.driver
        if event.model:
            attrs[sc.GEN_AI_REQUEST_MODEL] = event.model
        if event.error_type:
            attrs[sc.ERROR_TYPE] = event.error_type
        open_.span.add_event(event.name, attrs, timestamp=_ns(event.ts))
        if event.name == "cache.hit":
            open_.span.set_attribute(sc.NOVA_CACHED, True)

    # --- driver call spans ----------------------------------------------------------------------

    def _call_started(self, event: Event, parent: SpanContext | None = None) -> None:
        assert event.request_id is not None
        open_ = self._open.get(event.request_id)
        if parent is None:
            assert open_ is not None
            parent = open_.span.get_span_context()
        attempt = event.attempt or 0
        key = (event.request_id, attempt)
        server = _server(event.data)
        attrs: dict[str, Any] = {
            sc.GEN_AI_PROVIDER_NAME: provider_name(event.driver, event.data),
            sc.NOVA_ATTEMPT: attempt,
            **server,
        }
        if event.driver:
            attrs[sc.NOVA_DRIVER] = event.driver
        if event.model:
            attrs[sc.GEN_AI_REQUEST_MODEL] = event.model
        span = self._tracer.start_span(
            f"attempt {event.driver or '?'} {event.model or '?'}",
            context=trace.set_span_in_context(NonRecordingSpan(parent)),
            kind=SpanKind.INTERNAL,
            attributes=attrs,
            start_time=_ns(event.ts),
        )
        self._calls[key] = (span, self._clock())
        if open_ is not None:
            open_.children.append(key)
            if server and attempt >= open_.server_attempt:  # the latest try is the one that answers
                open_.server_attempt = attempt
                open_.span.set_attributes(server)
                open_.metric_attrs.update(server)
        early_end = self._early_ends.pop(key, None)
        if early_end is not None:
            self._call_finished(early_end[0])

    def _call_finished(self, event: Event) -> None:
        assert event.request_id is not None
        key = (event.request_id, event.attempt or 0)
        found = self._calls.pop(key, None)
        if found is None:
            done = self._done.get(event.request_id)
            if done is not None and done[0] is None:
                self.orphan_events += 1  # its request was dropped, and its start with it
            else:
                self._early_ends[key] = (event, self._clock())  # its start is still on the way
            return
        span = found[0]
        span.set_attributes(_response_attrs(event))
        if event.name == "driver.call_failed":
            self._fail(span, event)
        else:
            span.set_attributes(_usage_attrs(event))
        span.end(end_time=_ns(event.ts))

    # --- bounds ---------------------------------------------------------------------------------

    def _bound(self) -> None:
        """Drop spans of requests that never finished (past the TTL, or the oldest past the cap),
        and give up on events that waited longer than `reorder_s` or past the cap."""
        now = self._clock()
        while len(self._open) > self._max_open:
            self._drop(next(iter(self._open)))
        while len(self._calls) > self._max_open:
            del self._calls[next(iter(self._calls))]
            self.dropped_spans += 1
        while len(self._early) > self._max_open:
            self._give_up(next(iter(self._early)))
        while len(self._early_ends) > self._max_open:
            del self._early_ends[next(iter(self._early_ends))]
            self.orphan_events += 1
        while len(self._done) > self._max_open:
            del self._done[next(iter(self._done))]
        if now - self._last_sweep < self._sweep_every:
            return
        self._last_sweep = now
        for request_id in [r for r, o in self._open.items() if now - o.opened > self._ttl]:
            self._drop(request_id)
        for key in [k for k, (_, opened) in self._calls.items() if now - opened > self._ttl]:
            del self._calls[key]
            self.dropped_spans += 1
        # the waiting tables are in arrival order: the oldest entries are first
        while self._early and now - next(iter(self._early.values()))[0] > self._reorder:
            self._give_up(next(iter(self._early)))
        while self._early_ends and now - next(iter(self._early_ends.values()))[1] > self._reorder:
            del self._early_ends[next(iter(self._early_ends))]
            self.orphan_events += 1
        while self._done and now - next(iter(self._done.values()))[1] > self._reorder:
            del self._done[next(iter(self._done))]

    def _give_up(self, request_id: str) -> None:
        """The request's start never came: its end still counts in the metrics, the rest is lost."""
        for event in self._early.pop(request_id)[1]:
            if event.name in _REQUEST_ENDS:
                self._finished(event)
            else:
                self.orphan_events += 1

    def _drop(self, request_id: str) -> None:
        open_ = self._open.pop(request_id)
        self.dropped_spans += 1
        self._done[request_id] = (None, self._clock())
        for key in open_.children:
            if self._calls.pop(key, None) is not None:
                self.dropped_spans += 1
