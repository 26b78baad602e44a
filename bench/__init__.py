"""Shared pieces of the benchmark harness: load loops, latency summaries, the benchmark config.

Every benchmark bounds its own run time (a budget per measurement, and at most MAX_ERRORS failed
calls) and stops what it started (`bench.host.nova_system`). Benchmarks use admin ports 19800-19899.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MAX_ERRORS",
    "MESSAGES",
    "Load",
    "bench_config",
    "chat_request",
    "percentile",
    "run_async",
    "run_threads",
    "summarize",
]

MESSAGES = [{"role": "user", "content": "ping"}]  # as JSON, for the direct HTTP calls
MAX_ERRORS = 3  # a measurement stops after this many failed calls: a broken variant must not eat the run


@dataclass
class Load:
    """The outcome of one measurement: per-call latencies (seconds), wall time, errors."""

    latencies: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    errors: int = 0
    first_error: str = ""

    @property
    def calls(self) -> int:
        return len(self.latencies) + self.errors

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.wall_s if self.wall_s else 0.0

    def failed(self, exc: BaseException) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = f"{type(exc).__name__}: {exc}"[:200]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summarize(load: Load) -> dict[str, Any]:
    """Milliseconds: p50, p99, mean; plus calls, errors, calls/s."""
    lat = load.latencies
    return {
        "p50_ms": percentile(lat, 50) * 1e3,
        "p99_ms": percentile(lat, 99) * 1e3,
        "mean_ms": statistics.fmean(lat) * 1e3 if lat else float("nan"),
        "calls": load.calls,
        "errors": load.errors,
        "first_error": load.first_error,
        "rate": load.rate,
        "wall_s": load.wall_s,
    }


async def run_async(
    call: Callable[[], Awaitable[Any]], concurrency: int, total: int, budget_s: float
) -> Load:
    """`total` calls from `concurrency` tasks in a closed loop; stops early when the budget is spent."""
    load = Load()
    remaining = [total]
    deadline = time.monotonic() + budget_s

    async def worker() -> None:
        while remaining[0] > 0 and time.monotonic() < deadline and load.errors < MAX_ERRORS:
            remaining[0] -= 1
            start = time.perf_counter()
            try:
                await call()
            except Exception as exc:
                load.failed(exc)
                continue
            load.latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    load.wall_s = time.perf_counter() - start
    return load


def run_threads(call: Callable[[], Any], concurrency: int, total: int, budget_s: float) -> Load:
    """`total` calls from `concurrency` threads in a closed loop; stops early when the budget is spent."""
    load = Load()
    lock = threading.Lock()
    remaining = [total]
    deadline = time.monotonic() + budget_s

    def worker() -> None:
        while time.monotonic() < deadline and load.errors < MAX_ERRORS:
            with lock:
                if remaining[0] <= 0:
                    return
                remaining[0] -= 1
            start = time.perf_counter()
            try:
                call()
            except Exception as exc:
                with lock:
                    load.failed(exc)
                continue
            load.latencies.append(time.perf_counter() - start)  # list.append is atomic

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(budget_s + 30)
    load.wall_s = time.perf_counter() - start
    return load


def chat_request(content: str = "ping") -> Any:
    """The benchmarks' ChatRequest: one short user message to model "bench", 16 tokens at most."""
    from nova.types import ChatRequest, Message

    return ChatRequest(model="bench", messages=(Message(role="user", content=content),), max_tokens=16)


def bench_config(
    admin_port: int,
    base_url: str,
    *,
    cache: dict[str, Any] | None = None,
    max_concurrency: int = 1000,
    state_dir: str | None = None,
    telemetry: dict[str, Any] | None = None,
    ratelimit: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Raw config (as parsed from TOML): one OpenAI driver "bench" on the fake upstream, the default."""
    raw: dict[str, Any] = {
        "llm": {"driver": "bench", "timeout_s": 60},
        "drivers": {
            "bench": {
                "kind": "openai",
                "base_url": base_url,
                "api_key": "sk-test-bench",
                "model": "bench",
                "max_concurrency": max_concurrency,
                "max_connections": max(max_concurrency, 100),
            }
        },
        "system": {
            "admin_port": admin_port,
            "log_level": "WARNING",
            "state_dir": state_dir or tempfile.mkdtemp(prefix="nova-bench-"),
        },
        "cache": cache or {"enabled": False},
        "telemetry": telemetry or {"metrics": True, "otel": False},
    }
    if ratelimit is not None:
        raw["ratelimit"] = ratelimit
    return raw


def report(results: dict[str, Any], render: Callable[[dict[str, Any]], str], json_path: str | None) -> None:
    """Print a benchmark's tables and, when asked, write its figures to `json_path`."""
    print(render(results))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=1)
