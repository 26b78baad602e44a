"""The metrics listener and its histogram: the figures `nova metrics` shows are right."""

from __future__ import annotations

import json
import math
import random
import threading

import pytest

from nova.events import Event, EventBus
from nova.histogram import LogHistogram
from nova.metrics import MetricsCollector, MetricsSnapshot, render_table
from nova.types import Usage

MAX_REL_ERROR = math.sqrt(1.05) - 1 + 1e-9  # geometric middle of a 5 % bucket


def exact(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def test_histogram_percentiles_are_within_the_bucket_error() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(math.log(0.8), 1.0) for _ in range(20_000)]
    h = LogHistogram()
    for v in values:
        h.record(v)
    for q in (0.5, 0.95, 0.99):
        got = h.percentile(q)
        assert got is not None
        assert abs(got - exact(values, q)) / exact(values, q) <= MAX_REL_ERROR
    s = h.summary()
    assert s.count == 20_000 and s.min == min(values) and s.max == max(values)
    assert s.mean == pytest.approx(sum(values) / len(values))


def test_histogram_edges_empty_zero_and_merge() -> None:
    h = LogHistogram()
    assert h.percentile(0.5) is None and h.summary().p99 is None
    h.record(0.0)
    h.record(0.0)
    h.record(2.0)
    assert h.percentile(0.5) == 0.0
    assert h.percentile(1.0) == pytest.approx(2.0, rel=MAX_REL_ERROR)
    other = LogHistogram()
    for _ in range(7):
        other.record(5.0)
    h.merge(other)
    assert h.count == 10 and h.percentile(0.5) == pytest.approx(5.0, rel=MAX_REL_ERROR)
    with pytest.raises(ValueError):
        h.merge(LogHistogram(growth=0.1))


def ev(
    name: str, rid: str | None = "r1", driver: str = "openai", model: str = "gpt-4o-mini", **kw: object
) -> Event:
    return Event(name=name, sender="test", request_id=rid, driver=driver, model=model, **kw)  # type: ignore[arg-type]


def lifecycle(
    bus: EventBus,
    rid: str,
    latency: float,
    *,
    fail: bool = False,
    cost: float | None = 0.001,
    driver: str = "openai",
) -> None:
    def send(name: str, **kw: object) -> None:
        bus.publish(ev(name, rid, driver=driver, **kw))

    send("request.started")
    send("cache.miss")
    send("fallback.attempt", attempt=1)
    send("driver.call_started", attempt=1)
    if fail:
        send("driver.call_failed", attempt=1, error_type="RateLimitError")
        send("request.failed", duration_s=latency, error_type="RateLimitError")
    else:
        send("driver.call_completed", attempt=1)
        usage = Usage(input_tokens=100, output_tokens=20, cached_input_tokens=40, reasoning_tokens=5)
        send("request.completed", duration_s=latency, usage=usage, cost_usd=cost)


def test_collector_counts_a_mixed_workload() -> None:
    bus = EventBus()
    collector = MetricsCollector().attach(bus)
    for i in range(100):
        lifecycle(bus, f"ok{i}", latency=(i + 1) / 100)
    for i in range(3):
        lifecycle(bus, f"bad{i}", latency=2.0, fail=True)
    lifecycle(bus, "free", latency=0.5, cost=None)
    bus.publish(ev("request.started", "hit"))
    bus.publish(ev("cache.hit", "hit"))
    bus.publish(
        ev(
            "request.completed",
            "hit",
            duration_s=0.001,
            usage=Usage(input_tokens=9),
            cost_usd=0.0,
            data={"cached": True},
        )
    )
    bus.publish(ev("request.started", "live"))
    bus.publish(ev("stream.first_chunk", "live", duration_s=0.25))
    bus.publish(ev("fallback.attempt", "live", attempt=2))
    bus.publish(ev("fallback.next_target", "live", error_type="TimeoutError", data={"target": "anthropic"}))
    bus.publish(ev("ratelimit.delayed", "live", data={"wait_s": 0.1}))
    bus.publish(ev("circuit.opened", None, data={"target": "openai/gpt-4o-mini"}))
    bus.publish(
        Event(name="supervisor.child_restarted", sender="supervisor:drivers", data={"child": "openai"})
    )

    snap = collector.snapshot()
    t = snap.target("openai", "gpt-4o-mini")
    assert t is not None
    assert (t.requests, t.completed, t.failed, t.in_flight) == (106, 102, 3, 1)
    assert t.errors_by_type == {"RateLimitError": 3}
    assert t.tokens == {
        "input": 10_100,
        "output": 2_020,
        "cached_input": 4_040,
        "reasoning": 505,
    }  # not the hit
    assert t.cost_usd == pytest.approx(0.1) and t.unpriced == 1
    assert (t.cache_hits, t.cache_misses) == (1, 104) and t.cache_hit_ratio == pytest.approx(1 / 105)
    assert (t.retries, t.fallbacks, t.ratelimit_delayed) == (1, 1, 1)
    assert t.circuit_state == "opened" and t.circuit_transitions == {"opened": 1}
    assert (t.upstream_calls, t.upstream_failures) == (104, 3)
    assert t.ttfc_s.count == 1 and t.ttfc_s.p50 == pytest.approx(0.25, rel=MAX_REL_ERROR)
    ok = [(i + 1) / 100 for i in range(100)]
    latencies = ok + [2.0] * 3 + [0.5, 0.001]
    for q, got in ((0.5, t.latency_s.p50), (0.95, t.latency_s.p95), (0.99, t.latency_s.p99)):
        assert got == pytest.approx(exact(latencies, q), rel=MAX_REL_ERROR)
    assert snap.supervisor_restarts == 1
    assert snap.totals.requests == 106 and snap.totals.in_flight == 1
    assert snap.events == snap.last_seq == bus.publish(ev("cache.miss")).seq - 1


