"""The `nova` command: run the supervised system, ask it, and look inside it.

nova run       start Nova in the foreground; SIGTERM/SIGINT drain calls in flight, then stop
nova ask TEXT  one chat call (to a running `nova run`, else an embedded system)
nova status    the supervision tree: actors, pids, restarts, calls in flight
nova events    a live tail of lifecycle events
nova metrics   counters, latency percentiles, tokens and costs per driver and model
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from typing import Any

from nova.errors import NovaError

__all__ = ["main"]

log = logging.getLogger("nova.cli")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nova", description="Nova: LLM drivers and a supervised provider.")
    parser.add_argument("--config", help="configuration file (default: $NOVA_CONFIG, ./config.toml)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="run Nova in the foreground")
    ask = commands.add_parser("ask", help="ask one question")
    ask.add_argument("text")
    ask.add_argument("--driver")
    ask.add_argument("--model")
    ask.add_argument("--stream", action="store_true")
    commands.add_parser("status", help="show the supervision tree of a running Nova")
    events = commands.add_parser("events", help="tail the events of a running Nova")
    events.add_argument("--topic", action="append", help="event name or prefix, e.g. cache. (repeatable)")
    events.add_argument("--count", type=int, help="stop after this many events")
    metrics = commands.add_parser("metrics", help="show the metrics of a running Nova")
    metrics.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.config:
        import os

        os.environ["NOVA_CONFIG"] = args.config
    try:
        return int(_COMMANDS[args.command](args))
    except NovaError as exc:
        print(f"nova: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _config() -> Any:
    from nova.config import load_config

    return load_config()


def _attached() -> Any:
    from nova.errors import ConfigurationError
    from nova.system import NovaSystem

    config = _config()
    system = NovaSystem.attach(config)
    if system is None:
        raise ConfigurationError(
            f"no Nova is running on {config.system.host}:{config.system.admin_port} "
            "(start one with `nova run`)"
        )
    return system


def cmd_run(args: argparse.Namespace) -> int:
    from nova.system import NovaSystem

    config = _config()
    logging.basicConfig(
        level=config.system.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    system = NovaSystem.start(config)
    print(
        f"nova: running on {config.system.host}:{config.system.admin_port} "
        f"with drivers {', '.join(sorted(config.drivers))} (config: {config.source})",
        flush=True,
    )
    stopping: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    misses = 0
    try:
        while not stopping:
            time.sleep(config.supervision.heart_interval_s)
            if stopping:
                break
            if system.ping(timeout=config.supervision.heart_interval_s):
                misses = 0
                continue
            misses += 1
            log.warning(
                "the root supervisor missed a heartbeat (%d/%d)", misses, config.supervision.heart_misses
            )
            if misses >= config.supervision.heart_misses:
                print(
                    "nova: the supervision tree stopped answering; shutting down", file=sys.stderr, flush=True
                )
                return 1
        print("nova: draining calls in flight", flush=True)
        _drain(system, timeout=config.llm.timeout_s)
        print("nova: stopped", flush=True)
        return 0
    finally:
        system.stop()


def _drain(system: Any, timeout: float) -> None:
    """Stop new calls at the router, then wait until no actor of the tree holds a call."""
    from actors.protocol import Drain
    from nova.messages import GetStatus

    deadline = time.monotonic() + timeout
    system.ask(system.router, Drain(), 2.0)
    while time.monotonic() < deadline:
        reply = system.ask(system.root, GetStatus(), 2.0)
        if reply is not None and _calls_held(reply.tree) == 0:
            return
        time.sleep(0.05)


def _calls_held(node: dict[str, Any]) -> int:
    """Calls in flight, queued or parked anywhere under `node` of the status tree."""
    own = sum(int(node.get(key, 0)) for key in ("in_flight", "queued", "parked"))
    return own + sum(_calls_held(child) for child in node.get("children", []))


def cmd_ask(args: argparse.Namespace) -> int:
    from nova import llm

    options = {k: v for k, v in (("driver", args.driver), ("model", args.model)) if v}
    try:
        if args.stream:
            for chunk in llm.stream(args.text, **options):
                print(chunk.text, end="", flush=True)
            print()
        else:
            print(llm.chat(args.text, **options).text)
    finally:
        llm.shutdown()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from nova.messages import GetStatus

    system = _attached()
    reply = system.ask(system.root, GetStatus(), 5.0)
    if reply is None:
        print("nova: the root supervisor did not answer", file=sys.stderr)
        return 1
    _print_tree(reply.tree)
    return 0


def _print_tree(node: dict[str, Any], indent: str = "") -> None:
    extra = "".join(
        f" {k}={v}" for k, v in node.items() if k not in ("name", "pid", "alive", "restarts", "children")
    )
    state = f"pid {node['pid']}" if node["alive"] else "NOT ANSWERING"
    print(f"{indent}{node['name']}  {state}  restarts={node['restarts']}{extra}")
    for child in node["children"]:
        _print_tree(child, indent + "  ")


def cmd_events(args: argparse.Namespace) -> int:
    from nova.messages import EventMessage, Subscribe, Unsubscribe

    system = _attached()
    seen = 0
    with system.asys.private() as ctx:
        ctx.tell(system.event_bus, Subscribe(topics=tuple(args.topic) if args.topic else None))
        try:
            while args.count is None or seen < args.count:
                message = ctx.listen(1.0)
                if isinstance(message, EventMessage):
                    print(message.event.model_dump_json(exclude_defaults=True), flush=True)
                    seen += 1
        finally:
            ctx.tell(system.event_bus, Unsubscribe())
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    from nova.messages import GetMetrics

    system = _attached()
    reply = system.ask(system.event_bus, GetMetrics(), 5.0)
    if reply is None:
        print("nova: the event bus did not answer", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(reply.snapshot, indent=2))
    else:
        from nova.metrics import MetricsSnapshot, render_table

        print(render_table(MetricsSnapshot.model_validate(reply.snapshot)))
    return 0


_COMMANDS = {
    "run": cmd_run,
    "ask": cmd_ask,
    "status": cmd_status,
    "events": cmd_events,
    "metrics": cmd_metrics,
}

if __name__ == "__main__":
    sys.exit(main())
