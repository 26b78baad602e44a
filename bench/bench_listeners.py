"""Benchmark: the cost of the event bus and its listeners per event and per request lifecycle.

One lifecycle is the six events of a plain uncached call (request.started, cache.miss,
fallback.attempt, driver.call_started, driver.call_completed, request.completed), published in
one thread as the EventBus actor does. Variants: no listener, MetricsCollector, OTelListener on the
real SDK (BatchSpanProcessor to an exporter that discards, a MeterProvider with a reader), both,
and OTelListener on the API's no-op providers. Also the provider-side cost_usd() per call.

    PYTHONPATH=. .venv/bin/python bench/bench_listeners.py [--lifecycles 20000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import NoOpTracerProvider

from nova.costs import cost_usd
from nova.events import Event, EventBus
from nova.metrics import MetricsCollector
from nova.otel import OTelListener
from nova.types import Usage

USAGE = Usage(input_tokens=120, output_tokens=30, cached_input_tokens=100)


class Discard(SpanExporter):
    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


def lifecycle(rid: str) -> list[Event]:
    base: dict[str, Any] = {"sender": "bench", "request_id": rid, "driver": "openai", "model": "gpt-4o-mini"}
    return [
        Event(
            name="request.started", data={"operation": "chat", "temperature": 0.2, "max_tokens": 50}, **base
        ),
        Event(name="cache.miss", **base),
        Event(name="fallback.attempt", attempt=1, **base),
        Event(name="driver.call_started", attempt=1, **base),
        Event(name="driver.call_completed", attempt=1, duration_s=0.5, usage=USAGE, **base),
        Event(
            name="request.completed",
            duration_s=0.5,
            usage=USAGE,
            cost_usd=0.0001,
            data={"response_model": "gpt-4o-mini-2024-07-18", "finish_reasons": ["stop"]},
            **base,
        ),
    ]


def run(setup: Callable[[EventBus], Callable[[], None]], lifecycles: int, repeats: int) -> float:
    """Best seconds per lifecycle over `repeats` runs."""
    events = [lifecycle(f"r{i}") for i in range(lifecycles)]
    best = float("inf")
    for _ in range(repeats):
        bus = EventBus()
        teardown = setup(bus)
        start = time.perf_counter()
        for batch in events:
            for event in batch:
                bus.publish(event)
        best = min(best, (time.perf_counter() - start) / lifecycles)
        teardown()
    return best


def no_listener(bus: EventBus) -> Callable[[], None]:
    return lambda: None


def with_metrics(bus: EventBus) -> Callable[[], None]:
    MetricsCollector().attach(bus)
    return lambda: None


def _sdk_otel(bus: EventBus) -> Callable[[], None]:
    tp = TracerProvider()
    tp.add_span_processor(BatchSpanProcessor(Discard()))
    mp = MeterProvider(metric_readers=[InMemoryMetricReader()])
    OTelListener(tracer_provider=tp, meter_provider=mp, capture_content=False).attach(bus)

    def teardown() -> None:
        tp.shutdown()
        mp.shutdown()

    return teardown


def with_otel_noop(bus: EventBus) -> Callable[[], None]:
    OTelListener(tracer_provider=NoOpTracerProvider(), meter_provider=NoOpMeterProvider()).attach(bus)
    return lambda: None


def with_both(bus: EventBus) -> Callable[[], None]:
    MetricsCollector().attach(bus)
    return _sdk_otel(bus)


def bench_cost(calls: int) -> float:
    cost_usd("openai", "gpt-4o-mini", USAGE)  # first call loads the price data
    start = time.perf_counter()
    for _ in range(calls):
        cost_usd("openai", "gpt-4o-mini", USAGE)
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--lifecycles", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    variants = [
        ("bus, no listener", no_listener),
        ("bus + MetricsCollector", with_metrics),
        ("bus + OTelListener (no-op API)", with_otel_noop),
        ("bus + OTelListener (SDK, batch)", _sdk_otel),
        ("bus + metrics + OTel (SDK)", with_both),
    ]
    where = f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} cpus"
    print(f"{where}, {args.lifecycles} lifecycles x 6 events, best of {args.repeats}")
    print(f"{'variant':34} {'events/s':>10} {'us/event':>9} {'us/lifecycle':>13} {'+us/lifecycle':>14}")
    base = None
    for name, setup in variants:
        per = run(setup, args.lifecycles, args.repeats)
        base = per if base is None else base
        us = per * 1e6
        print(f"{name:34} {6 / per:>10,.0f} {us / 6:>9.1f} {us:>13.1f} {us - base * 1e6:>14.1f}")
    cost = bench_cost(2_000) * 1e6
    print(f"\ncost_usd() with genai-prices: {cost:.1f} us per call (provider side, once per request)")


if __name__ == "__main__":
    main()
