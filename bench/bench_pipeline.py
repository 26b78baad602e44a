"""Benchmark: latency added by the OpenAI driver and by the whole Nova pipeline, and throughput at c=50.

Side by side in one run, against the fake upstream (no delay): (a) a direct httpx AsyncClient over
httpx_aiohttp's AiohttpTransport, (b) `OpenAIDriver` alone, (c) Nova through the actor system —
`Bridge.call` from threads and `Bridge.acall` from asyncio tasks — and (d) LiteLLM's Router when it
is installed. Variants run interleaved in rounds so that drift of this noisy 2-core machine hits
them alike. Added latency = variant p50 - direct p50.

(e) is the same pipeline with the memory cache and rate limits on, a second `nova run` beside
the first: a limit per driver far above what the run can reach (every call passes the limiter's
checks and is never held), and a new prompt on every call, so that every call is a cache miss
that goes upstream and is stored (the whole cache stage: key, lookup, coalescing, store). Per-call
`cache="refresh"` would skip the lookup, and a repeated prompt would measure hits (see
bench_cache). Building the new request costs the caller ~5 µs more than reusing one. The event
bus's metrics afterwards confirm: no cache hit, no call delayed or rejected by the limiter.

    PYTHONPATH=. .venv/bin/python -m bench.bench_pipeline [--rounds 3] [--calls 300] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
from collections.abc import Awaitable, Callable
from typing import Any

from bench import MESSAGES, Load, bench_config, chat_request, report, run_async, run_threads, summarize
from bench.fake_upstream import FakeUpstream, raise_nofile
from bench.floor import thespian_floor
from bench.host import CpuMeter, nova_system, process_names, session_pids

__all__ = ["LITELLM_NOTES", "measure", "render"]

# LiteLLM's Router against a local upstream, measured earlier on this kind of machine; shown when
# LiteLLM is not installed here.
LITELLM_NOTES = {"per_call_ms": 3.7, "rate_c50": 270}
BODY = {"model": "bench", "messages": MESSAGES, "max_tokens": 16}
BUDGET_S = 30.0  # per measurement
# Far above anything this run reaches: the limiter checks every call and never holds one.
GENEROUS_LIMITS = {
    "enabled": True,
    "default": {
        "requests_per_minute": 10_000_000,
        "tokens_per_minute": 10_000_000_000,
        "max_concurrent": 100_000,
    },
}


async def direct_client(base_url: str) -> tuple[Callable[[], Awaitable[Any]], Callable[[], Awaitable[None]]]:
    import httpx
    from httpx_aiohttp import AiohttpTransport

    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    client = httpx.AsyncClient(
        transport=AiohttpTransport(limits=limits, trust_env=False),
        base_url=base_url,
        headers={"authorization": "Bearer sk-test-bench"},
    )

    async def call() -> Any:
        reply = await client.post("/chat/completions", json=BODY)
        reply.raise_for_status()
        return reply.json()

    return call, client.aclose


async def driver_client(base_url: str) -> tuple[Callable[[], Awaitable[Any]], Callable[[], Awaitable[None]]]:
    from nova.drivers.openai import OpenAIDriver

    driver = OpenAIDriver(api_key="sk-test-bench", base_url=base_url)
    request = chat_request()
    return (lambda: driver.chat(request)), driver.aclose


async def litellm_client(base_url: str) -> tuple[Callable[[], Awaitable[Any]], Callable[[], Awaitable[None]]]:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline: no fetch of its price list
    from litellm import Router  # type: ignore[import-not-found]  # optional: only when installed

    router = Router(
        model_list=[
            {
                "model_name": "bench",
                "litellm_params": {"model": "openai/bench", "api_base": base_url, "api_key": "sk-test-bench"},
            }
        ]
    )

    async def close() -> None:
        return None

    return (lambda: router.acompletion(model="bench", messages=MESSAGES, max_tokens=16)), close


def litellm_available() -> bool:
    try:
        import litellm  # noqa: F401
    except ImportError:
        return False
    return True


async def measure(admin_port: int, rounds: int, calls: int, rate_calls: int) -> dict[str, Any]:
    raise_nofile()
    results: dict[str, Any] = {"rounds": rounds, "calls_per_round": calls, "litellm": None}
    with thespian_floor(admin_port + 1) as floor, FakeUpstream() as upstream:
        base_url = upstream.base_url()
        clients: dict[str, tuple[Callable[[], Awaitable[Any]], Callable[[], Awaitable[None]]]] = {
            "direct": await direct_client(base_url),
            "driver": await driver_client(base_url),
        }
        if litellm_available():
            clients["litellm"] = await litellm_client(base_url)
        config = bench_config(admin_port, base_url)
        config_cl = bench_config(
            admin_port + 2, base_url, cache={"enabled": True, "backend": "memory"}, ratelimit=GENEROUS_LIMITS
        )
        try:
            with (
                nova_system(config) as (system, bridge, sid),
                nova_system(config_cl) as (system_cl, bridge_cl, sid_cl),
            ):
                from nova.messages import ChatCall, GetMetrics

                request = chat_request()
                prompts = itertools.count()

                def fresh() -> ChatCall:  # a prompt never sent before: a cache miss
                    return ChatCall(request=chat_request(f"ping {next(prompts)}"))

                def nova_sync() -> Any:
                    return bridge.call(ChatCall(request=request), 30)

                async def nova_async() -> Any:
                    return await bridge.acall(ChatCall(request=request), 30)

                def nova_sync_cl() -> Any:
                    if bridge_cl.call(fresh(), 30).cached:
                        raise AssertionError("a new prompt was served from the cache")

                async def nova_async_cl() -> Any:
                    if (await bridge_cl.acall(fresh(), 30)).cached:
                        raise AssertionError("a new prompt was served from the cache")

                async def run(name: str, concurrency: int, total: int) -> Load:
                    threaded = {"nova_sync": nova_sync, "nova_sync_cl": nova_sync_cl}
                    if name in threaded or name.startswith("floor"):
                        call = threaded[name] if name in threaded else floor[int(name[-1])]
                        return await asyncio.to_thread(run_threads, call, concurrency, total, BUDGET_S)
                    tasks = {"nova_async": nova_async, "nova_async_cl": nova_async_cl}
                    call = tasks[name] if name in tasks else clients[name][0]
                    return await run_async(call, concurrency, total, BUDGET_S)

                names = [*clients, "floor2", "floor4", "floor6", "nova_sync", "nova_async"]
                names += ["nova_sync_cl", "nova_async_cl"]
                for name in names:  # warm up connections, pools and imports
                    await run(name, 4, 100)
                latency: dict[str, Load] = {}
                for _ in range(rounds):
                    for concurrency in (1, 10):
                        for name in names:
                            load = await run(name, concurrency, calls)
                            merged = latency.setdefault(f"{name}@{concurrency}", Load())
                            merged.latencies += load.latencies
                            merged.errors += load.errors
                            merged.wall_s += load.wall_s
                            merged.first_error = merged.first_error or load.first_error
                results["latency"] = {key: summarize(load) for key, load in latency.items()}
                results["throughput_c50"] = {
                    name: summarize(await run(name, 50, rate_calls)) for name in names
                }
                # Where the CPU goes: CPU time per call of each Nova process, this process (the
                # caller, with its bridge) and the fake upstream.
                results["cpu_per_call"] = {}
                for label, name, concurrency, total, (nova, nova_sid) in (
                    ("c=1, Bridge.call", "nova_sync", 1, calls, (system, sid)),
                    ("c=50, Bridge.acall", "nova_async", 50, rate_calls, (system, sid)),
                    ("c=1, Bridge.call, cache+limits", "nova_sync_cl", 1, calls, (system_cl, sid_cl)),
                    (
                        "c=50, Bridge.acall, cache+limits",
                        "nova_async_cl",
                        50,
                        rate_calls,
                        (system_cl, sid_cl),
                    ),
                ):
                    meter = CpuMeter({**_pids(nova, nova_sid), upstream.pid: "fake upstream"})
                    meter.start()
                    load = await run(name, concurrency, total)
                    results["cpu_per_call"][label] = meter.stop(len(load.latencies))
                reply = system_cl.ask(system_cl.event_bus, GetMetrics(), 5)
                totals = reply.snapshot["totals"] if reply is not None else {}
                results["cache_limits_check"] = {
                    key: totals.get(key)
                    for key in ("cache_hits", "cache_misses", "ratelimit_delayed", "ratelimit_rejected")
                }
        finally:
            for _call, close in clients.values():
                await close()
    return results


def _pids(system: Any, sid: int | None) -> dict[int, str]:
    """pid -> name of a Nova's processes (its actors by name), and of this process, the caller."""
    actors = {pid: "driver" if name == "bench" else name for pid, name in process_names(system).items()}
    session = session_pids(sid) if sid is not None else []
    others = {pid: "thespian (admin/logger)" for pid in session if pid not in actors}
    return {**actors, **others, os.getpid(): "caller (this process)"}


