"""Shared tools for tests that run a real Nova actor system (multiprocTCPBase).

- `next_port()` hands out admin ports from 19900–20199 (or from `NOVA_TEST_PORTS`), never the same one
  twice in a session.
- `running(config)` starts a `NovaSystem`, yields it, stops it, and fails the test if any process
  of the system's session is still alive afterwards (after killing it, so nothing leaks).
- `Calls` sends calls to the router from a private Thespian context and returns raw replies, so a
  test sees exactly what an actor would (duplicates included).
- `EventTap` subscribes to the event bus from a background thread and waits for events.
- `status`, `find_node`, `actor_pid`, `session_pids` look inside the running tree.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from nova.config import NovaConfig, parse_config
from nova.events import Event
from nova.messages import (
    CallFailed,
    CallOptions,
    CallSucceeded,
    ChatCall,
    CompleteCall,
    EventMessage,
    GetStatus,
    StreamCall,
    StreamChunk,
    Subscribe,
    Unsubscribe,
    WhereIsRouter,
)
from nova.supervisors.system import NovaSystem
from nova.types import ChatRequest, CompletionRequest
from tests.waiting import wait_until

__all__ = [
    "Calls",
    "EventTap",
    "HTTP_PORTS",
    "PORTS",
    "actor_pid",
    "call_options",
    "chat_call",
    "complete_call",
    "config_for",
    "find_node",
    "kill_and_wait",
    "live_pid",
    "log_lines",
    "next_port",
    "pid_alive",
    "router_of",
    "running",
    "session_of",
    "session_pids",
    "status",
    "stream_call",
    "wait_until",
]

# Admin ports of this test session, then HTTP ports for the gateway's tests; NOVA_TEST_PORTS="21000"
# moves both, so that suites run at once from several checkouts do not race for the same ports
# (bench/ uses 19800-19899).
_BASE = int(os.environ.get("NOVA_TEST_PORTS", "19900"))
PORTS = range(_BASE, _BASE + 300)
HTTP_PORTS = range(_BASE + 300, _BASE + 400)
_used: set[int] = set()
_port_lock = threading.Lock()


def next_port() -> int:
    """A free admin port of our range that this test session has not used yet."""
    from nova.supervisors.system import port_in_use

    with _port_lock:
        for port in PORTS:
            if port not in _used:
                _used.add(port)
                if not port_in_use("127.0.0.1", port):
                    return port
    raise RuntimeError(f"no free admin port left in {PORTS.start}-{PORTS.stop - 1}")


def config_for(tmp: Path, port: int | None = None, **sections: Any) -> NovaConfig:
    """A validated config on a fresh port with its state (logs, SQLite files) under `tmp`."""
    system = {"admin_port": port or next_port(), "state_dir": str(tmp), **sections.pop("system", {})}
    raw: dict[str, Any] = {"system": system, **sections}
    raw.setdefault("drivers", {"default": {"kind": "test", "model": "test-model"}})
    return parse_config(raw, source=f"<test config {tmp}>")


# -- processes ------------------------------------------------------------------------------------


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def session_of(admin_port: int) -> int | None:
    """The session id of the admin listening on `admin_port` (every actor shares it)."""
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr.port == admin_port:
                    return os.getsid(proc.pid)
    return None


def session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes of session `sid`, never this test process."""
    pids = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if proc.pid != os.getpid() and os.getsid(proc.pid) == sid and _alive(proc):
                pids.append(proc.pid)
    return pids


def kill_and_wait(pid: int, timeout: float = 5.0) -> None:
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not pid_alive(pid), timeout), f"pid {pid} survived SIGKILL"


