"""The metrics collector the event bus runs: counters, latency histograms, tokens and costs per target.

Users find it as `nova.metrics` (with `nova.metrics.snapshot()`, which asks the running system);
this core module never imports the facade, so the event bus actor can run it.

`MetricsCollector` is a bus listener (`collector.attach(bus)`); `snapshot()` returns a frozen,
JSON-able `MetricsSnapshot` keyed by (driver, model), and `render_table()` prints one for
`nova metrics`. Needs no OpenTelemetry: users who run OTel get the same figures through
`nova.otel.OTelListener`, and their backend computes percentiles.

How events count (docs/observability.md has the full list):
- rows are keyed by the configured driver name and the model as it was *requested*, never by the
  model id the service reports (`gpt-4o-mini`, not `gpt-4o-mini-2024-07-18`): everything about a
  request (requests, in-flight, completed, failed, latency, tokens, cost, cache, rate limits) counts
  for the target of its request.started, joined by request id; everything about one try
  (fallback.attempt / next_target, driver.call_*) for that try's target. The models the service
  reported are kept per row in `response_models`, as a label only.
- tokens count upstream work only: a cached answer (data["cached"]) adds no tokens and costs 0.
- a completed, uncached request whose cost_usd is None counts as unpriced, never as free; a row
  without any priced answer has no cost to show.
- cache hit ratio = hits / (hits + misses + coalesced); retries = fallback.attempt with attempt > 1;
  fallbacks = fallback.next_target, counted for the target the call moved to.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from nova.events import Event, EventBus, known
from nova.histogram import HistogramSummary, LogHistogram

__all__ = ["MetricsCollector", "MetricsSnapshot", "TargetMetrics", "render_table"]

TOKEN_KINDS = ("input", "output", "cached_input", "cache_write", "reasoning")
_UNKNOWN = "-"


class TargetMetrics(BaseModel):
    """The figures of one (driver, model); the totals use driver = model = "*"."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    driver: str
    model: str
    requests: int = 0
    completed: int = 0
    failed: int = 0
    in_flight: int = 0
    errors_by_type: dict[str, int] = Field(default_factory=dict)
    latency_s: HistogramSummary = HistogramSummary()
    ttfc_s: HistogramSummary = HistogramSummary()
    tokens: dict[str, int] = Field(default_factory=dict)
    cost_usd: float = 0.0
    priced: int = 0  # completed requests with a known cost (cache hits included: they cost 0)
    unpriced: int = 0  # completed upstream calls whose model has no known price
    response_models: dict[str, int] = Field(default_factory=dict)  # model ids the service reported
    cache_hits: int = 0
    cache_misses: int = 0
    cache_coalesced: int = 0
    cache_hit_ratio: float | None = None
    retries: int = 0
    fallbacks: int = 0
    ratelimit_delayed: int = 0
    ratelimit_rejected: int = 0
    circuit_transitions: dict[str, int] = Field(default_factory=dict)
    circuit_state: str | None = None  # last transition seen: opened / half_open / closed
    upstream_calls: int = 0
    upstream_failures: int = 0