def render(results: dict[str, Any]) -> str:
    """The markdown tables of one run."""
    labels = {
        "direct": "(a) httpx AsyncClient + AiohttpTransport, direct",
        "driver": "(b) OpenAIDriver alone",
        "floor2": "Thespian floor, bare actors, no HTTP: 2 messages (caller-driver-caller)",
        "floor4": "Thespian floor: 4 messages (caller-router-driver-router-caller)",
        "floor6": "Thespian floor: 6 messages, the pipeline's path",
        "nova_sync": "(c) Nova pipeline, `Bridge.call` (threads)",
        "nova_async": "(c) Nova pipeline, `Bridge.acall` (asyncio)",
        "litellm": "(d) LiteLLM Router",
        "nova_sync_cl": "(e) Nova + memory cache (misses) + rate limits, `Bridge.call`",
        "nova_async_cl": "(e) Nova + memory cache (misses) + rate limits, `Bridge.acall`",
    }
    lat = results["latency"]
    lines = [
        "| path | c | p50 ms | p99 ms | added p50 ms | calls | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for concurrency in (1, 10):
        base = lat[f"direct@{concurrency}"]["p50_ms"]
        for name, label in labels.items():
            row = lat.get(f"{name}@{concurrency}")
            if row is None:
                continue
            added = "—" if name == "direct" or name.startswith("floor") else f"{row['p50_ms'] - base:+.2f}"
            lines.append(
                f"| {label} | {concurrency} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {added} | "
                f"{row['calls']} | {row['errors']} |"
            )
    if "litellm@1" not in lat:
        notes = LITELLM_NOTES
        lines.append(
            f"| (d) LiteLLM Router — not installed; earlier figure | 1 | — | — | "
            f"~{notes['per_call_ms']} per call | — | — |"
        )
    lines += [
        "",
        "| path | c | calls/s | vs direct | p50 ms | p99 ms | calls | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    thr = results["throughput_c50"]
    for name, label in labels.items():
        row = thr.get(name)
        if row is None:
            continue
        ratio = row["rate"] / thr["direct"]["rate"] if thr["direct"]["rate"] else float("nan")
        lines.append(
            f"| {label} | 50 | {row['rate']:.0f} | {ratio:.2f}x | {row['p50_ms']:.2f} | "
            f"{row['p99_ms']:.2f} | {row['calls']} | {row['errors']} |"
        )
    if "litellm" not in thr:
        lines.append(
            f"| (d) LiteLLM Router — not installed; earlier figure | 50 | ~{LITELLM_NOTES['rate_c50']} "
            "| — | — | — | — | — |"
        )
    if "nova_sync_cl@1" in lat:
        lines += ["", "Cache (misses) + rate limits on vs the default pipeline (same run):", ""]
        for plain, on, how in (
            ("nova_sync", "nova_sync_cl", "`Bridge.call`"),
            ("nova_async", "nova_async_cl", "`Bridge.acall`"),
        ):
            base = lat["direct@1"]["p50_ms"]
            added, added_on = lat[f"{plain}@1"]["p50_ms"] - base, lat[f"{on}@1"]["p50_ms"] - base
            rate, rate_on = thr[plain]["rate"], thr[on]["rate"]
            lines.append(
                f"- {how}: added p50 at c=1 {added:+.2f} ms → {added_on:+.2f} ms "
                f"({added_on - added:+.2f} ms); calls/s at c=50 {rate:.0f} → {rate_on:.0f} "
                f"({rate_on / rate if rate else float('nan'):.2f}x)."
            )
        check = results.get("cache_limits_check")
        if check:
            lines.append(
                f"- Metrics of that system afterwards: {check['cache_misses']} cache misses, "
                f"{check['cache_hits']} hits; {check['ratelimit_delayed']} calls delayed and "
                f"{check['ratelimit_rejected']} rejected by the limiter."
            )
    cpu = results.get("cpu_per_call", {})
    if cpu:
        procs = list(dict.fromkeys(p for per in cpu.values() for p in per))
        lines += [
            "",
            "CPU time per call, ms, by process (Nova's actors by name; the caller runs the bridge):",
            "",
            "| load | " + " | ".join(procs) + " | Nova total |",
            "|---|" + "---:|" * (len(procs) + 1),
        ]
        for label, per in cpu.items():
            nova = sum(v for k, v in per.items() if k not in ("caller (this process)", "fake upstream"))
            lines.append(
                f"| {label} | " + " | ".join(f"{per.get(p, 0):.2f}" for p in procs) + f" | {nova:.2f} |"
            )
    errors = [f"{k}: {v['first_error']}" for k, v in {**lat, **thr}.items() if v.get("first_error")]
    if errors:
        lines += ["", "First errors: " + "; ".join(errors)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--admin-port", type=int, default=19810)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=300, help="calls per variant, concurrency and round")
    parser.add_argument("--rate-calls", type=int, default=3000, help="calls for the c=50 throughput")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    results = asyncio.run(measure(args.admin_port, args.rounds, args.calls, args.rate_calls))
    report(results, render, args.json)


if __name__ == "__main__":
    main()
