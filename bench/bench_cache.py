"""Benchmark: cache-hit vs miss latency through the Nova pipeline, and coalescing of identical calls.

Nova runs with the memory cache (`[cache] enabled = true, backend = "memory"`). Latency (c=1,
`Bridge.call`): a miss is a call with a prompt never seen before (it goes upstream and is stored);
a hit repeats one stored prompt. A direct httpx call to the same upstream is measured alongside.
Coalescing: 100 identical calls at once (asyncio tasks, `Bridge.acall`) against an upstream that
answers after 0.5 s; the fake upstream counts the requests it received (the cache must send 1).

    PYTHONPATH=. .venv/bin/python -m bench.bench_cache [--calls 300] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

from bench import Load, bench_config, chat_request, report, run_async, run_threads, summarize
from bench.bench_pipeline import direct_client
from bench.fake_upstream import FakeUpstream, raise_nofile
from bench.host import nova_system

__all__ = ["measure", "render"]

BUDGET_S = 30.0


def latency(bridge: Any, base_url: str, calls: int, rounds: int) -> dict[str, Any]:
    from nova.messages import ChatCall

    stored = chat_request()
    bridge.call(ChatCall(request=stored), 30)  # now it is in the cache

    def hit() -> Any:
        response = bridge.call(ChatCall(request=stored), 30)
        if not response.cached:
            raise AssertionError("a repeated call was not served from the cache")

    def miss() -> Any:
        response = bridge.call(ChatCall(request=chat_request(f"ping {uuid.uuid4().hex}")), 30)
        if response.cached:
            raise AssertionError("a new prompt was served from the cache")

    async def direct_run() -> Load:
        call, close = await direct_client(base_url)
        try:
            await run_async(call, 1, 50, BUDGET_S)
            return await run_async(call, 1, calls, BUDGET_S)
        finally:
            await close()

    run_threads(hit, 1, 50, BUDGET_S)  # warm up
    run_threads(miss, 1, 50, BUDGET_S)
    loads: dict[str, Load] = {"direct": Load(), "hit": Load(), "miss": Load()}
    for _ in range(rounds):
        for name, load in (
            ("direct", asyncio.run(direct_run())),
            ("hit", run_threads(hit, 1, calls, BUDGET_S)),
            ("miss", run_threads(miss, 1, calls, BUDGET_S)),
        ):
            loads[name].latencies += load.latencies
            loads[name].errors += load.errors
            loads[name].first_error = loads[name].first_error or load.first_error
    return {name: summarize(load) for name, load in loads.items()}


def coalescing(bridge: Any, upstream: FakeUpstream, n: int) -> dict[str, Any]:
    from nova.messages import ChatCall

    request = chat_request(f"same {uuid.uuid4().hex}")

    async def all_at_once() -> list[Any]:
        calls = [bridge.acall(ChatCall(request=request), 30) for _ in range(n)]
        return await asyncio.gather(*calls, return_exceptions=True)

    upstream.reset()
    start = time.perf_counter()
    replies = asyncio.run(all_at_once())
    wall = time.perf_counter() - start
    ok = [r for r in replies if not isinstance(r, BaseException)]
    failed = [r for r in replies if isinstance(r, BaseException)]
    return {
        "calls": n,
        "answered": len(ok),
        "errors": len(failed),
        "first_error": f"{type(failed[0]).__name__}: {failed[0]}"[:200] if failed else "",
        "upstream_requests": upstream.stats()["requests"],
        "marked_cached": sum(1 for r in ok if r.cached),
        "same_text": len({r.text for r in ok}) == 1,
        "wall_s": wall,
    }


def measure(admin_port: int, calls: int, rounds: int, coalesce: int, delay: float) -> dict[str, Any]:
    raise_nofile()
    with FakeUpstream() as upstream:
        raw = bench_config(admin_port, upstream.base_url(), cache={"enabled": True, "backend": "memory"})
        with nova_system(raw) as (_system, bridge, _sid):
            results = {"latency": latency(bridge, upstream.base_url(), calls, rounds)}
        raw = bench_config(admin_port, upstream.base_url(delay), cache={"enabled": True, "backend": "memory"})
        with nova_system(raw) as (_system, bridge, _sid):
            results["coalescing"] = {**coalescing(bridge, upstream, coalesce), "delay_s": delay}
    return results


def render(results: dict[str, Any]) -> str:
    lat = results["latency"]
    labels = {
        "direct": "direct httpx call (no cache), for reference",
        "miss": "Nova, cache miss (goes upstream, then stored)",
        "hit": "Nova, cache hit (memory backend)",
    }
    lines = ["| path | c | p50 ms | p99 ms | calls | errors |", "|---|---:|---:|---:|---:|---:|"]
    for name, label in labels.items():
        row = lat[name]
        lines.append(
            f"| {label} | 1 | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['calls']} | {row['errors']} |"
        )
    c = results["coalescing"]
    lines += [
        "",
        f"Coalescing: {c['calls']} identical calls at once, upstream delay {c['delay_s']:g} s → "
        f"**{c['upstream_requests']} upstream request(s)**; {c['answered']} answered "
        f"({c['marked_cached']} marked cached, same text: {c['same_text']}), {c['errors']} errors, "
        f"all done in {c['wall_s']:.2f} s.",
    ]
    errors = [row["first_error"] for row in [*lat.values(), c] if row.get("first_error")]
    if errors:
        lines.append("\nFirst errors: " + "; ".join(errors))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--admin-port", type=int, default=19840)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--coalesce", type=int, default=100)
    parser.add_argument("--delay", type=float, default=0.5)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    results = measure(args.admin_port, args.calls, args.rounds, args.coalesce, args.delay)
    report(results, render, args.json)


if __name__ == "__main__":
    main()