def pid_alive(pid: int) -> bool:
    try:
        return _alive(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return False


def _reap_session(sid: int) -> list[int]:
    """Kill what is left of a session; returns the pids that were still alive."""
    left = session_pids(sid)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


@contextlib.contextmanager
def running(config: NovaConfig) -> Iterator[NovaSystem]:
    """A started system; on exit it is stopped and must have left no process behind."""
    system = NovaSystem.start(config)
    sid = session_of(config.system.admin_port)
    try:
        assert sid is not None, "no admin listens on the configured port"
        yield system
    finally:
        system.stop()
        if sid is not None:
            gone = wait_until(lambda: not session_pids(sid), timeout=5.0)
            left = [] if gone else _reap_session(sid)
            assert not left, f"processes of the stopped system still alive: {left}"


# -- looking inside the tree ----------------------------------------------------------------------


def status(system: NovaSystem, timeout: float = 5.0) -> dict[str, Any]:
    reply = system.ask(system.root, GetStatus(), timeout)
    assert reply is not None, "the root did not answer GetStatus"
    return reply.tree  # type: ignore[no-any-return]


def find_node(tree: dict[str, Any], *path: str) -> dict[str, Any]:
    """The node at `path` below the root, e.g. find_node(tree, "drivers", "default"); a node
    that is missing (its parent is restarting it) comes back as not alive."""
    node = tree
    for name in path:
        found = next((c for c in node["children"] if c["name"] == name), None)
        if found is None:
            return {"name": name, "pid": None, "alive": False, "restarts": None, "children": []}
        node = found
    return node


def live_pid(system: NovaSystem, *path: str) -> int | None:
    """The pid of the actor at `path` when it answers, else None."""
    node = find_node(status(system), *path)
    return int(node["pid"]) if node["alive"] else None


def actor_pid(system: NovaSystem, *path: str) -> int:
    pid = wait_until(lambda: live_pid(system, *path))
    assert pid is not None, f"{'/'.join(path)} does not answer"
    return int(pid)


def router_of(system: NovaSystem, timeout: float = 5.0) -> Any:
    reply = system.ask(system.root, WhereIsRouter(), timeout)
    assert reply is not None, "the root did not tell where the router is"
    return reply.router


# -- calls ----------------------------------------------------------------------------------------


def chat_call(
    text: str,
    *,
    script: dict[str, Any] | None = None,
    log: Path | None = None,
    test_reply: dict[str, Any] | None = None,
    model: str | None = None,
    **options: Any,
) -> ChatCall:
    """A ChatCall; `script` is what tests/actors/handlers.record answers, `log` where it writes."""
    extra: dict[str, Any] = {}
    if script is not None:
        extra["script"] = script
    if log is not None:
        extra["log"] = str(log)
    if test_reply is not None:
        extra["test_reply"] = test_reply
    request = ChatRequest(
        messages=[{"role": "user", "content": text}], extra=extra, **({"model": model} if model else {})
    )
    return ChatCall(request=request, options=call_options(**options))


def call_options(**options: Any) -> CallOptions:
    """CallOptions from the facade's names (timeout=, ttl=, fallback=[...])."""
    renamed = {"timeout": "timeout_s", "ttl": "ttl_s"}
    options = {renamed.get(k, k): v for k, v in options.items()}
    if isinstance(options.get("fallback"), list):
        options["fallback"] = tuple(options["fallback"])
    return CallOptions(**options)


def stream_call(text: str, **kwargs: Any) -> StreamCall:
    call = chat_call(text, **kwargs)
    return StreamCall(request=call.request, options=call.options)


def complete_call(prompt: str, **options: Any) -> CompleteCall:
    return CompleteCall(request=CompletionRequest(prompt=prompt), options=call_options(**options))


class Calls:
    """Sends calls to a router and gathers every reply, the way a user's actor would see them."""

    def __init__(self, system: NovaSystem, router: Any = None) -> None:
        self.system = system
        self.router = router if router is not None else system.router

    def one(self, call: Any, timeout: float = 30.0) -> Any:
        """The final reply (CallSucceeded or CallFailed) of one call; chunks are dropped."""
        return next(m for m in self.many([call], timeout)[call.request_id] if _final(m))

    def ok(self, call: Any, timeout: float = 30.0) -> Any:
        reply = self.one(call, timeout)
        assert isinstance(reply, CallSucceeded), f"expected success, got {reply!r}"
        return reply.response

    def error(self, call: Any, timeout: float = 30.0) -> Any:
        reply = self.one(call, timeout)
        assert isinstance(reply, CallFailed), f"expected an error, got {reply!r}"
        return reply.error

    def many(self, calls: list[Any], timeout: float = 30.0, linger: float = 0.0) -> dict[str, list[Any]]:
        """Every message that came back for each call, in arrival order, until each has a final
        reply; then `linger` seconds more to catch a duplicate."""
        replies: dict[str, list[Any]] = {c.request_id: [] for c in calls}
        with self.system.asys.private() as ctx:
            for call in calls:
                ctx.tell(self.router, call)
            deadline = time.monotonic() + timeout

            def waiting() -> bool:  # finals counted per message: two calls may share a request id
                finals = sum(1 for r in replies.values() for m in r if _final(m))
                return finals < len(calls) or not all(map(_complete, replies.values()))

            while waiting() and (left := deadline - time.monotonic()) > 0:
                _file(replies, ctx.listen(left))
            end = time.monotonic() + linger
            while (left := end - time.monotonic()) > 0:
                _file(replies, ctx.listen(left))
        missing = [rid for rid, r in replies.items() if not any(_final(m) for m in r)]
        assert not missing, f"{len(missing)} of {len(calls)} calls got no answer within {timeout}s"
        return replies

    def stream(self, call: StreamCall, timeout: float = 30.0) -> tuple[list[Any], Any]:
        """(the chunks in index order, the final reply); every index exactly once, and as many
        chunks as the final reply says were sent."""
        messages = self.many([call], timeout)[call.request_id]
        finals = [m for m in messages if _final(m)]
        assert len(finals) == 1, f"{len(finals)} final replies"
        pieces = sorted((m.index, m.chunk) for m in messages if isinstance(m, StreamChunk))
        assert [i for i, _ in pieces] == list(range(finals[0].chunks)), (
            f"chunk indices {[i for i, _ in pieces]}"
        )
        return [c for _, c in pieces], finals[0]


def _final(message: Any) -> bool:
    return isinstance(message, (CallSucceeded, CallFailed))


def _complete(messages: list[Any]) -> bool:
    """A final reply came, and every chunk it counts (chunks may arrive after it)."""
    finals = [m for m in messages if _final(m)]
    chunks = sum(isinstance(m, StreamChunk) for m in messages)
    return bool(finals) and chunks >= max(m.chunks for m in finals)


def _file(replies: dict[str, list[Any]], message: Any) -> None:
    request_id = getattr(message, "request_id", None)
    if request_id in replies:
        replies[request_id].append(message)


# -- events ---------------------------------------------------------------------------------------


class EventTap:
    """Subscribes to the event bus (from its own thread and private context) and keeps events."""

    def __init__(self, system: NovaSystem, topics: tuple[str, ...] | None = None) -> None:
        self.system = system
        self.topics = topics
        self.events: list[Event] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="event-tap", daemon=True)

    def __enter__(self) -> EventTap:
        self._thread.start()
        assert self._subscribed.wait(5), "could not subscribe to the event bus"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        with self.system.asys.private() as ctx:
            ctx.tell(self.system.event_bus, Subscribe(topics=self.topics))
            self._subscribed.set()
            try:
                while not self._stop.is_set():
                    message = ctx.listen(0.05)
                    if isinstance(message, EventMessage):
                        with self._lock:
                            self.events.append(message.event)
            finally:
                ctx.tell(self.system.event_bus, Unsubscribe())

    def named(self, name: str, **match: Any) -> list[Event]:
        with self._lock:
            return [
                e
                for e in self.events
                if e.name == name
                and all(getattr(e, k, None) == v or e.data.get(k) == v for k, v in match.items())
            ]

    def wait_for(self, name: str, timeout: float = 5.0, count: int = 1, **match: Any) -> list[Event]:
        found = wait_until(
            lambda: len(self.named(name, **match)) >= count and self.named(name, **match), timeout
        )
        with self._lock:
            seen = sorted({e.name for e in self.events})
        assert found, f"no {count}x {name} {match or ''} within {timeout}s; saw {seen}"
        return found  # type: ignore[no-any-return]


# -- the recording handler's log ------------------------------------------------------------------


def log_lines(path: Path, marker: str | None = None) -> list[dict[str, Any]]:
    """What tests/actors/handlers wrote: one dict per upstream call (optionally only those whose
    last user message contains `marker`)."""
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [x for x in lines if marker is None or marker in x["prompt"]]
