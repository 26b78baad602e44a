"""Benchmark: streams through Nova vs a direct streaming client — delivery, a slow reader, abandon.

Against the fake upstream's SSE streams (`bench/fake_upstream.py`: OpenAI-style chat chunks at a
set rate, each stream's progress and disconnect time reported in `time.time()`), side by side in
one run: (direct) an httpx AsyncClient over httpx_aiohttp's AiohttpTransport reading the SSE lines
and parsing each chunk's JSON, and (nova) `Bridge.astream` through a real `nova run`.

- delivery: a 4,000-chunk stream sent at 2,000 chunks/s (and unpaced: as fast as the client
  takes it): chunks/s received (first to last chunk), the time from the request to the last chunk
  beside the upstream's own sending time (request in to last write), and how long after the
  upstream's last write the last chunk arrived. Medians over the runs; variants interleaved.
- slow reader: a 20,000-chunk stream the upstream sends as fast as it may, read at ~200 chunks/s
  for ~5 s: the RSS of the driver actor and of the caller (this process) sampled over time, and
  the upstream's sent count against the chunks read. The direct client shows how much the socket
  buffers and aiohttp's buffer hold on their own; Nova adds its credit window (64 chunks).
- abandon: the caller takes 10 chunks of a long stream and leaves (closes the response, or leaves
  the `async for` over `astream`); the time from leaving to the upstream seeing its connection
  closed. Medians over the tries.

    PYTHONPATH=. .venv/bin/python -m bench.bench_streams [--runs 5] [--tries 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from bench import bench_config, chat_request, percentile, report
from bench.fake_upstream import FakeUpstream, raise_nofile, stream_prompt
from bench.host import nova_system, process_names

__all__ = ["measure", "render"]

TIMEOUT_S = 120.0  # one stream, whole
CLOSE_WAIT_S = 5.0  # abandon: how long to wait for the upstream to see the connection closed
MiB = 1024 * 1024

Opener = Callable[[str], AsyncIterator[str]]


def direct_opener(base_url: str) -> tuple[Opener, Callable[[], Any]]:
    import httpx
    from httpx_aiohttp import AiohttpTransport

    client = httpx.AsyncClient(
        transport=AiohttpTransport(limits=httpx.Limits(max_connections=100), trust_env=False),
        base_url=base_url,
        headers={"authorization": "Bearer sk-test-bench"},
        timeout=TIMEOUT_S,
    )

    async def open_stream(prompt: str) -> AsyncIterator[str]:
        body = {
            "model": "bench",
            "messages": [{"role": "user", "content": prompt}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        async with client.stream("POST", "/chat/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                choices = json.loads(line[6:]).get("choices")
                if choices and (text := choices[0].get("delta", {}).get("content")):
                    yield text

    return open_stream, client.aclose


def nova_opener(bridge: Any) -> Opener:
    from nova.messages import StreamCall

    async def open_stream(prompt: str) -> AsyncIterator[str]:
        # aclosing: leaving this generator must close the bridge's stream now (that cancels the
        # call), not when the garbage collector gets to it.
        chunks = bridge.astream(StreamCall(request=chat_request(prompt)), TIMEOUT_S)
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                if chunk.text:
                    yield chunk.text

    return open_stream


async def record(upstream: FakeUpstream, tag: str) -> dict[str, Any] | None:
    return await asyncio.to_thread(upstream.stream, tag)


# -- a. delivery ---------------------------------------------------------------------------------


async def deliver(open_stream: Opener, upstream: FakeUpstream, chunks: int, rate: float) -> dict[str, Any]:
    tag = uuid.uuid4().hex
    received, first, last = 0, 0.0, 0.0
    start = time.time()
    async with contextlib.aclosing(open_stream(stream_prompt(chunks, rate, tag))) as stream:
        async for _text in stream:
            last = time.time()
            first = first or last
            received += 1
    end = time.time()
    rec = await record(upstream, tag)
    if received != chunks or rec is None or not rec["done"]:
        raise RuntimeError(f"received {received} of {chunks} chunks; upstream: {rec}")
    return {
        "received_per_s": (received - 1) / (last - first) if last > first else float("nan"),
        "to_last_s": last - start,
        "upstream_s": rec["last_write"] - rec["started"],
        "after_upstream_ms": (last - rec["last_write"]) * 1e3,
        "first_ms": (first - start) * 1e3,
        "end_s": end - start,
    }


# -- b. slow reader ------------------------------------------------------------------------------


def _rss(proc: Any) -> float:
    import psutil  # type: ignore[import-untyped]

    try:
        return float(proc.memory_info().rss) / MiB
    except psutil.Error:
        return float("nan")


async def slow_read(
    open_stream: Opener,
    upstream: FakeUpstream,
    chunks: int,
    read_rate: float,
    seconds: float,
    driver: Any,
    caller: Any,
    every_s: float,
) -> dict[str, Any]:
    tag = uuid.uuid4().hex
    read = [0]
    samples: list[dict[str, Any]] = []
    started = time.monotonic()

    async def sample() -> None:
        while True:
            rec = await record(upstream, tag)
            samples.append(
                {
                    "t_s": time.monotonic() - started,
                    "read": read[0],
                    "sent": rec["sent"] if rec else 0,
                    "sent_bytes": rec["bytes"] if rec else 0,
                    "driver_rss_mib": _rss(driver),
                    "caller_rss_mib": _rss(caller),
                }
            )
            await asyncio.sleep(every_s)

    sampler = asyncio.create_task(sample())
    try:
        async with contextlib.aclosing(open_stream(stream_prompt(chunks, 0, tag))) as stream:
            first = 0.0
            async for _text in stream:
                read[0] += 1
                now = time.monotonic()
                first = first or now
                if now - first >= seconds:
                    break
                await asyncio.sleep(max(0.0, first + read[0] / read_rate - now))
        await asyncio.sleep(every_s)  # one sample after leaving
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    ahead = [s["sent"] - s["read"] for s in samples]
    rec = await record(upstream, tag)
    per_chunk = rec["bytes"] / rec["sent"] if rec and rec["sent"] else 0.0
    while_reading = [s for s in samples if s["read"] < read[0]] or samples
    return {
        "read": read[0],
        "sent": rec["sent"] if rec else 0,
        "ahead_max": max(ahead, default=0),
        "ahead_last": while_reading[-1]["sent"] - while_reading[-1]["read"] if while_reading else 0,
        "bytes_per_chunk": per_chunk,
        "driver_rss_mib": [
            min(s["driver_rss_mib"] for s in samples),
            max(s["driver_rss_mib"] for s in samples),
        ],
        "caller_rss_mib": [
            min(s["caller_rss_mib"] for s in samples),
            max(s["caller_rss_mib"] for s in samples),
        ],
        "closed_by_upstream_view": bool(rec and rec["closed"]),
        "samples": samples,
    }


# -- c. abandon ----------------------------------------------------------------------------------


async def abandon(
    open_stream: Opener, upstream: FakeUpstream, take: int, chunks: int, rate: float
) -> dict[str, Any]:
    tag = uuid.uuid4().hex
    taken, left = 0, 0.0
    async with contextlib.aclosing(open_stream(stream_prompt(chunks, rate, tag))) as stream:
        async for _text in stream:
            taken += 1
            if taken >= take:
                left = time.time()
                break
    returned = time.time()
    if not left:
        raise RuntimeError(f"the stream ended after {taken} chunks")
    deadline = time.monotonic() + CLOSE_WAIT_S
    while True:
        rec = await record(upstream, tag)
        if rec is not None and rec["closed"] is not None:
            return {
                "closed_ms": (rec["closed"] - left) * 1e3,
                "leave_ms": (returned - left) * 1e3,
                "sent": rec["sent"],
            }
        if rec is None or rec["done"] or time.monotonic() > deadline:
            return {"closed_ms": None, "leave_ms": (returned - left) * 1e3, "sent": rec["sent"] if rec else 0}
        await asyncio.sleep(0.005)


# -- the run -------------------------------------------------------------------------------------


async def measure(
    admin_port: int,
    runs: int,
    chunks: int,
    rates: list[float],
    slow_chunks: int,
    slow_rate: float,
    slow_s: float,
    tries: int,
    take: int,
) -> dict[str, Any]:
    import psutil  # type: ignore[import-untyped]

    raise_nofile()
    results: dict[str, Any] = {
        "runs": runs,
        "chunks": chunks,
        "slow": {"chunks": slow_chunks, "read_rate": slow_rate, "seconds": slow_s},
        "abandon": {"tries": tries, "take": take},
    }
    with FakeUpstream() as upstream:
        direct, close_direct = direct_opener(upstream.base_url())
        try:
            with nova_system(bench_config(admin_port, upstream.base_url())) as (system, bridge, _sid):
                openers = {"direct": direct, "nova": nova_opener(bridge)}
                driver_pid = next(pid for pid, name in process_names(system).items() if name == "bench")
                driver, caller = psutil.Process(driver_pid), psutil.Process(os.getpid())
                for open_stream in openers.values():  # warm up connections and imports
                    await deliver(open_stream, upstream, 200, 0)

                delivery: dict[str, dict[str, list[dict[str, Any]]]] = {}
                errors: dict[str, str] = {}
                for _ in range(runs):
                    for rate in rates:
                        for name, open_stream in openers.items():
                            runs_of = delivery.setdefault(f"{rate:g}", {}).setdefault(name, [])
                            try:
                                runs_of.append(await deliver(open_stream, upstream, chunks, rate))
                            except Exception as exc:
                                errors.setdefault(f"delivery {name}", f"{type(exc).__name__}: {exc}"[:200])
                results["delivery"] = {
                    rate: {name: _medians(rows) for name, rows in by_name.items()}
                    for rate, by_name in delivery.items()
                }

                results["slow_reader"] = {}
                for name, open_stream in openers.items():
                    try:
                        results["slow_reader"][name] = await slow_read(
                            open_stream, upstream, slow_chunks, slow_rate, slow_s, driver, caller, 0.25
                        )
                    except Exception as exc:
                        errors.setdefault(f"slow reader {name}", f"{type(exc).__name__}: {exc}"[:200])

                gone: dict[str, list[dict[str, Any]]] = {name: [] for name in openers}
                for _ in range(tries):
                    for name, open_stream in openers.items():
                        try:
                            # 20,000 chunks at 2,000/s: a stream that cannot end before the caller leaves
                            gone[name].append(await abandon(open_stream, upstream, take, 20_000, 2000))
                        except Exception as exc:
                            errors.setdefault(f"abandon {name}", f"{type(exc).__name__}: {exc}"[:200])
                results["abandon"]["results"] = {name: _abandon_summary(rows) for name, rows in gone.items()}
                results["errors"] = errors
        finally:
            await close_direct()
    return results


def _medians(rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = rows[0].keys() if rows else []
    return {"runs": len(rows), **{k: statistics.median(r[k] for r in rows) for k in keys}}


def _abandon_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    closed = [r["closed_ms"] for r in rows if r["closed_ms"] is not None]
    return {
        "tries": len(rows),
        "closed": len(closed),
        "closed_p50_ms": percentile(closed, 50),
        "closed_max_ms": max(closed, default=float("nan")),
        "leave_p50_ms": percentile([r["leave_ms"] for r in rows], 50),
        "sent_p50": percentile([float(r["sent"]) for r in rows], 50),
    }


# -- the tables ----------------------------------------------------------------------------------

LABELS = {"direct": "httpx + AiohttpTransport, direct", "nova": "Nova, `Bridge.astream`"}


def render(results: dict[str, Any]) -> str:
    lines = [
        f"Delivery: a {results['chunks']:,}-chunk stream, medians of {results['runs']} runs "
        "(rate 0: the upstream sends as fast as the client takes).",
        "",
        "| upstream rate, chunks/s | path | received, chunks/s | request → last chunk, s "
        "| upstream's sending time, s | last chunk after upstream's last write, ms "
        "| first chunk, ms | runs |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for rate, by_name in results.get("delivery", {}).items():
        for name, row in by_name.items():
            if not row["runs"]:
                continue
            lines.append(
                f"| {rate} | {LABELS[name]} | {row['received_per_s']:,.0f} | {row['to_last_s']:.3f} | "
                f"{row['upstream_s']:.3f} | {row['after_upstream_ms']:.1f} | {row['first_ms']:.1f} | "
                f"{row['runs']} |"
            )
    slow = results["slow"]
    lines += [
        "",
        f"Slow reader: a {slow['chunks']:,}-chunk stream sent as fast as the client takes it, read at "
        f"~{slow['read_rate']:g} chunks/s for ~{slow['seconds']:g} s, then left. Ahead = the "
        "upstream's sent count minus the chunks read (sampled every 0.25 s).",
        "",
        "| path | read | upstream sent | ahead, max | ahead at the end | ≈ KiB ahead "
        "| driver RSS MiB, min–max | caller RSS MiB, min–max |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in results.get("slow_reader", {}).items():
        lines.append(
            f"| {LABELS[name]} | {row['read']:,} | {row['sent']:,} | {row['ahead_max']:,} | "
            f"{row['ahead_last']:,} | {row['ahead_max'] * row['bytes_per_chunk'] / 1024:.0f} | "
            f"{row['driver_rss_mib'][0]:.1f}–{row['driver_rss_mib'][1]:.1f} | "
            f"{row['caller_rss_mib'][0]:.1f}–{row['caller_rss_mib'][1]:.1f} |"
        )
    nova = results.get("slow_reader", {}).get("nova")
    if nova:
        lines += [
            "",
            "Nova's slow reader over time:",
            "",
            "| t, s | read | upstream sent | ahead | driver RSS MiB | caller RSS MiB |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for s in nova["samples"][::2]:
            lines.append(
                f"| {s['t_s']:.1f} | {s['read']:,} | {s['sent']:,} | {s['sent'] - s['read']:,} | "
                f"{s['driver_rss_mib']:.1f} | {s['caller_rss_mib']:.1f} |"
            )
    ab = results["abandon"]
    lines += [
        "",
        f"Abandon: the caller takes {ab['take']} chunks of a 20,000-chunk stream (2,000 chunks/s) and "
        "leaves; time from leaving to the upstream seeing the connection closed (both `time.time()`).",
        "",
        "| path | tries | closed within 5 s | p50 ms | max ms | leaving took, p50 ms | upstream sent, p50 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in ab.get("results", {}).items():
        lines.append(
            f"| {LABELS[name]} | {row['tries']} | {row['closed']} | {row['closed_p50_ms']:.2f} | "
            f"{row['closed_max_ms']:.2f} | {row['leave_p50_ms']:.2f} | {row['sent_p50']:.0f} |"
        )
    if results.get("errors"):
        lines += ["", "First errors: " + "; ".join(f"{k}: {v}" for k, v in results["errors"].items())]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--admin-port", type=int, default=19850)
    parser.add_argument("--runs", type=int, default=5, help="delivery runs per path and rate")
    parser.add_argument("--chunks", type=int, default=4000, help="chunks of a delivery stream")
    parser.add_argument("--rates", type=float, nargs="+", default=[2000.0, 0.0], help="0: unpaced")
    parser.add_argument("--slow-chunks", type=int, default=20_000)
    parser.add_argument("--slow-rate", type=float, default=200.0, help="the slow reader's chunks/s")
    parser.add_argument("--slow-seconds", type=float, default=5.0)
    parser.add_argument("--tries", type=int, default=20, help="abandon tries per path")
    parser.add_argument("--take", type=int, default=10, help="chunks taken before abandoning")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    results = asyncio.run(
        measure(
            args.admin_port,
            args.runs,
            args.chunks,
            args.rates,
            args.slow_chunks,
            args.slow_rate,
            args.slow_seconds,
            args.tries,
            args.take,
        )
    )
    report(results, render, args.json)


if __name__ == "__main__":
    main()