def test_in_flight_follows_the_request_id_across_a_fallback() -> None:
    bus = EventBus()
    collector = MetricsCollector().attach(bus)
    bus.publish(ev("request.started", "r1"))
    assert collector.snapshot().totals.in_flight == 1
    bus.publish(
        ev("request.completed", "r1", driver="openai", model="claude-x", duration_s=1.0, cost_usd=0.01)
    )
    snap = collector.snapshot()
    t = snap.target("openai", "gpt-4o-mini")
    assert t is not None and (t.requests, t.in_flight, t.completed, t.cost_usd) == (1, 0, 1, 0.01)
    assert snap.totals.in_flight == 0


def test_a_request_whose_end_arrives_before_its_start_is_not_left_in_flight() -> None:
    bus = EventBus()  # each process batches its own events: a call cancelled at once ends first
    collector = MetricsCollector().attach(bus)
    bus.publish(ev("request.failed", "r1", duration_s=0.01, error_type="CancelledError"))
    bus.publish(ev("request.started", "r1"))
    bus.publish(ev("request.started", "r2"))
    t = collector.snapshot().target("openai", "gpt-4o-mini")
    assert t is not None and (t.requests, t.failed, t.in_flight) == (2, 1, 1)


def real_call(bus: EventBus, rid: str, *, answer: str = "gpt-4o-mini-2024-07-18") -> None:
    """The events of one call as the actors send them: ends carry the model id the service reported."""
    bus.publish(ev("request.started", rid))
    bus.publish(ev("fallback.attempt", rid, attempt=1))
    bus.publish(ev("driver.call_started", rid, attempt=1))
    bus.publish(ev("driver.call_completed", rid, model=answer, attempt=1, duration_s=0.2))
    bus.publish(
        ev(
            "request.completed",
            rid,
            model=answer,
            duration_s=0.25,
            usage=Usage(input_tokens=10, output_tokens=2),
            cost_usd=0.001,
            data={"response_model": answer},
        )
    )


def test_rows_are_keyed_by_the_requested_model_not_the_one_the_service_reports() -> None:
    bus = EventBus()
    collector = MetricsCollector().attach(bus)
    for i in range(6):
        real_call(bus, f"r{i}")
    snap = collector.snapshot()
    assert [(t.driver, t.model) for t in snap.targets] == [("openai", "gpt-4o-mini")]
    t = snap.targets[0]
    assert (t.requests, t.completed, t.in_flight, t.upstream_calls) == (6, 6, 0, 6)
    assert t.response_models == {"gpt-4o-mini-2024-07-18": 6}  # a label, not a row
    text = render_table(snap)
    row = next(line for line in text.splitlines() if line.startswith("openai/"))
    assert row.split()[:3] == ["openai/gpt-4o-mini", "6", "6"]
    assert "answered as openai/gpt-4o-mini: gpt-4o-mini-2024-07-18" in text


