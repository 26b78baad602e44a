"""Benchmark: Nova's HTTP gateway against LiteLLM's proxy, both in front of the same fake upstream.

Side by side in one run, one HTTP client (aiohttp, keep-alive) posting the same OpenAI chat
completion to: (a) the fake upstream directly (`bench/fake_upstream.py`, no delay), (b) Nova's
gateway (`nova run --http`, one OpenAI driver on the upstream, metrics on, cache off), and
(c) LiteLLM's proxy (`litellm --config`, one model on the upstream, one worker), when
`litellm[proxy]` is installed. Both servers check a bearer key. Variants run interleaved in
rounds, at concurrency 1 (added latency = variant p50/p95 minus direct) and 50 (calls/s). CPU
per call at c=50 is read from each side's processes (Nova's whole session; LiteLLM's process
tree).

    PYTHONPATH=. .venv/bin/python -m bench.bench_gateway [--rounds 3] [--calls 300] [--rate-calls 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import MESSAGES, bench_config, percentile, report, run_async, summarize
from bench.fake_upstream import FakeUpstream, raise_nofile
from bench.host import CpuMeter, nova_system, process_names, session_pids

__all__ = ["measure", "render"]

ROOT = Path(__file__).resolve().parent.parent
BODY = {"model": "bench", "messages": MESSAGES, "max_tokens": 16}
BUDGET_S = 30.0  # per measurement
LITELLM_CONFIG = """model_list:
  - model_name: bench
    litellm_params:
      model: openai/bench
      api_base: {base_url}
      api_key: sk-test-bench
litellm_settings:
  telemetry: false
  drop_params: true
general_settings:
  master_key: {key}
