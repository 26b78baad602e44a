"""Supervision through the real actor system: killed actors, restarts, escalation, no orphans."""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from nova import errors
from nova.messages import CallFailed, CallSucceeded
from nova.supervisors.system import NovaSystem
from tests.integration_helpers import (
    Calls,
    EventTap,
    actor_pid,
    chat_call,
    config_for,
    find_node,
    kill_and_wait,
    live_pid,
    pid_alive,
    router_of,
    running,
    session_of,
    session_pids,
    status,
    stream_call,
    wait_until,
)

pytestmark = pytest.mark.integration

SLOW = {"text": "too late", "delay": 60}  # a call that only ends when its driver dies


def _in_flight(system: NovaSystem, driver: str) -> int:
    node = find_node(status(system), "drivers", driver)
    return int(node.get("in_flight", 0)) if node["alive"] else 0


def _call_in_background(system: NovaSystem, call: Any, timeout: float = 60.0) -> dict[str, Any]:
    """Start a call on its own thread; the dict gets 'reply' and 'answered_at' (monotonic)."""
    out: dict[str, Any] = {}

    def run() -> None:
        out["reply"] = Calls(system).one(call, timeout)
        out["answered_at"] = time.monotonic()

    out["thread"] = threading.Thread(target=run, daemon=True)
    out["thread"].start()
    return out


@pytest.fixture
def system(tmp_path: Path) -> Iterator[NovaSystem]:
    config = config_for(
        tmp_path,
        supervision={"max_restarts": 2, "max_seconds": 30},
        drivers={
            "default": {"kind": "test"},
            "spare": {"kind": "test", "model": "spare-model"},
            "stalling": {"kind": "test", "latency": 60},
        },
    )
    with running(config) as system:
        yield system


def test_sigkill_of_a_driver_mid_call_answers_fast_and_restarts_it(system: NovaSystem) -> None:
    pid = actor_pid(system, "drivers", "default")
    with EventTap(system, topics=("supervisor.",)) as tap:
        pending = _call_in_background(system, chat_call("doomed", test_reply=SLOW, timeout=60))
        assert wait_until(lambda: _in_flight(system, "default") == 1), "the call never reached the driver"
        killed_at = time.monotonic()
        kill_and_wait(pid)
        pending["thread"].join(10)
        assert "reply" in pending, "the caller got no answer after the driver died"
        waited = pending["answered_at"] - killed_at
        print(f"SIGKILL of the driver -> caller answered in {waited * 1000:.1f} ms")
        assert waited < 5, (
            "the caller waited for a timeout instead of being told"
        )  # the call's timeout is 60 s
        reply = pending["reply"]
        assert isinstance(reply, CallFailed)
        assert isinstance(reply.error, errors.DriverUnavailableError)
        tap.wait_for("supervisor.child_exited", child="default")
        tap.wait_for("supervisor.child_restarted", child="default")
    node = wait_until(lambda: (n := find_node(status(system), "drivers", "default"))["alive"] and n)
    assert node["restarts"] == 1 and node["pid"] != pid
    assert Calls(system).ok(chat_call("again")).text == "echo: again"


def test_a_killed_driver_moves_the_call_to_the_fallback_target(system: NovaSystem) -> None:
    pid = actor_pid(system, "drivers", "stalling")
    pending = _call_in_background(
        system, chat_call("rescue me", driver="stalling", fallback=["spare"], timeout=60)
    )
    assert wait_until(lambda: _in_flight(system, "stalling") == 1), "the call never reached the driver"
    killed_at = time.monotonic()
    kill_and_wait(pid)
    pending["thread"].join(10)
    assert "reply" in pending, "the caller got no answer after the driver died"
    print(
        f"SIGKILL of the driver -> answer from the fallback target in "
        f"{(pending['answered_at'] - killed_at) * 1000:.1f} ms"
    )
    reply = pending["reply"]
    assert isinstance(reply, CallSucceeded), reply
    assert reply.response.driver == "spare" and reply.response.text == "echo: rescue me"
    attempts = [(a.driver, a.ok, a.error_type) for a in reply.response.attempts]
    assert attempts == [("stalling", False, "DriverUnavailableError"), ("spare", True, None)]


