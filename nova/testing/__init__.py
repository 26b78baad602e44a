"""Test doubles for the tests of programs that use Nova.

- `isolated_system(config)`: a Nova system of its own (free admin port, private state directory)
  that the `nova.llm` facade of this process talks to until the block ends; then it is stopped and
  no process of it is left. The pytest plugin (`nova.testing.plugin`) wraps it as `nova_system`.
- `override(replies=[...])` / `override(handler=fn)`: the answers the code under test gets from
  `nova.llm` inside the block. Each reply is decided here, in the test's process (so `fn` may be
  any closure), and delivered through the running system by its test driver, so events, usage,
  costs, streams, typed errors and the async twins behave as they do in production.
- `capture_events()`: the lifecycle events the system publishes while the block runs.

Importing this module starts nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from nova import errors
from nova.config import DriverConfig, NovaConfig
from nova.events import Event
from nova.types import ChatRequest, CompletionRequest

__all__ = [
    "OVERRIDE_DRIVER",
    "EventLog",
    "Override",
    "OverrideExhaustedError",
    "capture_events",
    "current_system",
    "isolated_system",
    "override",
    "test_config",
]

OVERRIDE_DRIVER = "nova-testing"  # the test driver every isolated system gets; overrides answer with it

Request = ChatRequest | CompletionRequest
_current: list[Any] = []  # the isolated systems in use, innermost last


class OverrideExhaustedError(AssertionError):
    """The code under test made more calls than the override has replies for (and no handler)."""


def test_config(**sections: Any) -> NovaConfig:
    """Nova's defaults (the offline test driver) for tests: retries without backoff (a scripted
    retryable error is retried at once) and no circuit breaker (scripted errors never turn into
    CircuitOpenError). Keyword arguments replace whole sections (`cache={...}`, `fallback={...}`)."""
    from nova.config import parse_config

    raw: dict[str, Any] = {
        "fallback": {
            "retry": {"backoff_initial_s": 0.0, "backoff_max_s": 0.0},
            "circuit": {"enabled": False},
        }
    }
    raw.update(sections)
    return parse_config(raw, source="<nova.testing>")


test_config.__test__ = False  # type: ignore[attr-defined]  # not a test for pytest to collect


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _isolated(config: NovaConfig, state_dir: str, port: int) -> NovaConfig:
    system = config.system.model_copy(
        update={"admin_port": port, "state_dir": state_dir, "lane_dir": None, "log_file": None}
    )
    drivers = {**config.drivers, OVERRIDE_DRIVER: DriverConfig(kind="test")}
    return config.model_copy(update={"system": system, "drivers": drivers})


@contextlib.contextmanager
def isolated_system(
    config: NovaConfig | None = None, state_dir: str | os.PathLike[str] | None = None
) -> Iterator[Any]:
    """A started `NovaSystem` that `nova.llm` in this process talks to inside the block.

    Its admin port is a free one and its state (logs, SQLite files) lives in `state_dir` (a new
    temporary directory when None); the configuration's own `[system]` port and directories are
    not used. On exit the system is stopped and every process of it is gone."""
    from nova import llm
    from nova.supervisors.system import NovaSystem, _session_pids

    config = config if config is not None else test_config()
    with contextlib.ExitStack() as stack:
        if state_dir is None:
            state_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="nova-test-"))
        Path(state_dir).mkdir(parents=True, exist_ok=True)
        for tries_left in range(4, -1, -1):  # another process may take the free port before the admin
            cfg = _isolated(config, str(state_dir), _free_port(config.system.host))
            try:
                system = NovaSystem.start(cfg)
                break
            except errors.ConfigurationError as exc:
                if "already in use" not in exc.message or not tries_left:
                    raise
        pids = _session_pids(cfg.system.admin_port)
        hooks = len(llm._call_hooks)
        try:
            _current.append(system)
            with llm._using(system):
                yield system
        finally:
            del llm._call_hooks[hooks:]  # an override entered by hand and never left ends with its test
            _current.remove(system)
            system.stop()
            _wait_gone(pids)


def _wait_gone(pids: list[int], timeout: float = 10.0) -> None:
    """Wait (with a deadline) for the system's processes to exit; kill those that do not."""
    deadline = time.monotonic() + timeout
    while (left := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.02)  # polling another process's exit, bounded by the deadline
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except (OSError, IndexError):
        return False


def current_system() -> Any:
    """The innermost isolated system in use (the `nova_system` fixture's)."""
    if not _current:
        raise errors.ConfigurationError(
            "no isolated Nova system is running: use the nova_system fixture "
            "(or nova.testing.isolated_system()) in this test"
        )
    return _current[-1]


# -- override -------------------------------------------------------------------------------------


