"""Soak: calls at c=50 for minutes, with upstream faults and an actor killed every 20 s.

Not part of CI. Nova runs under `nova run` with two OpenAI drivers on the fake upstream (the second
is the first's fallback target), the memory cache and a generous rate limit, so every stage is on
the path. The upstream answers a share of requests with a fault (a 500, a 429, or a connection
closed without a reply). Every `--kill-every` seconds one actor process is SIGKILLed, in turn: the
driver, the fallback stage, the router, the rate limiter, the cache. Every call gets a typed
answer or it is counted as lost (only the caller's own wait ran out); a call whose answer came
twice on the lanes is counted as duplicated (the caller still sees the first only). RSS summed
over Nova's processes is read at the start and at the end, and the processes left after
`nova run` stopped are counted.

    PYTHONPATH=. .venv/bin/python -m bench.soak [--minutes 10] [--concurrency 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import signal
import time
import uuid
from typing import Any

import psutil

from bench import bench_config, chat_request, report
from bench.bench_pipeline import GENEROUS_LIMITS
from bench.fake_upstream import FakeUpstream, raise_nofile
from bench.host import nova_system, process_names, session_pids

__all__ = ["measure", "render"]

VICTIMS = ("bench", "fallback", "router", "ratelimit", "cache")
MiB = 1024 * 1024


def _rss(sid: int | None) -> float:
    total = 0
    for pid in session_pids(sid) if sid is not None else []:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return total / MiB


def config(admin_port: int, base_url: str) -> dict[str, Any]:
    raw = bench_config(
        admin_port, base_url, cache={"enabled": True, "backend": "memory"}, ratelimit=GENEROUS_LIMITS
    )
    raw["drivers"]["spare"] = {**raw["drivers"]["bench"], "model": "bench"}
    raw["fallback"] = {"targets": ["spare"]}
    return raw


async def load(
    bridge: Any, seconds: float, concurrency: int, call_timeout: float, kill: Any
) -> dict[str, Any]:
    from nova.messages import CallOptions, ChatCall

    answers: collections.defaultdict[str, list[str]] = collections.defaultdict(list)
    original = bridge._on_message  # count every answer the lanes bring, duplicates included
    start = time.monotonic()

    def counting(peer: str, message: Any, *rest: Any) -> None:
        if peer and type(message).__name__ == "Answer":  # peer "": the bridge failing a call itself
            error = type(message.error).__name__ if message.error is not None else "ok"
            answers[message.request_id].append(f"{time.monotonic() - start:.3f}s {peer}: {error}")
        original(peer, message, *rest)

    bridge._on_message = counting
    outcomes: collections.Counter[str] = collections.Counter()
    made = 0
    end = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal made
        while time.monotonic() < end:
            call = ChatCall(
                request=chat_request(f"soak {uuid.uuid4().hex}"), options=CallOptions(timeout_s=call_timeout)
            )
            made += 1
            try:
                await bridge.acall(call, call_timeout + 5)
                outcomes["ok"] += 1
            except Exception as exc:
                lost = "no answer from Nova" in str(exc)
                outcomes["lost" if lost else type(exc).__name__] += 1

    async def killer() -> None:
        victims = list(VICTIMS)
        while time.monotonic() < end - 5:
            await asyncio.sleep(kill["every"])
            name = victims[kill["count"] % len(victims)]
            pid = next((p for p, n in kill["names"]().items() if n == name), None)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                kill["count"] += 1
                kill["killed"].append(name)
                kill.setdefault("at", []).append(f"{time.monotonic() - start:.3f}s {name}")

    await asyncio.gather(killer(), *(worker() for _ in range(concurrency)))
    twice = {rid: seen for rid, seen in answers.items() if len(seen) > 1}
    return {
        "made": made,
        "outcomes": dict(outcomes),
        "duplicated": len(twice),
        "duplicates": dict(list(twice.items())[:10]),  # each with its answers: when, from whom, what
        "kills_at": kill.get("at", []),
    }


def measure(
    admin_port: int, minutes: float, concurrency: int, fault_rate: float, kill_every: float
) -> dict[str, Any]:
    raise_nofile()
    report: dict[str, Any] = {}
    results: dict[str, Any] = {"minutes": minutes, "concurrency": concurrency, "fault_rate": fault_rate}
    with FakeUpstream() as upstream:
        with nova_system(config(admin_port, upstream.base_url(faults=fault_rate)), report=report) as (
            system,
            bridge,
            sid,
        ):
            warm = asyncio.run(
                load(bridge, 5, concurrency, 20, {"every": 3600, "count": 0, "killed": [], "names": dict})
            )
            results["rss_start_mib"] = _rss(sid)
            kill = {"every": kill_every, "count": 0, "killed": [], "names": lambda: process_names(system)}
            results.update(asyncio.run(load(bridge, minutes * 60, concurrency, 20, kill)))
            results["rss_end_mib"] = _rss(sid)
            results["killed"] = kill["killed"]
            results["warm_up_made"] = warm["made"]
        results["upstream"] = upstream.stats()
    results["left_after_stop"] = len(report.get("left", []))
    return results


def render(r: dict[str, Any]) -> str:
    out = r["outcomes"]
    answered = sum(out.values()) - out.get("lost", 0)
    growth = (r["rss_end_mib"] / r["rss_start_mib"] - 1) * 100 if r["rss_start_mib"] else float("nan")
    errors = ", ".join(f"{k} {v}" for k, v in sorted(out.items()) if k not in ("ok", "lost")) or "none"
    return "\n".join(
        [
            f"{r['minutes']:g} min at c={r['concurrency']}, {r['fault_rate']:.0%} upstream faults "
            f"({r['upstream'].get('faults', 0)} faults of {r['upstream']['requests']} requests), "
            f"{len(r['killed'])} kills ({', '.join(r['killed'])}).",
            "",
            "| calls made | answered | ok | typed errors | lost | duplicated | RSS start → end "
            "| processes left |",
            "|---:|---:|---:|---|---:|---:|---|---:|",
            f"| {r['made']} | {answered} | {out.get('ok', 0)} | {errors} | {out.get('lost', 0)} | "
            f"{r['duplicated']} | {r['rss_start_mib']:.0f} → {r['rss_end_mib']:.0f} MiB ({growth:+.1f} %) | "
            f"{r['left_after_stop']} |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--admin-port", type=int, default=19880)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--fault-rate", type=float, default=0.05)
    parser.add_argument("--kill-every", type=float, default=20.0)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    results = measure(args.admin_port, args.minutes, args.concurrency, args.fault_rate, args.kill_every)
    report(results, render, args.json)


if __name__ == "__main__":
    main()