def test_a_fallback_counts_the_request_once_and_each_try_for_its_own_target() -> None:
    bus = EventBus()
    collector = MetricsCollector().attach(bus)
    bus.publish(ev("request.started", "r1"))
    bus.publish(ev("fallback.attempt", "r1", attempt=1))
    bus.publish(ev("driver.call_started", "r1", attempt=1))
    bus.publish(ev("driver.call_failed", "r1", model=None, attempt=1, error_type="ServerError"))  # type: ignore[arg-type]
    bus.publish(
        Event(
            name="circuit.opened", sender="fallback", driver="openai", data={"target": "openai/gpt-4o-mini"}
        )
    )
    bus.publish(ev("fallback.next_target", "r1", driver="anthropic", model="claude-x", attempt=2))
    bus.publish(ev("fallback.attempt", "r1", driver="anthropic", model="claude-x", attempt=2))
    bus.publish(ev("driver.call_started", "r1", driver="anthropic", model="claude-x", attempt=2))
    bus.publish(ev("driver.call_completed", "r1", driver="anthropic", model="claude-x-2025", attempt=2))
    # the provider names the requested driver and the model id the service reported
    bus.publish(
        ev("request.completed", "r1", model="claude-x-2025", duration_s=1.0, cost_usd=0.002,
           data={"response_model": "claude-x-2025", "attempts": 2})
    )  # fmt: skip
    snap = collector.snapshot()
    assert sorted((t.driver, t.model) for t in snap.targets) == [
        ("anthropic", "claude-x"),
        ("openai", "gpt-4o-mini"),
    ]
    asked, fell_to = snap.target("openai", "gpt-4o-mini"), snap.target("anthropic", "claude-x")
    assert asked is not None and fell_to is not None
    assert (asked.requests, asked.completed, asked.cost_usd) == (1, 1, 0.002)
    assert (asked.upstream_calls, asked.upstream_failures, asked.circuit_state) == (1, 1, "opened")
    assert asked.response_models == {"claude-x-2025": 1}
    assert (fell_to.requests, fell_to.upstream_calls, fell_to.retries, fell_to.fallbacks) == (0, 1, 1, 1)
    text = render_table(snap)
    assert "openai/-" not in text and "claude-x-2025  " not in text


def test_an_unknown_cost_is_shown_as_unknown_not_as_zero() -> None:
    bus = EventBus()
    collector = MetricsCollector().attach(bus)
    lifecycle(bus, "bad", latency=1.0, fail=True)
    lifecycle(bus, "free", latency=0.5, cost=None, driver="ollama")
    lines = render_table(collector.snapshot()).splitlines()
    for prefix in ("openai/gpt-4o-mini", "ollama/gpt-4o-mini", "TOTAL"):
        row = next(line for line in lines if line.startswith(prefix))
        assert "$" not in row and row.split()[11] == "-", row


def test_the_in_flight_table_is_bounded() -> None:
    bus = EventBus()
    collector = MetricsCollector(max_open=10).attach(bus)
    for i in range(25):
        bus.publish(ev("request.started", f"r{i}"))
    snap = collector.snapshot()
    assert snap.totals.in_flight == 10 and snap.lost_requests == 15


def test_counts_are_exact_under_concurrent_events() -> None:
    bus = EventBus()
    collector = MetricsCollector().attach(bus)

    def work(n: int) -> None:
        for i in range(500):
            lifecycle(bus, f"t{n}-{i}", latency=0.1, fail=i % 10 == 0)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    totals = collector.snapshot().totals
    assert (totals.requests, totals.completed, totals.failed, totals.in_flight) == (4000, 3600, 400, 0)
    assert totals.latency_s.count == 4000 and totals.tokens["input"] == 360_000


def test_snapshot_is_json_and_reset_starts_a_new_window() -> None:
    clock = iter(float(t) for t in range(100, 200))
    bus = EventBus()
    collector = MetricsCollector(clock=lambda: next(clock)).attach(bus)
    lifecycle(bus, "a", latency=0.3)
    bus.publish(ev("request.started", "open"))
    bus.publish(ev("circuit.half_open", None))
    snap = collector.snapshot(reset=True)
    assert MetricsSnapshot.model_validate_json(snap.model_dump_json()) == snap
    assert json.loads(snap.model_dump_json())["totals"]["requests"] == 2
    after = collector.snapshot()
    assert after.since == snap.until and after.totals.requests == 0
    t = after.target("openai", "gpt-4o-mini")
    assert t is not None and t.in_flight == 1 and t.circuit_state == "half_open"


def test_render_table_shows_each_target_the_totals_and_the_errors() -> None:
    bus = EventBus()
    collector = MetricsCollector().attach(bus)
    lifecycle(bus, "a", latency=0.25)
    lifecycle(bus, "b", latency=3.5, fail=True)
    lifecycle(bus, "c", latency=0.2, cost=None)
    text = render_table(collector.snapshot())
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["target", "req", "ok", "err"]
    row = next(line for line in lines if line.startswith("openai/gpt-4o-mini"))
    assert row.split()[1:5] == ["3", "2", "1", "0"]
    assert "$0.0010*" in row  # one request unpriced: the cost is marked, not shown as complete
    assert any(line.startswith("TOTAL") for line in lines)
    assert "errors openai/gpt-4o-mini: RateLimitError=1" in text
    assert "some requests unpriced" in text
    assert render_table(MetricsCollector().snapshot()).splitlines()[-2].startswith("TOTAL")
