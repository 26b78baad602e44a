"""The Thespian floor: what the pipeline's messages cost through bare actors (no HTTP, no Nova code).

Three relay actors stand for the router, the fallback stage and the driver; a call visits them as
a Nova call would (6 messages), without the fallback stage (4), or goes to the driver alone (2).
The caller opens a `private()` context per call, as `Bridge.call` does.

Run on its own it compares Thespian's transport with and without `nova.actors.patches`, alternating
which goes first from round to round, each on a fresh system forked after the change:

    PYTHONPATH=. .venv/bin/python -m bench.floor [--rounds 3] [--calls 2000] [--port 19880]

CPU is user + system time of every process of the system (admin, logger, the three relays) and of
this process (the caller), per call.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from thespian.actors import Actor  # type: ignore[import-untyped]

from bench import chat_request, percentile

__all__ = ["Hop", "Relay", "compare", "thespian_floor"]


@dataclass(frozen=True)
class Hop:
    """A message for the Thespian floor: it visits `route` in order, then `payload` goes to `reply_to`."""

    route: tuple[Any, ...]
    reply_to: Any
    payload: Any


class Relay(Actor):  # type: ignore[misc]
    def receiveMessage(self, message: Any, sender: Any) -> None:  # noqa: N802 - Thespian's name
        if isinstance(message, Hop):
            if message.reply_to is None:
                message = replace(message, reply_to=sender)
            if message.route:
                self.send(message.route[0], replace(message, route=message.route[1:]))
            else:
                self.send(message.reply_to, message.payload)


@contextlib.contextmanager
def thespian_floor(admin_port: int) -> Iterator[dict[int, Callable[[], Any]]]:
    """Calls through bare Thespian actors (no HTTP, no Nova logic), by number of messages: 6 is
    the pipeline's path (caller -> router -> fallback -> driver -> fallback -> router -> caller),
    4 skips the fallback stage, 2 is caller -> driver -> caller. Started before any thread of this
    process exists (the admin forks from it)."""
    from thespian.actors import ActorSystem

    from nova.supervisors.system import bind_to, name_messages_by_type

    bind_to("127.0.0.1")
    name_messages_by_type()
    asys = ActorSystem(
        "multiprocTCPBase", {"Admin Port": admin_port}, logDefs={"version": 1}, transientUnique=True
    )
    try:
        router, fallback, driver = (asys.createActor(Relay) for _ in range(3))
        request = chat_request()
        routes = {
            6: (router, (fallback, driver, fallback, router)),
            4: (router, (driver, router)),
            2: (driver, ()),
        }

        def caller(first: Any, route: tuple[Any, ...]) -> Callable[[], Any]:
            def call() -> Any:
                with asys.private() as ctx:
                    ctx.tell(first, Hop(route, None, request))
                    reply = ctx.listen(30)
                if reply is None:
                    raise TimeoutError("no answer from the bare actors within 30 s")
                return reply

            return call

        yield {n: caller(first, route) for n, (first, route) in routes.items()}
    finally:
        asys.shutdown()


def _session_cpu_s(sid: int | None) -> float:
    """User + system CPU seconds so far of every process of session `sid`, and of this process."""
    from bench.host import session_pids

    ticks = os.sysconf("SC_CLK_TCK")
    total = time.process_time()
    for pid in session_pids(sid) if sid is not None else []:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def _measure(call: Callable[[], Any], calls: int, sid: int | None) -> dict[str, float]:
    latencies = []
    cpu = _session_cpu_s(sid)
    for _ in range(calls):
        start = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - start)
    cpu = _session_cpu_s(sid) - cpu
    return {
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p90_ms": percentile(latencies, 90) * 1e3,
        "mean_ms": sum(latencies) / len(latencies) * 1e3,
        "cpu_ms_per_call": cpu * 1e3 / calls,
    }


def compare(rounds: int, calls: int, port: int) -> dict[str, dict[int, dict[str, float]]]:
    """{variant: {messages: figures}} for Thespian as installed ("thespian") and with
    `nova.actors.patches` applied ("patched"): medians over rounds of p50/p90/mean latency and CPU."""
    from bench.host import admin_session
    from nova.actors import patches

    runs: dict[str, dict[int, list[dict[str, float]]]] = {"thespian": {}, "patched": {}}
    for r in range(rounds):
        for variant in ("thespian", "patched") if r % 2 == 0 else ("patched", "thespian"):
            if variant == "patched":
                assert patches.apply(), "the patches refused this Thespian version"
            else:
                patches.restore()
            with thespian_floor(port) as floor:
                sid = admin_session(port)
                for n in (2, 6):
                    _measure(floor[n], max(calls // 10, 50), sid)  # warm up sockets and imports
                for n in (2, 6):
                    runs[variant].setdefault(n, []).append(_measure(floor[n], calls, sid))
            port += 1
    patches.restore()
    return {
        variant: {n: {k: sorted(m[k] for m in ms)[len(ms) // 2] for k in ms[0]} for n, ms in by_n.items()}
        for variant, by_n in runs.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--port", type=int, default=19880, help="first admin port; one more per system")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    results = compare(args.rounds, args.calls, args.port)
    print(f"Thespian floor, {args.calls} sequential calls per round, median of {args.rounds} rounds")
    print("| messages | variant | p50 ms | p90 ms | mean ms | CPU ms/call (all processes) |")
    print("|---|---|---|---|---|---|")
    for n in (2, 6):
        for variant in ("thespian", "patched"):
            f = results[variant][n]
            print(
                f"| {n} | {variant} | {f['p50_ms']:.2f} | {f['p90_ms']:.2f} | {f['mean_ms']:.2f}"
                f" | {f['cpu_ms_per_call']:.2f} |"
            )
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)


if __name__ == "__main__":
    main()