def test_restart_intensity_exceeded_escalates_and_the_root_restarts_the_branch(system: NovaSystem) -> None:
    supervisor_pid = actor_pid(system, "drivers")
    with EventTap(system, topics=("supervisor.",)) as tap:
        for kill in range(3):  # max_restarts = 2: the third death within max_seconds escalates
            pid = actor_pid(system, "drivers", "default")
            kill_and_wait(pid)
            if kill < 2:
                assert wait_until(lambda p=pid: live_pid(system, "drivers", "default") not in (None, p)), (
                    "the driver was not restarted"
                )
        escalated = tap.wait_for("supervisor.escalated")[0]
        assert escalated.sender == "supervisor:drivers"
        assert "3 restarts" in escalated.data["reason"]
        tap.wait_for("supervisor.child_restarted", child="drivers", supervisor="supervisor:root")
    assert wait_until(lambda: not pid_alive(supervisor_pid)), "the escalating supervisor did not exit"
    tree = wait_until(lambda: (t := status(system)) and find_node(t, "drivers", "default")["alive"] and t)
    assert tree, "the driver branch did not come back"
    assert find_node(tree, "drivers")["restarts"] == 1
    assert Calls(system).ok(chat_call("after escalation")).text == "echo: after escalation"


def test_sigkill_of_a_supervisor_takes_its_children_and_the_root_rebuilds_the_branch(
    system: NovaSystem,
) -> None:
    tree = status(system)
    pipeline = find_node(tree, "pipeline")
    children = [c["pid"] for c in pipeline["children"]]
    assert children and all(children)
    old_router = system.router
    kill_and_wait(pipeline["pid"])
    gone = wait_until(lambda: not any(pid_alive(p) for p in children))
    assert gone, "children of the killed supervisor kept running (orphans)"
    router = wait_until(lambda: (r := router_of(system)) != old_router and r)
    assert router, "the root did not restart the pipeline"
    assert Calls(system, router).ok(chat_call("new router")).text == "echo: new router"
    assert find_node(status(system), "pipeline")["restarts"] == 1


def test_shutdown_leaves_no_process_without_help(tmp_path: Path) -> None:
    config = config_for(
        tmp_path,
        drivers={"default": {"kind": "test"}, "other": {"kind": "test"}},
        cache={"enabled": True, "backend": "sqlite", "path": str(tmp_path / "cache.sqlite3")},
        ratelimit={"limits": {"other": {"max_concurrent": 1}}},
    )
    system = NovaSystem.start(config)
    sid = session_of(config.system.admin_port)
    assert sid is not None
    try:
        # admin, logger, root, bus, 2 supervisors, 2 drivers, cache, ratelimit, fallback, router
        assert len(session_pids(sid)) >= 12
        Calls(system).ok(chat_call("before shutdown"))
        Calls(system).stream(stream_call("a stream too", driver="other"))
        kill_and_wait(actor_pid(system, "drivers", "other"))  # a restarted actor must go too
        assert wait_until(lambda: live_pid(system, "drivers", "other"))
        with system.asys.private() as ctx:  # a call still in flight at shutdown (nobody waits for it)
            ctx.tell(system.router, chat_call("in flight", test_reply={"text": "x", "delay": 30}))
        assert wait_until(lambda: _in_flight(system, "default") == 1)
        system.asys.shutdown()  # Thespian's own shutdown, without NovaSystem.stop's SIGKILL net
        left = wait_until(lambda: not session_pids(sid), timeout=10)
        assert left, f"still running after shutdown: {session_pids(sid)}"
    finally:
        system.stop()
        for pid in session_pids(sid):  # only after a failure above: leave nothing behind
            psutil.Process(pid).kill()


def test_every_listening_socket_is_on_loopback(system: NovaSystem) -> None:
    Calls(system).ok(chat_call("open every link"))
    sid = session_of(system.config.system.admin_port)
    assert sid is not None
    listening = []
    for pid in session_pids(sid):
        try:
            conns = psutil.Process(pid).net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        listening += [(pid, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN]
    assert len(listening) >= 7, f"expected a listener per actor, found {listening}"
    exposed = [x for x in listening if not ipaddress.ip_address(x[1]).is_loopback]
    assert not exposed, f"sockets reachable from the network: {exposed}"
