"""Benchmark: `nova run` from process start to ready, cold, with the default config and with cache+limits.

Each start is a new `nova run` process (`python -m nova.cli --config <file> run`, as an operator
starts it), timed from just before it is spawned (`time.time()`):

- ready line: `nova run` prints "nova: running" (the supervision tree is up);
- first call answered: from the ready line, this process attaches (`NovaSystem.attach`, a
  `Bridge` on its lanes) and makes one chat call, which is answered;
- `nova status` answered: then `nova status` runs as a CLI command and prints the tree (its
  own interpreter start is part of it; its wall time alone is shown too);
- stop: SIGTERM to `nova run` until every process of the tree has gone.

Configs: the repository's `config.toml` (the offline test driver), and the same file with the
SQLite cache (`nova run`'s persistent backend) and rate limits on. Only the admin port and the
state directory (a new temporary one per start) are changed. Medians over the starts; the two
configs alternate.

    PYTHONPATH=. .venv/bin/python -m bench.bench_startup [--starts 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

from bench import report
from bench.host import admin_session, stop_nova, to_toml

__all__ = ["configs", "measure", "render"]

ROOT = Path(__file__).resolve().parent.parent
START_LIMIT_S = 60.0


def configs(admin_port: int) -> dict[str, dict[str, Any]]:
    """The raw configs, by label: the default file, and it with the cache and rate limits on."""
    default = tomllib.loads((ROOT / "config.toml").read_text())
    default.setdefault("system", {})["admin_port"] = admin_port
    default["system"]["log_level"] = "WARNING"
    on = copy.deepcopy(default)
    on["cache"] = {"enabled": True, "backend": "sqlite"}
    on["ratelimit"] = {
        "enabled": True,
        "default": {"requests_per_minute": 100_000, "tokens_per_minute": 100_000_000, "max_concurrent": 1000},
    }
    return {"default config.toml": default, "cache (SQLite) + rate limits": on}


def one_start(raw: dict[str, Any]) -> dict[str, float]:
    from nova.actors.bridge import Bridge
    from nova.config import parse_config
    from nova.messages import ChatCall
    from nova.supervisors.system import NovaSystem
    from nova.types import ChatRequest, Message

    state = Path(tempfile.mkdtemp(prefix="nova-bench-startup-"))
    raw = {**raw, "system": {**raw["system"], "state_dir": str(state)}}
    config = parse_config(raw, source="<bench>")
    path = state / "config.toml"
    path.write_text(to_toml(raw))
    out = state / "nova-run.out"
    request = ChatRequest(messages=(Message(role="user", content="ping"),))
    with open(out, "w") as log:  # a file, not a pipe: the admin daemon would inherit a pipe
        start = time.time()
        proc = subprocess.Popen(
            [sys.executable, "-m", "nova.cli", "--config", str(path), "run"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        sid = None
        try:
            deadline = time.monotonic() + START_LIMIT_S
            while "nova: running" not in out.read_text():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nova run did not start: {out.read_text()[-2000:]}")
                time.sleep(0.005)
            ready = time.time()
            sid = admin_session(config.system.admin_port)
            system = NovaSystem.attach(config)
            if system is None:
                raise RuntimeError("nova run said it was running, but nothing listens on its port")
            bridge = Bridge(system.lanes)
            try:
                attached = time.time()
                bridge.call(ChatCall(request=request), 30)
                answered = time.time()
            finally:
                bridge.close()
            status_start = time.time()
            status = subprocess.run(
                [sys.executable, "-m", "nova.cli", "--config", str(path), "status"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )
            status_end = time.time()
            if status.returncode != 0 or "router" not in status.stdout:
                raise RuntimeError(f"nova status failed: {status.stdout[-500:]} {status.stderr[-1000:]}")
        finally:
            stopping = time.time()
            left = stop_nova(proc, sid)
            stopped = time.time()
        shutil.rmtree(state, ignore_errors=True)
    if left:
        raise RuntimeError(f"processes left after nova run stopped: {left}")
    return {
        "ready_s": ready - start,
        "attach_s": attached - ready,
        "first_call_s": answered - start,
        "status_s": status_end - start,
        "status_cli_s": status_end - status_start,
        "stop_s": stopped - stopping,
    }


def measure(admin_port: int, starts: int) -> dict[str, Any]:
    import nova.actors.bridge  # noqa: F401  # imported before the clock starts: not part of a start
    import nova.supervisors.system  # noqa: F401

    runs: dict[str, list[dict[str, float]]] = {}
    errors: dict[str, str] = {}
    for _ in range(starts):
        for label, raw in configs(admin_port).items():
            try:
                runs.setdefault(label, []).append(one_start(raw))
            except Exception as exc:
                errors.setdefault(label, f"{type(exc).__name__}: {exc}"[:500])
    medians = {
        label: {"starts": len(rows), **{k: statistics.median(r[k] for r in rows) for k in rows[0]}}
        for label, rows in runs.items()
        if rows
    }
    return {"starts": starts, "medians": medians, "runs": runs, "errors": errors}


def render(results: dict[str, Any]) -> str:
    lines = [
        f"Medians of {results['starts']} cold starts each, seconds from spawning `nova run`.",
        "",
        "| config | ready line | first call answered | `nova status` answered | `nova status` alone "
        "| attach (after the ready line) | stop (SIGTERM → all gone) | starts |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, row in results["medians"].items():
        lines.append(
            f"| {label} | {row['ready_s']:.2f} | {row['first_call_s']:.2f} | {row['status_s']:.2f} | "
            f"{row['status_cli_s']:.2f} | {row['attach_s']:.3f} | {row['stop_s']:.2f} | {row['starts']} |"
        )
    if results["errors"]:
        lines += ["", "First errors: " + "; ".join(f"{k}: {v}" for k, v in results["errors"].items())]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--admin-port", type=int, default=19860)
    parser.add_argument("--starts", type=int, default=5, help="cold starts per config")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    results = measure(args.admin_port, args.starts)
    report(results, render, args.json)


if __name__ == "__main__":
    main()