"""
KEY = "sk-test-bench-gateway-key"  # both servers check it (LiteLLM's proxy refuses to start without one)


def litellm_available() -> bool:
    return shutil.which("litellm", path=os.path.dirname(sys.executable)) is not None


def _wait_http(url: str, timeout: float, proc: subprocess.Popen[Any] | None = None) -> None:
    import http.client
    from urllib.parse import urlparse

    parsed = urlparse(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited ({proc.returncode})")
        with contextlib.suppress(OSError):
            conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=1)
            conn.request("GET", parsed.path)
            if conn.getresponse().status == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:g}s")


@contextlib.contextmanager
def litellm_proxy(base_url: str, port: int, workdir: Path) -> Iterator[subprocess.Popen[Any]]:
    config = workdir / "litellm.yaml"
    config.write_text(LITELLM_CONFIG.format(base_url=base_url, key=KEY))
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # offline: no fetch of its price list
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
    }
    log = open(workdir / "litellm.out", "w")
    litellm = os.path.join(os.path.dirname(sys.executable), "litellm")
    cmd = [litellm, "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/health/liveliness", 120, proc)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        log.close()


def _tree(pid: int) -> dict[int, str]:
    import psutil  # type: ignore[import-untyped]

    proc = psutil.Process(pid)
    return {p.pid: "litellm proxy" for p in [proc, *proc.children(recursive=True)]}


async def measure(
    admin_port: int, http_port: int, litellm_port: int, rounds: int, calls: int, rate_calls: int
) -> dict[str, Any]:
    import aiohttp

    raise_nofile()
    results: dict[str, Any] = {"latency": {}, "throughput_c50": {}, "cpu_per_call_c50_ms": {}}
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(FakeUpstream())
        base_url = upstream.base_url()
        raw = bench_config(admin_port, base_url)
        raw["server"] = {"enabled": True, "host": "127.0.0.1", "port": http_port, "api_keys": [KEY]}
        system, _, sid = stack.enter_context(nova_system(raw))
        urls = {"direct": f"{base_url}/chat/completions"}
        gateway = f"http://127.0.0.1:{http_port}"
        _wait_http(f"{gateway}/health", 30)
        urls["nova_gateway"] = f"{gateway}/v1/chat/completions"
        cpu_of: dict[str, dict[int, str]] = {"direct": {upstream.pid: "fake upstream"}}
        actors = process_names(system)
        cpu_of["nova_gateway"] = {pid: f"nova {actors.get(pid, 'other')}" for pid in session_pids(sid or 0)}
        if litellm_available():
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nova-bench-litellm-")))
            proc = stack.enter_context(litellm_proxy(base_url, litellm_port, workdir))
            urls["litellm_proxy"] = f"http://127.0.0.1:{litellm_port}/v1/chat/completions"
            cpu_of["litellm_proxy"] = _tree(proc.pid)
        else:
            results["litellm"] = "not installed (pip install 'litellm[proxy]')"

        connector = aiohttp.TCPConnector(limit=1000, limit_per_host=1000)
        headers = {"Authorization": f"Bearer {KEY}"}
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

            def caller(url: str) -> Any:
                async def call() -> Any:
                    async with session.post(url, json=BODY) as reply:
                        data = await reply.json()
                        if reply.status != 200 or not data.get("choices"):
                            raise RuntimeError(f"HTTP {reply.status}: {str(data)[:200]}")
                        return data

                return call

            for url in urls.values():  # warm up: connections, imports, first-call paths
                await run_async(caller(url), 10, 200, BUDGET_S)
            latencies: dict[str, list[float]] = {name: [] for name in urls}
            loads: dict[str, list[Any]] = {name: [] for name in urls}
            for _ in range(rounds):
                for name, url in urls.items():
                    load = await run_async(caller(url), 1, calls, BUDGET_S)
                    latencies[name] += load.latencies
                    loads[name].append(load)
            for name in urls:
                lat = latencies[name]
                summary = summarize(loads[name][-1])
                results["latency"][name] = {
                    "p50_ms": percentile(lat, 50) * 1e3,
                    "p95_ms": percentile(lat, 95) * 1e3,
                    "p99_ms": percentile(lat, 99) * 1e3,
                    "calls": len(lat),
                    "errors": sum(load.errors for load in loads[name]),
                    "first_error": summary["first_error"],
                }
            for name, url in urls.items():
                others = {pid: "fake upstream" for pid in [upstream.pid]}
                meter = CpuMeter({**cpu_of[name], **others})
                meter.start()
                load = await run_async(caller(url), 50, rate_calls, BUDGET_S)
                results["cpu_per_call_c50_ms"][name] = meter.stop(len(load.latencies))
                results["throughput_c50"][name] = summarize(load)
    return results


def render(results: dict[str, Any]) -> str:
    lat, thr, cpu = results["latency"], results["throughput_c50"], results["cpu_per_call_c50_ms"]
    direct = lat["direct"]
    lines = [
        "| variant | p50 c=1 (ms) | p95 c=1 (ms) | added p50 | added p95 | calls/s c=50 | vs LiteLLM proxy |"
        " CPU/call c=50 (ms, the server's processes) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base = thr.get("litellm_proxy", {}).get("rate")
    for name in lat:
        row, rate = lat[name], thr[name]["rate"]
        added50 = row["p50_ms"] - direct["p50_ms"]
        added95 = row["p95_ms"] - direct["p95_ms"]
        server = sum(v for k, v in cpu.get(name, {}).items() if k != "fake upstream")
        lines.append(
            f"| {name} | {row['p50_ms']:.2f} | {row['p95_ms']:.2f} | "
            + ("—" if name == "direct" else f"+{added50:.2f} ms")
            + " | "
            + ("—" if name == "direct" else f"+{added95:.2f} ms")
            + f" | {rate:,.0f} | "
            + (f"{rate / base:.1f}x" if base else "—")
            + " | "
            + ("—" if name == "direct" else f"{server:.2f}")
            + " |"
        )
    nova = {k: v for k, v in cpu.get("nova_gateway", {}).items() if k != "fake upstream"}
    if nova:
        shares = ", ".join(f"{k.removeprefix('nova ')} {v:.2f}" for k, v in nova.items() if v >= 0.01)
        lines += ["", f"Nova's CPU per call at c=50 by process (ms): {shares}."]
    if "litellm" in results:
        lines += ["", f"LiteLLM proxy: {results['litellm']}"]
    errors = [f"{k}: {v['first_error']}" for k, v in {**lat, **thr}.items() if v.get("first_error")]
    if errors:
        lines += ["", "First errors: " + "; ".join(errors)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--admin-port", type=int, default=19870)
    parser.add_argument("--http-port", type=int, default=19871)
    parser.add_argument("--litellm-port", type=int, default=19872)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=300, help="calls per variant and round at c=1")
    parser.add_argument("--rate-calls", type=int, default=2000, help="calls for the c=50 throughput")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    results = asyncio.run(
        measure(args.admin_port, args.http_port, args.litellm_port, args.rounds, args.calls, args.rate_calls)
    )
    report(results, render, args.json)


if __name__ == "__main__":
    main()
