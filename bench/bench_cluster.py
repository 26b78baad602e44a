"""Benchmark: calls per second through one Nova node, and through two nodes of a cluster on this machine.

Every node runs the offline test driver with a per-minute limit far above the load (so every call
passes the rate-limit stage and, in a cluster, admits against leases from the leader). Callers
are Thespian contexts of this process, one thread per node, each keeping `--concurrency` calls
in flight; throughput is the calls answered over the wall time of the whole run.

- `one node`: a single node, no [cluster] section (today's path);
- `one node, cluster of one`: the same node as the leader of a cluster of one (leases, relay);
- `two nodes`: leader and follower, each taking half of the callers;
- `two nodes, driver on the other`: the driver requires a capability only the leader has, so
  every call made on the follower crosses to the leader's driver through the relays.

    PYTHONPATH=. .venv/bin/python -m bench.bench_cluster [--calls 2000] [--concurrency 20] [--json out.json]

(admin ports 19880-19887, or from NOVA_BENCH_PORT)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nova.config import parse_config
from nova.messages import CallFailed, CallSucceeded, ChatCall
from nova.supervisors.system import NovaSystem
from nova.types import ChatRequest

__all__ = ["measure"]

PORT = int(os.environ.get("NOVA_BENCH_PORT", "19880"))  # bench/ uses 19800-19899


def _config(tmp: Path, port: int, cluster: dict[str, Any] | None, requires: bool, gpu: bool) -> Any:
    driver: dict[str, Any] = {"kind": "test", "model": "test-model"}
    if requires:
        driver["requires"] = {"gpu": True}
    raw: dict[str, Any] = {
        "system": {"admin_port": port, "state_dir": str(tmp / str(port)), "log_level": "WARNING"},
        "drivers": {"default": driver},
        "ratelimit": {"limits": {"default": {"requests_per_minute": 10_000_000}}},
    }
    if cluster is not None:
        raw["cluster"] = {**cluster, "capabilities": {"gpu": gpu}}
    return parse_config(raw, source="<bench_cluster>")


@contextlib.contextmanager
def _nodes(tmp: Path, base: int, count: int, cluster: bool, requires: bool) -> Iterator[list[NovaSystem]]:
    leader = f"127.0.0.1:{base}"
    with contextlib.ExitStack() as stack:
        nodes = []
        for i in range(count):
            section = {"leader": leader} if cluster else None
            system = NovaSystem.start(_config(tmp, base + i, section, requires, gpu=i == 0))
            stack.callback(system.stop)
            nodes.append(system)
        yield nodes


def _drive(node: NovaSystem, calls: int, concurrency: int, out: dict[str, int]) -> None:
    sent = done = failed = 0
    first = ""
    with node.asys.private() as ctx:
        while done < calls:
            while sent < calls and sent - done < concurrency:
                request = ChatRequest(messages=[{"role": "user", "content": f"ping {sent}"}])
                ctx.tell(node.router, ChatCall(request=request))
                sent += 1
            reply = ctx.listen(30)
            if reply is None:
                raise RuntimeError("no answer within 30 s")
            if isinstance(reply, (CallSucceeded, CallFailed)):
                done += 1
                if isinstance(reply, CallFailed):
                    failed += 1
                    first = first or f"{type(reply.error).__name__}: {reply.error}"
    out["failed"] = out.get("failed", 0) + failed
    if first:
        print(f"  first failure on {node.config.system.admin_port}: {first}")


# scenario -> (nodes, a cluster, the driver needs the leader's capability, the nodes callers use)
SCENARIOS: dict[str, tuple[int, bool, bool, list[int]]] = {
    "one node": (1, False, False, [0]),
    "one node, cluster of one": (1, True, False, [0]),
    "two nodes": (2, True, False, [0, 1]),
    "two nodes, driver on the other": (2, True, True, [1]),
}


def measure(calls: int, concurrency: int, scenario: str) -> dict[str, float]:
    count, cluster, requires, callers_on = SCENARIOS[scenario]
    base = PORT + 2 * list(SCENARIOS).index(scenario)  # a port of its own: the last may still close
    with tempfile.TemporaryDirectory() as tmp, _nodes(Path(tmp), base, count, cluster, requires) as nodes:
        out: dict[str, int] = {}
        for i in callers_on:  # warm up: leases, relays, connections
            _drive(nodes[i], 50, concurrency, out)
        out.clear()
        share = calls // len(callers_on)
        threads = [
            threading.Thread(target=_drive, args=(nodes[i], share, concurrency, out)) for i in callers_on
        ]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
    total = share * len(callers_on)
    return {"calls": total, "failed": out.get("failed", 0), "wall_s": wall, "calls_per_s": total / wall}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--json")
    args = parser.parse_args()
    results = {}
    for scenario in SCENARIOS:
        results[scenario] = measure(args.calls, args.concurrency, scenario)
        r = results[scenario]
        rate, n, failed = r["calls_per_s"], r["calls"], r["failed"]
        print(f"{scenario:34} {rate:8.0f} calls/s  ({n:.0f} calls, {failed:.0f} failed)")
    print(f"machine: {platform.platform()}, {platform.processor() or platform.machine()}")
    if args.json:
        import json

        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
