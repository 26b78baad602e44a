"""The `nova` command (also `python -m nova`): run the supervised system, ask it, look inside it.

nova run                 start Nova in the foreground; SIGTERM/SIGINT drain calls in flight (at most
                         system.drain_s seconds), then stop; --http HOST:PORT also serves the
                         OpenAI-compatible HTTP gateway (docs/http.md)
nova ask TEXT|-          one chat call (to a running `nova run`, else an embedded system); - reads stdin
nova status              the supervision tree: actors, pids, restarts, calls in flight
nova events              a live tail of lifecycle events
nova metrics             counters, latency percentiles, tokens and costs per driver and model
nova config check [FILE] validate a configuration; print its drivers and models, keys masked

Exit codes: 0 done, 1 the call failed, 2 usage or configuration error, 3 Nova not reachable.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import select
import signal
import sys
import time
from typing import Any

from nova.errors import ConfigurationError, NovaError

__all__ = ["main"]

log = logging.getLogger("nova.cli")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


class Unreachable(Exception):
    """No Nova answers where the configuration says it runs."""


def main(argv: list[str] | None = None) -> int:
    from nova import __version__

    parser = argparse.ArgumentParser(prog="nova", description="Nova: LLM drivers and a supervised provider.")
    parser.add_argument("--version", action="version", version=f"nova {__version__}")
    parser.add_argument("--config", help="configuration file (default: $NOVA_CONFIG, ./config.toml)")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run Nova in the foreground")
    run.add_argument(
        "--http",
        metavar="HOST:PORT",
        type=_http_address,
        help="serve the OpenAI-compatible HTTP gateway there (PORT alone: on [server] host, 127.0.0.1)",
    )
    ask = commands.add_parser("ask", help="ask one question")
    ask.add_argument("text", help="the question; - reads it from stdin")
    ask.add_argument("--driver", help="a configured driver name or a driver kind")
    ask.add_argument("-m", "--model", help="a model, or a model string DRIVER/MODEL (openai/gpt-4o-mini)")
    ask.add_argument("--stream", action="store_true")
    ask.add_argument("--timeout", type=_seconds, help="seconds for the whole call")
    ask.add_argument("--json", action="store_true", help="print the response (or each chunk) as JSON")
    status = commands.add_parser("status", help="show the supervision tree of a running Nova")
    status.add_argument("--json", action="store_true")
    status.add_argument("--timeout", type=_seconds, default=5.0, help="seconds to wait for the answer")
    events = commands.add_parser("events", help="tail the events of a running Nova")
    events.add_argument("--topic", action="append", help="event name or prefix, e.g. cache. (repeatable)")
    events.add_argument("--count", type=_count, help="stop after this many events")
    events.add_argument("--json", action="store_true", help="one JSON object per line")
    events.add_argument("--timeout", type=_seconds, help="stop after this many seconds")
    metrics = commands.add_parser("metrics", help="show the metrics of a running Nova")
    metrics.add_argument("--json", action="store_true")
    metrics.add_argument("--timeout", type=_seconds, default=5.0, help="seconds to wait for the answer")
    config = commands.add_parser("config", help="work with the configuration")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    check = config_commands.add_parser("check", help="validate a configuration and show what it resolves to")
    check.add_argument("file", nargs="?", help="default: --config, $NOVA_CONFIG, ./config.toml")
    check.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.config:
        os.environ["NOVA_CONFIG"] = args.config
    try:
        return int(_COMMANDS[args.command](args))
    except ConfigurationError as exc:
        print(f"nova: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Unreachable as exc:
        print(f"nova: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except NovaError as exc:
        print(f"nova: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds above 0: {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:  # 0 or less would wait for nothing until --timeout, or for ever
        raise argparse.ArgumentTypeError(f"must be 1 or more: {text!r}")
    return value


def _http_address(text: str) -> tuple[str | None, int]:
    host, colon, port = text.rpartition(":")
    host = host.strip("[]") if colon else ""
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not HOST:PORT or PORT: {text!r}") from None
    if not 0 < number < 65536:
        raise argparse.ArgumentTypeError(f"not a TCP port: {port!r}")
    return host or None, number


def _with_http(config: Any, address: tuple[str | None, int] | None) -> Any:
    """The configuration with the gateway switched on at `address` (`nova run --http`)."""
    if address is None:
        return config
    host, port = address
    server = config.server.model_copy(
        update={"enabled": True, "port": port, **({"host": host} if host else {})}
    )
    return config.model_copy(update={"server": server})


def _config() -> Any:
    from nova.config import load_config

    return load_config()


def _attached() -> Any:
    from nova.errors import DriverUnavailableError
    from nova.supervisors.system import NovaSystem

    config = _config()
    where = f"{config.system.host}:{config.system.admin_port}"
    try:
        system = NovaSystem.attach(config)
    except DriverUnavailableError as exc:
        raise Unreachable(f"no Nova answers at {where}: {exc.message}") from None
    if system is None:
        raise Unreachable(
            f"connection refused at {where}: no Nova is running there (start one with `nova run`)"
        )
    return system


def cmd_run(args: argparse.Namespace) -> int:
    from nova.supervisors.system import NovaSystem

    config = _with_http(_config(), getattr(args, "http", None))
    logging.basicConfig(
        level=config.system.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    system = NovaSystem.start(config, discovery=True)
    print(
        f"nova: running on {config.system.host}:{config.system.admin_port} "
        f"with drivers {', '.join(sorted(config.drivers))} (config: {config.source})",
        flush=True,
    )
    if config.server.enabled:
        print(f"nova: HTTP gateway on http://{config.server.host}:{config.server.port}", flush=True)
    stopping: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    watched = _pidfds({"root supervisor": system.root_pid, "Thespian admin": system.admin_pid})
    misses = 0
    try:
        while not stopping:
            died = _wait_for_death(watched, config.supervision.heart_interval_s)
            if died:  # Thespian restarts no top-level actor: exit, and let the service manager restart us
                print(f"nova: the {died} died; shutting down", file=sys.stderr, flush=True)
                return 1
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
        if not _drain(system, timeout=config.system.drain_s):
            print(
                f"nova: calls still in flight after {config.system.drain_s:g}s (system.drain_s);"
                " stopping anyway",
                file=sys.stderr,
                flush=True,
            )
        print("nova: stopped", flush=True)
        return 0
    finally:
        for fd in watched:
            os.close(fd)
        system.stop()


def _pidfds(processes: dict[str, int]) -> dict[int, str]:
    """A pidfd (readable once the process has exited) per process that has a pid."""
    fds: dict[int, str] = {}
    for name, pid in processes.items():
        if pid > 0:
            with contextlib.suppress(OSError):
                fds[os.pidfd_open(pid)] = name
    return fds


def _wait_for_death(fds: dict[int, str], timeout: float) -> str | None:
    """Wait up to `timeout` seconds (less when a signal comes); the name of a process that died."""
    try:
        ready, _, _ = select.select(list(fds), [], [], timeout)
    except InterruptedError:
        return None
    return fds[ready[0]] if ready else None


def _drain(system: Any, timeout: float) -> bool:
    """Stop new calls at the router, then wait until no actor of the tree holds a call, for at
    most `timeout` seconds in all; True when none is held."""
    from nova.actors.protocol import Drain
    from nova.messages import GetStatus, WhereIsRouter

    deadline = time.monotonic() + timeout

    def left() -> float:  # each question waits at most 2 s, and never past the deadline
        return max(0.01, min(2.0, deadline - time.monotonic()))

    # the router now: the one the system started with may have been restarted since
    where = system.ask(system.root, WhereIsRouter(), left())
    system.ask(getattr(where, "router", None) or system.router, Drain(), left())
    while time.monotonic() < deadline:
        reply = system.ask(system.root, GetStatus(), left())
        if reply is not None and _calls_held(reply.tree) == 0:
            return True
        time.sleep(0.05)
    return False


def _calls_held(node: dict[str, Any]) -> int:
    """Calls in flight, queued or parked anywhere under `node` of the status tree."""
    own = sum(int(node.get(key, 0)) for key in ("in_flight", "queued", "parked"))
    return own + sum(_calls_held(child) for child in node.get("children", []))


def cmd_ask(args: argparse.Namespace) -> int:
    from nova import llm

    text = sys.stdin.read() if args.text == "-" else args.text
    if not text.strip():
        print("nova: nothing to ask (the question is empty)", file=sys.stderr)
        return EXIT_USAGE
    options: dict[str, Any] = {
        k: v for k, v in (("driver", args.driver), ("model", args.model), ("timeout", args.timeout)) if v
    }
    try:
        _reach(llm)
        if args.stream:
            for chunk in llm.stream(text, **options):
                print(
                    chunk.model_dump_json() if args.json else chunk.text,
                    end="\n" if args.json else "",
                    flush=True,
                )
            if not args.json:
                print()
        else:
            response = llm.chat(text, **options)
            print(response.model_dump_json() if args.json else response.text)
    except NovaError as exc:
        if args.json:
            print(json.dumps({"error": _error_json(exc)}), flush=True)
        raise
    finally:
        llm.shutdown()
    return EXIT_OK


def _reach(llm: Any) -> None:
    """Attach to the running Nova (or start an embedded one) before the call, so that a Nova
    that does not answer is told apart from a call that failed."""
    from nova.errors import DriverUnavailableError

    try:
        llm.system()
    except DriverUnavailableError as exc:
        raise Unreachable(f"Nova is not reachable: {exc.message}") from None


def _error_json(exc: NovaError) -> dict[str, Any]:
    fields = ("message", "driver", "model", "status_code", "request_id", "retryable", "retry_after")
    return {"type": type(exc).__name__, **{name: getattr(exc, name, None) for name in fields}}


def cmd_status(args: argparse.Namespace) -> int:
    from nova.messages import GetStatus

    system = _attached()
    reply = system.ask(system.root, GetStatus(), args.timeout)
    if reply is None:
        raise Unreachable(f"the root supervisor did not answer within {args.timeout:g}s")
    if args.json:
        print(json.dumps(reply.tree, indent=2))
    else:
        _print_tree(reply.tree)
    return EXIT_OK


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
    until = None if args.timeout is None else time.monotonic() + args.timeout
    with system.asys.private() as ctx:
        ctx.tell(system.event_bus, Subscribe(topics=tuple(args.topic) if args.topic else None))
        try:
            while args.count is None or seen < args.count:
                left = 1.0 if until is None else until - time.monotonic()
                if left <= 0:
                    break
                message = ctx.listen(min(1.0, left))
                if isinstance(message, EventMessage):
                    event = message.event
                    print(
                        event.model_dump_json(exclude_defaults=True) if args.json else _event_line(event),
                        flush=True,
                    )
                    seen += 1
        finally:
            ctx.tell(system.event_bus, Unsubscribe())
    return EXIT_OK


def _event_line(event: Any) -> str:
    """One event for a person: number, time, name, target, duration, request, error."""
    stamp = time.strftime("%H:%M:%S", time.localtime(event.ts)) + f".{int(event.ts * 1000) % 1000:03d}"
    target = "/".join(x for x in (event.driver, event.model) if x)
    parts = [f"{event.seq:>6}", stamp, f"{event.name:<26}", target]
    if event.duration_s is not None:
        parts.append(f"{event.duration_s * 1000:.1f}ms")
    if event.request_id:
        parts.append(f"req={event.request_id}")
    if event.error_type:
        parts.append(f"{event.error_type}: {event.error_message or ''}".rstrip(": "))
    return "  ".join(p for p in parts if p)


def cmd_metrics(args: argparse.Namespace) -> int:
    from nova.messages import GetMetrics

    system = _attached()
    reply = system.ask(system.event_bus, GetMetrics(), args.timeout)
    if reply is None:
        raise Unreachable(f"the event bus did not answer within {args.timeout:g}s")
    if args.json:
        print(json.dumps(reply.snapshot, indent=2))
    else:
        from nova.metrics import MetricsSnapshot, render_table

        print(render_table(MetricsSnapshot.model_validate(reply.snapshot)))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """`nova config check [FILE]`: load and validate like `nova run`, then show the result."""
    from nova.config import load_config
    from nova.supervisors.system import preflight

    config = load_config(args.file)
    preflight(config)  # what `nova run` would find only when it starts
    drivers = {
        name: {
            "kind": driver.kind,
            "processes": driver.processes,
            "options": _masked(driver.options),
            **({"from_environment": list(config.env_drivers[name])} if name in config.env_drivers else {}),
        }
        for name, driver in sorted(config.drivers.items())
    }
    default_model = config.llm.model or str(config.drivers[config.llm.driver].options.get("model", ""))
    fallback = _fallback_targets(config)
    export = config.otel_export
    telemetry = {
        signal: {"exporter": exporter, "from": origin}
        for signal, exporter, origin in (
            ("traces", export.traces, export.traces_from),
            ("metrics", export.metrics, export.metrics_from),
        )
    }
    if args.json:
        report = {
            "source": config.source,
            "default": {"driver": config.llm.driver, "model": default_model},
            "drivers": drivers,
            "fallback": fallback,
            "telemetry": telemetry,
        }
        print(json.dumps(report, indent=2))
        return EXIT_OK
    print(f"{config.source}: ok")
    print(
        f"default: {config.llm.driver}/{default_model}" if default_model else f"default: {config.llm.driver}"
    )
    print("drivers:")
    for name, driver in drivers.items():
        options = " ".join(f"{k}={_show(v)}" for k, v in driver["options"].items())
        origin = f"  (from {', '.join(driver['from_environment'])})" if "from_environment" in driver else ""
        print(f"  {name}  kind={driver['kind']}  {options}{origin}".rstrip())
    if fallback:
        print(f"fallback: {', '.join(fallback)}")
    if export.enabled:
        print(
            "opentelemetry: "
            + "  ".join(f"{signal}={t['exporter']} (from {t['from']})" for signal, t in telemetry.items())
        )
    return EXIT_OK


def _fallback_targets(config: Any) -> list[str]:
    """The configured fallback targets, each with the model it will use."""
    from nova.fallback.settings import default_models

    defaults = default_models(config.drivers)
    targets = config.fallback.targets
    return [str(t) if t.model else f"{t.driver}/{defaults.get(t.driver, '')}".rstrip("/") for t in targets]


_SECRET_WORDS = ("key", "token", "secret", "password", "authorization", "credential")


def _masked(value: Any, name: str = "") -> Any:
    """Driver options for display: secrets (by value type or by name) masked, the rest redacted."""
    from nova.secrets import Secret, redact

    if isinstance(value, Secret) or (value and any(w in name.lower() for w in _SECRET_WORDS)):
        return "***"
    if isinstance(value, dict):
        return {k: _masked(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_masked(v) for v in value]
    return redact(value) if isinstance(value, str) else value


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


_COMMANDS = {
    "run": cmd_run,
    "ask": cmd_ask,
    "status": cmd_status,
    "events": cmd_events,
    "metrics": cmd_metrics,
    "config": cmd_config,
}

if __name__ == "__main__":
    sys.exit(main())
