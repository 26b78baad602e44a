"""Benchmark: 5,000 concurrent calls to an upstream that answers after 2 s — wall time and peak RSS.

Nova runs with one OpenAI driver (`max_concurrency = 5000`, 5000 connections); the calls come from
5,000 asyncio tasks through `Bridge.acall` (on the lane of the tasks' event loop); `--processes N`
runs the driver as a pool of N actors (one run per value). The summed RSS and PSS of every
process of the admin's session is sampled every 100 ms. For scale, the same 5,000 calls are also
made directly with httpx over the aiohttp transport from this process. The open-file limit is
raised to the hard limit here; the actor processes inherit it (the admin forks from this process).

    PYTHONPATH=. .venv/bin/python -m bench.bench_concurrency [--calls 5000] [--delay 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from bench import MESSAGES, bench_config, chat_request, report
from bench.fake_upstream import FakeUpstream, raise_nofile
from bench.host import RSSSampler, nova_system, process_names

__all__ = ["measure", "render"]

MiB = 1024 * 1024


def _spread(ends: list[float]) -> dict[str, float]:
    ends = sorted(ends)
    return {"first_s": ends[0] if ends else float("nan"), "last_s": ends[-1] if ends else float("nan")}


async def direct(base_url: str, calls: int, timeout: float) -> dict[str, Any]:
    import httpx
    from httpx_aiohttp import AiohttpTransport

    limits = httpx.Limits(max_connections=calls, max_keepalive_connections=calls)
    client = httpx.AsyncClient(
        transport=AiohttpTransport(limits=limits, trust_env=False), base_url=base_url, timeout=timeout
    )
    body = {"model": "bench", "messages": MESSAGES, "max_tokens": 16}
    ends: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()

    async def one() -> None:
        try:
            reply = await client.post("/chat/completions", json=body)
            reply.json()
            ends.append(time.perf_counter() - start)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    try:
        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(calls))), timeout)
    finally:
        await client.aclose()
    return {
        "wall_s": time.perf_counter() - start,
        "ok": len(ends),
        "errors": len(errors),
        "first_error": errors[0][:200] if errors else "",
        **_spread(ends),
    }


async def through_nova(bridge: Any, calls: int, timeout: float) -> dict[str, Any]:
    from nova.messages import ChatCall

    request = chat_request()
    ends: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()

    async def one(i: int) -> None:
        try:
            await bridge.acall(ChatCall(request=request), timeout)
            ends.append(time.perf_counter() - start)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")

    await asyncio.gather(*(one(i) for i in range(calls)))
    return {
        "wall_s": time.perf_counter() - start,
        "ok": len(ends),
        "errors": len(errors),
        "first_error": errors[0][:200] if errors else "",
        **_spread(ends),
    }


def nova_run(admin_port: int, base_url: str, calls: int, processes: int, timeout: float) -> dict[str, Any]:
    config = bench_config(admin_port, base_url, max_concurrency=calls)
    config["drivers"]["bench"]["processes"] = processes
    with nova_system(config) as (system, bridge, sid):
        names = {
            pid: "driver" if n.split("#")[0] == "bench" else n for pid, n in process_names(system).items()
        }
        with RSSSampler(sid) as rss:
            idle, idle_pss = rss.sample(), rss.last_pss_bytes
            result = asyncio.run(through_nova(bridge, calls, timeout))
        by_name: dict[str, float] = {}
        for pid, size in rss.peak_by_pid.items():
            name = names.get(pid, "thespian (admin/logger)")
            by_name[name] = by_name.get(name, 0) + size / MiB
        result.update(
            processes=processes,
            idle_rss_mib=idle / MiB,
            idle_pss_mib=idle_pss / MiB,
            peak_rss_mib=rss.peak_bytes / MiB,
            peak_pss_mib=rss.peak_pss_bytes / MiB,
            rss_samples=rss.samples,
            peak_by_process_mib=by_name,
        )
    return result


def measure(
    admin_port: int, calls: int, delay: float, processes: list[int], timeout: float
) -> dict[str, Any]:
    limit = raise_nofile()
    results: dict[str, Any] = {"calls": calls, "delay_s": delay, "nofile": limit, "runs": []}
    with FakeUpstream() as upstream:
        base_url = upstream.base_url(delay)
        results["direct"] = asyncio.run(direct(base_url, calls, timeout))
        results["direct"]["upstream_peak_connections"] = upstream.stats()["peak_connections"]
        for n in processes:
            upstream.reset()
            run = nova_run(admin_port, base_url, calls, n, timeout)
            run["upstream_requests"] = upstream.stats()["requests"]
            results["runs"].append(run)
    return results


def render(results: dict[str, Any]) -> str:
    d = results["direct"]
    lines = [
        f"{results['calls']} concurrent calls, upstream answers after {results['delay_s']:g} s "
        f"(open-file limit {results['nofile']}).",
        "",
        "| path | wall s | first answer s | last answer s | ok | errors "
        "| peak RSS sum, Nova processes | peak PSS sum |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| direct httpx + AiohttpTransport (this process) | {d['wall_s']:.2f} | {d['first_s']:.2f} | "
        f"{d['last_s']:.2f} | {d['ok']} | {d['errors']} | — | — |",
    ]
    for run in results["runs"]:
        lines.append(
            f"| Nova, `Bridge.acall`, driver pool of {run['processes']} | {run['wall_s']:.2f} | "
            f"{run['first_s']:.2f} | {run['last_s']:.2f} | {run['ok']} | {run['errors']} | "
            f"{run['peak_rss_mib']:.0f} MiB (idle {run['idle_rss_mib']:.0f}) | "
            f"{run['peak_pss_mib']:.0f} MiB (idle {run.get('idle_pss_mib', float('nan')):.0f}) |"
        )
    for run in results["runs"]:
        parts = ", ".join(
            f"{name} {mib:.0f}"
            for name, mib in sorted(run["peak_by_process_mib"].items(), key=lambda kv: -kv[1])
        )
        lines.append(
            f"\nPeak RSS by process, driver pool of {run['processes']}, MiB: {parts}. "
            f"Upstream saw {run['upstream_requests']} requests."
        )
    errors = [r["first_error"] for r in [d, *results["runs"]] if r["first_error"]]
    if errors:
        lines.append("\nFirst errors: " + "; ".join(errors))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--admin-port", type=int, default=19830)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--delay", type=float, default=2.0)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="driver pool sizes")
    parser.add_argument("--timeout", type=float, default=60.0, help="per call and for the direct batch")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    results = measure(args.admin_port, args.calls, args.delay, args.processes, args.timeout)
    report(results, render, args.json)


if __name__ == "__main__":
    main()
