"""Runs every benchmark in one go, prints the tables, and writes docs/benchmarks.md.

Each benchmark runs in its own interpreter with a time limit (a stuck run is killed, reported, and
the others go on); each stops every system and server it started. Figures of one run are compared
with each other only: this 2-core machine is noisy, absolute numbers move between runs.

    PYTHONPATH=. .venv/bin/python -m bench.run_all [--quick] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["main", "targets"]

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- figures:begin (bench/run_all.py writes this part) -->", "<!-- figures:end -->"


def _benches(quick: bool) -> list[tuple[str, list[str], int]]:
    """(module, arguments, time limit in seconds)."""
    if quick:
        return [
            ("bench_pipeline", ["--rounds", "1", "--calls", "100", "--rate-calls", "500"], 600),
            ("bench_concurrency", ["--calls", "1000", "--processes", "1", "2"], 600),
            ("bench_cache", ["--calls", "100", "--rounds", "1"], 300),
            ("bench_streams", ["--runs", "2", "--tries", "5", "--slow-seconds", "3"], 300),
            ("bench_startup", ["--starts", "2"], 300),
            ("bench_gateway", ["--rounds", "1", "--calls", "100", "--rate-calls", "500"], 600),
        ]
    return [
        ("bench_pipeline", ["--rounds", "3", "--calls", "300", "--rate-calls", "2000"], 1200),
        ("bench_concurrency", ["--calls", "5000", "--processes", "1", "2", "--timeout", "120"], 1500),
        ("bench_cache", ["--calls", "300", "--rounds", "2"], 600),
        ("bench_streams", ["--runs", "5", "--tries", "20"], 600),
        ("bench_startup", ["--starts", "5"], 600),
        ("bench_gateway", ["--rounds", "3", "--calls", "300", "--rate-calls", "2000"], 900),
    ]


def run_one(module: str, args: list[str], limit: int, workdir: Path) -> tuple[dict[str, Any] | None, str]:
    """Run `python -m bench.<module>`; (its JSON figures or None, its output or why it failed)."""
    out_json, out_text = workdir / f"{module}.json", workdir / f"{module}.out"
    cmd = [sys.executable, "-m", f"bench.{module}", *args, "--json", str(out_json)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.monotonic()
    # Output to a file, never a pipe: Thespian's admin daemon inherits the starter's stdout.
    with open(out_text, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            code = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None, f"killed after its {limit} s limit; output so far:\n{out_text.read_text()[-3000:]}"
    text = out_text.read_text()
    print(f"-- {module}: exit {code} in {time.monotonic() - start:.0f} s", flush=True)
    if code != 0 or not out_json.exists():
        return None, f"exit code {code}:\n{text[-3000:]}"
    return json.loads(out_json.read_text()), text


def listeners(workdir: Path) -> str | None:
    """The output of bench/bench_listeners.py (another helper's), when it exists."""
    if not (ROOT / "bench" / "bench_listeners.py").exists():
        return None
    out = workdir / "bench_listeners.out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(out, "w") as f:
        try:
            subprocess.run(
                [sys.executable, "bench/bench_listeners.py"],
                cwd=ROOT,
                env=env,
                stdout=f,
                stderr=subprocess.STDOUT,
                timeout=600,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return "killed after its 600 s limit"
    return out.read_text().strip()


def machine() -> dict[str, str]:
    cpu = "?"
    try:
        cpu = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = ", ".join(
        f"{p} {importlib.metadata.version(p)}" for p in ("thespian", "httpx", "httpx-aiohttp", "aiohttp")
    )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout
    return {
        "nproc": subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip(),
        "python": subprocess.run(
            [sys.executable, "--version"], capture_output=True, text=True
        ).stdout.strip(),
        "cpu": cpu,
        "memory": f"{mem:.0f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "packages": versions,
        "commit": commit.strip() or "?",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _row(target: str, wanted: str, figure: str, met: bool) -> str:
    return f"| {target} | {wanted} | {figure} | {'met' if met else '**missed**'} |"


def targets(results: dict[str, Any]) -> list[str]:
    """Table rows: each target of the call path, the figure of this run, met or not."""
    rows = []
    pipe = results.get("bench_pipeline")
    if pipe:
        lat, thr = pipe["latency"], pipe["throughput_c50"]
        direct = lat["direct@1"]
        for name, label in (("nova_sync", "sync `chat`"), ("nova_async", "async `achat`")):
            added = lat[f"{name}@1"]["p50_ms"] - direct["p50_ms"]
            rows.append(
                _row(f"added p50, c=1, default path, {label}", "≤ 1.0 ms", f"{added:.2f} ms", added <= 1.0)
            )
            added99 = lat[f"{name}@1"]["p99_ms"] - direct["p99_ms"]
            rows.append(
                _row(f"added p99, c=1, default path, {label}", "≤ 3 ms", f"{added99:.2f} ms", added99 <= 3)
            )
        if "nova_async_cl@1" in lat:
            added = lat["nova_async_cl@1"]["p50_ms"] - direct["p50_ms"]
            rows.append(
                _row("added p50, c=1, memory cache + limits on", "≤ 1.5 ms", f"{added:.2f} ms", added <= 1.5)
            )
        nova = thr["nova_async"]["rate"]
        if "litellm" in thr:
            ratio = nova / thr["litellm"]["rate"]
            rows.append(_row("calls/s at c=50 vs LiteLLM's Router", "≥ 10x", f"{ratio:.1f}x", ratio >= 10))
        ratio = nova / thr["direct"]["rate"]
        rows.append(_row("calls/s at c=50 vs direct httpx", "≥ 0.5x", f"{ratio:.2f}x", ratio >= 0.5))
        cpu = pipe.get("cpu_per_call", {}).get("c=50, Bridge.acall")
        if cpu:
            total = sum(v for k, v in cpu.items() if k != "fake upstream")
            rows.append(
                _row(
                    "CPU per call at c=50, Nova's processes + the caller",
                    "≤ 1.2 ms",
                    f"{total:.2f} ms",
                    total <= 1.2,
                )
            )
        if "nova_async_cl" in thr:
            ratio = thr["nova_async_cl"]["rate"] / nova
            rows.append(
                _row("calls/s at c=50, cache + limits vs default", "≥ 0.7x", f"{ratio:.2f}x", ratio >= 0.7)
            )
    cache = results.get("bench_cache")
    if cache:
        hit = cache["latency"]["hit"]["p50_ms"]
        rows.append(_row("a cache hit, p50 end to end", "≤ 1 ms", f"{hit:.2f} ms", hit <= 1))
    conc = results.get("bench_concurrency")
    if conc:
        calls, direct_s = conc["calls"], conc["direct"]["wall_s"]
        for run in conc["runs"]:
            ratio = run["wall_s"] / direct_s
            pool = f"driver pool of {run['processes']}"
            rows.append(
                _row(
                    f"{calls} in flight ({conc['delay_s']:g}-s upstream), {pool}: wall time vs direct",
                    "≤ 1.2x, all answered",
                    f"{ratio:.2f}x ({run['ok']}/{calls} ok)",
                    ratio <= 1.2 and run["ok"] == calls,
                )
            )
            pss = run["peak_pss_mib"]
            rows.append(
                _row(
                    f"same run ({pool}): PSS summed over Nova's processes",
                    "≤ 300 MiB",
                    f"{pss:.0f} MiB",
                    pss <= 300,
                )
            )
    streams = results.get("bench_streams")
    if streams:
        fast = streams["delivery"].get("2000", {}).get("nova")
        if fast:
            rate = fast["received_per_s"]
            rows.append(
                _row(
                    "a stream at 2,000 chunks/s: delivered",
                    "as fast as sent",
                    f"{rate:,.0f} chunks/s",
                    rate >= 1900,
                )
            )
        slow = streams["slow_reader"].get("nova")
        if slow:
            grew = slow["driver_rss_mib"][1] - slow["driver_rss_mib"][0]
            rows.append(_row("a slow reader: driver memory growth", "bounded", f"{grew:.1f} MiB", grew < 16))
        gone = streams["abandon"]["results"].get("nova")
        if gone:
            closed = gone["closed_max_ms"]
            rows.append(
                _row(
                    "abandoned stream: upstream connection closed (max)",
                    "≤ 50 ms",
                    f"{closed:.1f} ms",
                    closed <= 50,
                )
            )
    start = results.get("bench_startup")
    if start:
        ready = start["medians"].get("default config.toml", {}).get("first_call_s")
        if ready is not None:
            rows.append(
                _row("`nova run` ready (first call answered), p50", "≤ 1.5 s", f"{ready:.2f} s", ready <= 1.5)
            )
    gateway = results.get("bench_gateway")
    if gateway:
        lat, thr = gateway["latency"], gateway["throughput_c50"]
        if "litellm_proxy" in thr:
            ratio = thr["nova_gateway"]["rate"] / thr["litellm_proxy"]["rate"]
            rows.append(
                _row("HTTP gateway: calls/s at c=50 vs LiteLLM's proxy", "≥ 3x", f"{ratio:.1f}x", ratio >= 3)
            )
        added = lat["nova_gateway"]["p50_ms"] - lat["direct"]["p50_ms"]
        rows.append(_row("HTTP gateway: added p50, c=1", "≤ 2 ms", f"{added:.2f} ms", added <= 2))
    return rows


def render(
    results: dict[str, Any],
    texts: dict[str, str],
    info: dict[str, str],
    command: str,
    listener_text: str | None,
) -> str:
    lines = [
        BEGIN,
        "",
        f"- Command: `{command}`",
        f"- Date: {info['date']}; commit {info['commit']}",
        f"- Machine: `nproc` = {info['nproc']} ({info['cpu']}), {info['memory']} RAM, {info['os']}",
        f"- `python --version`: {info['python']}; {info['packages']}",
        "- Upstream: `bench/fake_upstream.py`, a raw-asyncio OpenAI chat-completions server on 127.0.0.1",
        "  (HTTP/1.1 keep-alive, fixed small answer, delay chosen per request), in its own process.",
        "- Nova: started with `nova run` in a separate interpreter (as in production) on one OpenAI driver",
        "  pointed at the fake upstream; cache off unless stated, metrics listener on (the default).",
        "",
        "## Targets",
        "",
        "| target | wanted | this run | |",
        "|---|---|---|---|",
        *targets(results),
        "",
    ]
    sections = [
        ("bench_pipeline", "Added latency (c = 1 and 10) and throughput (c = 50), default and cache+limits"),
        ("bench_concurrency", "5,000 concurrent calls to a slow upstream"),
        ("bench_cache", "Cache hits and coalescing"),
        ("bench_streams", "Streams: delivery, a slow reader, abandon"),
        ("bench_startup", "Startup: `nova run` to ready"),
        ("bench_gateway", "The HTTP gateway against LiteLLM's proxy"),
    ]
    for module, title in sections:
        lines += [f"## {title}", "", f"`bench/{module}.py`", ""]
        if module in results:
            lines.append(importlib.import_module(f"bench.{module}").render(results[module]))
        else:
            lines += ["Did not complete:", "", "```", texts.get(module, "not run").strip(), "```"]
        lines.append("")
    lines += ["## Listener overhead", ""]
    if listener_text is None:
        lines.append("`bench/bench_listeners.py` does not exist yet.")
    else:
        lines += [
            "`bench/bench_listeners.py` (the observability helper's benchmark), its output:",
            "",
            "```",
            listener_text,
            "```",
        ]
    lines += ["", END]
    return "\n".join(lines)


def write(out: Path, figures: str) -> None:
    """Replace the generated part of `out`, keeping the hand-written text around it."""
    old = out.read_text() if out.exists() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        out.write_text(head + figures + tail)
    else:
        out.write_text("# Benchmarks\n\n" + figures + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test of the harness)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    command = "PYTHONPATH=. .venv/bin/python -m bench.run_all" + (" --quick" if args.quick else "")
    info = machine()
    results: dict[str, Any] = {}
    texts: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="nova-bench-") as tmp:
        for module, bench_args, limit in _benches(args.quick):
            figures, text = run_one(module, bench_args, limit, Path(tmp))
            texts[module] = text
            if figures is not None:
                results[module] = figures
            print(text, flush=True)
        listener_text = listeners(Path(tmp))
    if listener_text:
        print(listener_text)
    write(Path(args.out), render(results, texts, info, command, listener_text))
    print("\n".join(["", "Targets:", *targets(results), "", f"written: {args.out}"]))


if __name__ == "__main__":
    main()