class MetricsSnapshot(BaseModel):
    """Everything the collector knows at one moment; `model_dump_json()` is the `--json` output."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    since: float  # wall-clock start of the window (collector creation or last reset)
    until: float
    targets: tuple[TargetMetrics, ...] = ()
    totals: TargetMetrics = TargetMetrics(driver="*", model="*")
    supervisor_restarts: int = 0
    supervisor_exits: int = 0
    supervisor_escalations: int = 0
    plugin_failures: int = 0
    events: int = 0
    last_seq: int = 0
    lost_requests: int = 0  # started but never finished, evicted from the in-flight table

    def target(self, driver: str, model: str) -> TargetMetrics | None:
        return next((t for t in self.targets if t.driver == driver and t.model == model), None)


class _Target:
    """Mutable counters of one target, guarded by the collector's lock."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.tokens: dict[str, int] = {}
        self.circuit: dict[str, int] = {}
        self.response_models: dict[str, int] = {}
        self.circuit_state: str | None = None
        self.in_flight = 0
        self.cost = 0.0
        self.latency = LogHistogram()
        self.ttfc = LogHistogram()

    def bump(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def merge_into(self, total: _Target) -> None:
        for src, dst in (
            (self.counts, total.counts),
            (self.errors, total.errors),
            (self.tokens, total.tokens),
        ):
            for k, v in src.items():
                dst[k] = dst.get(k, 0) + v
        for src_map, dst_map in (
            (self.circuit, total.circuit),
            (self.response_models, total.response_models),
        ):
            for k, v in src_map.items():
                dst_map[k] = dst_map.get(k, 0) + v
        total.in_flight += self.in_flight
        total.cost += self.cost
        total.latency.merge(self.latency)
        total.ttfc.merge(self.ttfc)

    def freeze(self, driver: str, model: str) -> TargetMetrics:
        c = self.counts.get
        lookups = c("cache_hits", 0) + c("cache_misses", 0) + c("cache_coalesced", 0)
        return TargetMetrics(
            driver=driver,
            model=model,
            requests=c("requests", 0),
            completed=c("completed", 0),
            failed=c("failed", 0),
            in_flight=self.in_flight,
            errors_by_type=dict(self.errors),
            latency_s=self.latency.summary(),
            ttfc_s=self.ttfc.summary(),
            tokens=dict(self.tokens),
            cost_usd=self.cost,
            priced=c("priced", 0),
            unpriced=c("unpriced", 0),
            response_models=dict(self.response_models),
            cache_hits=c("cache_hits", 0),
            cache_misses=c("cache_misses", 0),
            cache_coalesced=c("cache_coalesced", 0),
            cache_hit_ratio=c("cache_hits", 0) / lookups if lookups else None,
            retries=c("retries", 0),
            fallbacks=c("fallbacks", 0),
            ratelimit_delayed=c("ratelimit_delayed", 0),
            ratelimit_rejected=c("ratelimit_rejected", 0),
            circuit_transitions=dict(self.circuit),
            circuit_state=self.circuit_state,
            upstream_calls=c("upstream_calls", 0),
            upstream_failures=c("upstream_failures", 0),
        )


def _known_keys(table: dict[str, str]) -> dict[str, str]:
    known(*table)  # a misspelt event name fails at import
    return table


_SIMPLE_COUNTS = _known_keys(
    {
        "cache.hit": "cache_hits",
        "cache.miss": "cache_misses",
        "cache.coalesced": "cache_coalesced",
        "fallback.next_target": "fallbacks",
        "ratelimit.delayed": "ratelimit_delayed",
        "ratelimit.rejected": "ratelimit_rejected",
        "driver.call_started": "upstream_calls",
        "driver.call_failed": "upstream_failures",
    }
)
# about one try of one target: counted for that target
_TRY_EVENTS = known("fallback.attempt", "fallback.next_target", "driver.call_started")
# about the request: counted for the target of its request.started
_REQUEST_EVENTS = known(
    "request.started",
    "request.completed",
    "request.failed",
    "stream.first_chunk",
    "cache.hit",
    "cache.miss",
    "cache.coalesced",
    "ratelimit.delayed",
    "ratelimit.rejected",
)
_GLOBAL_COUNTS = _known_keys(
    {
        "supervisor.child_restarted": "supervisor_restarts",
        "supervisor.child_exited": "supervisor_exits",
        "supervisor.escalated": "supervisor_escalations",
        "plugin.failed": "plugin_failures",
    }
)


class MetricsCollector:
    """Keeps metrics per (driver, requested model) from bus events. Thread-safe: one lock, held briefly.

    `max_open` bounds the table of started-but-unfinished requests (for in-flight counts); past it
    the oldest entry is dropped and counted in `lost_requests`. The table of driver calls in flight
    (to key a call's end by the model it was asked for) has the same bound.
    """

    def __init__(self, *, max_open: int = 100_000, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._max_open = max_open
        self._targets: dict[tuple[str, str], _Target] = {}
        self._open: dict[str, tuple[str, str]] = {}  # request id -> target of request.started
        self._calls: dict[tuple[str, int], tuple[str, str]] = {}  # (request id, attempt) -> its target
        # Requests whose end came before their start: each process sends its events in batches of
        # its own, so a call cancelled at once can end (fallback stage) before it starts (router).
        self._ended_early: dict[str, None] = {}
        self._globals: dict[str, int] = {}
        self._since = clock()

    def attach(self, bus: EventBus) -> MetricsCollector:
        bus.connect(self.on_event)
        return self

    def detach(self, bus: EventBus) -> None:
        bus.disconnect(self.on_event)

    def on_event(self, sender: str, *, event: Event, **extra: Any) -> None:
        with self._lock:
            self._count_global("events")
            self._globals["last_seq"] = max(self._globals.get("last_seq", 0), event.seq)
            name = event.name
            if name in _GLOBAL_COUNTS:
                self._count_global(_GLOBAL_COUNTS[name])
                return
            key = self._key(event)
            if key is None:  # nothing of it is counted per target
                return
            target = self._targets.get(key)
            if target is None:
                target = self._targets[key] = _Target()
            if name in _SIMPLE_COUNTS:
                target.bump(_SIMPLE_COUNTS[name])
            elif name == "request.started":
                self._started(event, key, target)
            elif name in ("request.completed", "request.failed"):
                self._finished(event, target)
            elif name == "stream.first_chunk":
                if event.duration_s is not None:
                    target.ttfc.record(event.duration_s)
            elif name == "fallback.attempt":
                if (event.attempt or 1) > 1:
                    target.bump("retries")
            else:
                state = name.removeprefix("circuit.")
                target.circuit[state] = target.circuit.get(state, 0) + 1
                target.circuit_state = state

    def _key(self, event: Event) -> tuple[str, str] | None:
        """The row an event counts in, or None when it counts in none."""
        name = event.name
        if name in _TRY_EVENTS:
            key = self._try_target(event)
            if name == "driver.call_started" and event.request_id is not None:
                self._calls[(event.request_id, event.attempt or 0)] = key
                if len(self._calls) > self._max_open:
                    del self._calls[next(iter(self._calls))]
            return key
        if name in ("driver.call_completed", "driver.call_failed"):
            # the end carries the model id the service reported: use the one the call asked for
            call = (event.request_id or "", event.attempt or 0)
            known = self._calls.pop(call, None)
            key = known if known is not None else self._try_target(event)
            return key if name == "driver.call_failed" else None
        if name.startswith("circuit."):
            driver, _, model = str(event.data.get("target") or "").partition("/")
            driver = driver or event.driver or ""
            return (driver, model or event.model or _UNKNOWN) if driver else None
        if name not in _REQUEST_EVENTS:
            return None
        if event.request_id is not None and event.request_id in self._open:
            return self._open[event.request_id]
        return (event.driver or _UNKNOWN, event.model or _UNKNOWN)

    def _try_target(self, event: Event) -> tuple[str, str]:
        """The target of one try; a try without a model of its own uses its request's model."""
        request = self._open.get(event.request_id or "")
        driver = event.driver or (request[0] if request else _UNKNOWN)
        model = event.model or (request[1] if request and request[0] == driver else _UNKNOWN)
        return (driver, model)

    def _count_global(self, name: str) -> None:
        self._globals[name] = self._globals.get(name, 0) + 1

    def _started(self, event: Event, key: tuple[str, str], target: _Target) -> None:
        target.bump("requests")
        if event.request_id is None:
            return
        if event.request_id in self._ended_early:  # it has ended already: never in flight
            del self._ended_early[event.request_id]
            return
        if event.request_id not in self._open:
            target.in_flight += 1
        self._open[event.request_id] = key
        if len(self._open) > self._max_open:
            oldest = next(iter(self._open))
            self._release(oldest)
            self._count_global("lost_requests")

    def _release(self, request_id: str) -> None:
        key = self._open.pop(request_id, None)
        if key is not None and key in self._targets:
            self._targets[key].in_flight -= 1

    def _finished(self, event: Event, target: _Target) -> None:
        if event.request_id is not None:
            if event.request_id in self._open:
                self._release(event.request_id)
            else:
                self._ended_early[event.request_id] = None
                if len(self._ended_early) > self._max_open:
                    del self._ended_early[next(iter(self._ended_early))]
        if event.duration_s is not None:
            target.latency.record(event.duration_s)
        if event.name == "request.failed":
            target.bump("failed")
            error = event.error_type or "_OTHER"
            target.errors[error] = target.errors.get(error, 0) + 1
            return
        target.bump("completed")
        answered_by = event.data.get("response_model")
        if answered_by:
            target.response_models[str(answered_by)] = target.response_models.get(str(answered_by), 0) + 1
        if event.data.get("cached"):
            target.bump("priced")
            return  # no upstream work: no tokens, cost 0
        if event.usage is not None:
            u = event.usage
            for kind, n in zip(
                TOKEN_KINDS,
                (
                    u.input_tokens,
                    u.output_tokens,
                    u.cached_input_tokens,
                    u.cache_write_tokens,
                    u.reasoning_tokens,
                ),
                strict=True,
            ):
                if n:
                    target.tokens[kind] = target.tokens.get(kind, 0) + n
        if event.cost_usd is None:
            target.bump("unpriced")
        else:
            target.bump("priced")
            target.cost += event.cost_usd

    def snapshot(self, *, reset: bool = False) -> MetricsSnapshot:
        """The figures so far; `reset=True` starts a new window (in-flight and circuit state stay)."""
        with self._lock:
            now = self._clock()
            total = _Target()
            targets = []
            for (driver, model), target in sorted(self._targets.items()):
                target.merge_into(total)
                targets.append(target.freeze(driver, model))
            g = self._globals.get
            snap = MetricsSnapshot(
                since=self._since,
                until=now,
                targets=tuple(targets),
                totals=total.freeze("*", "*"),
                supervisor_restarts=g("supervisor_restarts", 0),
                supervisor_exits=g("supervisor_exits", 0),
                supervisor_escalations=g("supervisor_escalations", 0),
                plugin_failures=g("plugin_failures", 0),
                events=g("events", 0),
                last_seq=g("last_seq", 0),
                lost_requests=g("lost_requests", 0),
            )
            if reset:
                self._reset(now)
            return snap

    def _reset(self, now: float) -> None:
        fresh: dict[tuple[str, str], _Target] = {}
        for key, old in self._targets.items():
            if old.in_flight or old.circuit_state:
                new = fresh[key] = _Target()
                new.in_flight, new.circuit_state = old.in_flight, old.circuit_state
        self._targets = fresh
        self._globals = {"last_seq": self._globals.get("last_seq", 0)}
        self._since = now


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.2f}s"


def _cost(t: TargetMetrics) -> str:
    if not t.priced:  # nothing priced: an unknown cost is not $0
        return "-"
    return f"${t.cost_usd:.4f}" + ("*" if t.unpriced else "")


def render_table(snapshot: MetricsSnapshot) -> str:
    """The snapshot as a text table, one row per target and a totals row (for `nova metrics`)."""
    header = (
        "target", "req", "ok", "err", "live", "p50", "p95", "p99", "ttfc p50",
        "tok in", "tok out", "cost", "hit%", "retry", "fallbk", "calls",
    )  # fmt: skip
    rows = []
    for t in (*snapshot.targets, snapshot.totals):
        rows.append(
            (
                "TOTAL" if t.driver == "*" else f"{t.driver}/{t.model}",
                str(t.requests),
                str(t.completed),
                str(t.failed),
                str(t.in_flight),
                _seconds(t.latency_s.p50),
                _seconds(t.latency_s.p95),
                _seconds(t.latency_s.p99),
                _seconds(t.ttfc_s.p50),
                str(t.tokens.get("input", 0)),
                str(t.tokens.get("output", 0)),
                _cost(t),
                "-" if t.cache_hit_ratio is None else f"{t.cache_hit_ratio:.0%}",
                str(t.retries),
                str(t.fallbacks),
                str(t.upstream_calls),
            )
        )
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [line(header), line(tuple("-" * w for w in widths))]
    out += [line(r) for r in rows[:-1]]
    if snapshot.targets:
        out.append(line(tuple("-" * w for w in widths)))
    out.append(line(rows[-1]))
    for t in snapshot.targets:
        if t.errors_by_type:
            errors = ", ".join(f"{k}={v}" for k, v in sorted(t.errors_by_type.items()))
            out.append(f"errors {t.driver}/{t.model}: {errors}")
        reported = sorted(m for m in t.response_models if m != t.model)
        if reported:
            out.append(f"answered as {t.driver}/{t.model}: {', '.join(reported)}")
        if t.circuit_state and t.circuit_state != "closed":
            out.append(f"circuit {t.driver}/{t.model}: {t.circuit_state}")
    out.append(
        f"supervisor restarts: {snapshot.supervisor_restarts},"
        f" escalations: {snapshot.supervisor_escalations};"
        f" plugin failures: {snapshot.plugin_failures}; events: {snapshot.events}"
        + ("; * some requests unpriced" if snapshot.totals.unpriced else "")
    )
    return "\n".join(out)