class Override:
    """The replies the code under test gets from `nova.llm` while the override is active.

    A reply is anything `nova.drivers.testing.TestDriver` accepts: a string (the answer text), a
    `Response`, a `NovaError` instance (raised to the caller), a dict such as
    `{"text": "...", "usage": {...}, "finish_reason": "length"}` or
    `{"error": "RateLimitError", "retry_after": 1}` or `{"text": "a b c", "fail_after_chunks": 1}`,
    or a function of the request returning one of those. `handler(request)` answers the calls the
    `replies` queue no longer covers; a handler that raises a `NovaError` answers with that error.
    """

    def __init__(
        self, replies: list[Any] | tuple[Any, ...] = (), handler: Callable[[Request], Any] | None = None
    ):
        self._replies: deque[Any] = deque(replies)
        self.handler = handler
        self.requests: list[Request] = []  # what the code under test asked, in order
        self.request_ids: list[str] = []  # the ids of those calls, as in events and errors
        self._lock = threading.Lock()

    def push(self, *replies: Any) -> None:
        with self._lock:
            self._replies.extend(replies)

    def _reply(self, request: Request) -> Any:
        with self._lock:
            reply = self._replies.popleft() if self._replies else self.handler
        if reply is None:
            raise OverrideExhaustedError(
                f"nova.testing.override has no reply left for call {len(self.requests)} "
                "(give more replies=[...] or a handler=)"
            )
        if callable(reply) and not isinstance(reply, errors.NovaError):
            try:
                reply = reply(request)
            except errors.NovaError as exc:
                reply = exc
        return reply

    def __call__(self, call: Any) -> Any:
        """The facade's hook: the same call, answered by the test driver with this reply."""
        with self._lock:
            self.requests.append(call.request)
            self.request_ids.append(call.request_id)
        reply = self._reply(call.request)
        request = call.request.model_copy(update={"extra": {**call.request.extra, "test_reply": reply}})
        # The reply is the answer whatever driver, fallback targets or cache the call names.
        options = call.options.model_copy(
            update={"driver": OVERRIDE_DRIVER, "fallback": False, "cache": False}
        )
        return call.model_copy(update={"request": request, "options": options})

    def __enter__(self) -> Override:
        from nova import llm

        current_system()  # fail here, not at the first call, when no isolated system runs
        llm._call_hooks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        from nova import llm

        with contextlib.suppress(ValueError):
            llm._call_hooks.remove(self)


def override(
    replies: list[Any] | tuple[Any, ...] = (), *, handler: Callable[[Request], Any] | None = None
) -> Override:
    """`with nova.testing.override(replies=["BILLING"]) as calls: ...` (see `Override`)."""
    return Override(replies, handler)


# -- events ---------------------------------------------------------------------------------------


class EventLog:
    """Events published while the block runs, gathered by a subscriber thread of this process.

    Events reach the bus in batches (a few hundred milliseconds after the step), so wait for the
    ones a test needs with `wait_for` rather than reading `events` right after a call."""

    def __init__(self, system: Any, topics: tuple[str, ...] | None = None) -> None:
        self.system = system
        self.topics = topics
        self._events: list[Event] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nova-capture-events", daemon=True)

    @property
    def events(self) -> list[Event]:
        with self._cond:
            return list(self._events)

    def names(self) -> list[str]:
        return [e.name for e in self.events]

    def named(self, name: str, **match: Any) -> list[Event]:
        """Events called `name` whose fields (or `data` keys) equal `match`, e.g. request_id=..."""
        return [
            e
            for e in self.events
            if e.name == name
            and all(getattr(e, k, None) == v or e.data.get(k) == v for k, v in match.items())
        ]

    def wait_for(self, name: str, count: int = 1, timeout: float = 10.0, **match: Any) -> list[Event]:
        """At least `count` events called `name` (matching `match`); AssertionError at the deadline."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(found := self.named(name, **match)) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = sorted({e.name for e in self._events})
                    raise AssertionError(f"no {count}x {name} {match or ''} within {timeout}s; saw {seen}")
                self._cond.wait(left)
        return found

    def _run(self) -> None:
        from nova.messages import EventMessage, GetMetrics, MetricsReply, Subscribe, Unsubscribe

        with self.system.asys.private() as ctx:
            ctx.tell(self.system.event_bus, Subscribe(topics=self.topics))
            # The bus answers in order: its reply to this question means the subscription holds.
            ctx.tell(self.system.event_bus, GetMetrics())
            try:
                while not self._stop.is_set():
                    message = ctx.listen(0.05)
                    if isinstance(message, MetricsReply):
                        self._subscribed.set()
                    elif isinstance(message, EventMessage):
                        with self._cond:
                            self._events.append(message.event)
                            self._cond.notify_all()
            finally:
                ctx.tell(self.system.event_bus, Unsubscribe())

    def __enter__(self) -> EventLog:
        self._thread.start()
        if not self._subscribed.wait(10):
            raise errors.DriverUnavailableError("could not subscribe to Nova's event bus")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def capture_events(topics: tuple[str, ...] | None = None) -> EventLog:
    """`with nova.testing.capture_events() as events: ...; events.wait_for("request.completed")`.

    `topics` limits the capture to signal names or prefixes the bus's `Subscribe` accepts."""
    return EventLog(current_system(), topics)
