"""Control messages from anyone but the actor entitled to send them are dropped: a forged init,
"stage down", driver report, event-bus wiring, child exit, restart wakeup, exit request or drain,
sent from a private Thespian context (or from another process, for what the starting process may
send), leaves the running system serving calls as before, with no actor restarted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from thespian.actors import ActorExitRequest, ChildActorExited, WakeupMessage  # type: ignore[import-untyped]

from nova.actors.base import Ping, Pong, SetEventBus
from nova.actors.eventbus import TelemetryInit
from nova.actors.protocol import DriverInit, DriversChanged, StageDown, StageInit
from nova.messages import CallSucceeded, WhereIsRouter
from nova.supervisors.system import NovaSystem
from nova.supervisors.tree import _RouterReady, _SupInit
from tests.integration_helpers import Calls, EventTap, chat_call, config_for, running, status, wait_until

pytestmark = pytest.mark.integration
WORKTREE = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NovaSystem]:
    with running(config_for(tmp_path_factory.mktemp("forged"))) as started:
        yield started


def children(system: NovaSystem, address: Any) -> dict[str, Any]:
    reply = system.ask(address, Ping(), 10.0)
    assert isinstance(reply, Pong), f"no Pong from {address}: {reply!r}"
    return reply.children


def pids(tree: dict[str, Any]) -> dict[str, Any]:
    """Every actor of the status tree by its path: its pid and restarts."""
    out: dict[str, Any] = {}

    def walk(node: dict[str, Any], path: str) -> None:
        out[path] = (node["pid"], node["restarts"])
        for child in node["children"]:
            walk(child, f"{path}/{child['name']}")

    walk(tree, "root")
    return out


def send_all_then_wait(system: NovaSystem, forged: list[tuple[Any, Any]]) -> None:
    """Tell each forged message, then ping every target from the same context and wait for all
    the Pongs: Thespian delivers one sender's messages to a target in order, so each forged
    message has been handled by then."""
    targets: list[Any] = []
    for target, _ in forged:
        if not any(target == t for t in targets):
            targets.append(target)
    with system.asys.private() as ctx:
        for target, message in forged:
            ctx.tell(target, message)
        for token, target in enumerate(targets):
            ctx.tell(target, Ping(token))
        answered: set[int] = set()

        def all_answered() -> bool:
            reply = ctx.listen(0.5)
            if isinstance(reply, Pong):
                answered.add(reply.token)
            return len(answered) == len(targets)

        assert wait_until(all_answered, timeout=20.0), f"pings answered: {sorted(answered)} of {len(targets)}"


def test_forged_control_messages_leave_the_system_serving(system: NovaSystem) -> None:
    config = system.config
    before = pids(status(system))
    assert all(restarts == 0 for _, restarts in before.values()), before
    top = children(system, system.root)
    pipeline = children(system, top["pipeline"])
    drivers = children(system, top["drivers"])
    router, fallback, driver = pipeline["router"], pipeline["fallback"], drivers["default"]
    nobody: dict[str, Any] = {}
    forged = [
        (router, StageDown("fallback")),
        (router, StageInit(config)),
        (router, SetEventBus(None)),
        (fallback, DriversChanged(nobody, down=("default",))),
        (fallback, StageInit(config)),
        (driver, DriverInit("default", "test", {}, 1, config)),
        (driver, SetEventBus(None)),
        (top["eventbus"], TelemetryInit(config)),
        (top["pipeline"], ChildActorExited(router)),
        (top["pipeline"], WakeupMessage(0, payload=("nova:restart", 5))),
        (top["pipeline"], _SupInit(config, None)),
        (top["pipeline"], DriversChanged(nobody, down=("default",))),
        (top["drivers"], _SupInit(config, None)),
        (top["drivers"], ChildActorExited(driver)),
        (system.root, DriversChanged(nobody, down=("default",))),
        (system.root, _RouterReady(top["eventbus"])),
        (router, ActorExitRequest()),
        (driver, ActorExitRequest()),
        (system.root, ActorExitRequest()),
    ]
    send_all_then_wait(system, forged)

    with EventTap(system, topics=("request.completed",)) as tap:
        reply = Calls(system).one(chat_call("after the forgeries", timeout=20))
        assert isinstance(reply, CallSucceeded), reply
        assert reply.response.text == "echo: after the forgeries"
        # the router still reports to the event bus
        assert wait_until(lambda: tap.named("request.completed", request_id=reply.request_id), timeout=10.0)
    # the root still points callers at the real router
    where = system.ask(system.root, WhereIsRouter(), 10.0)
    assert where is not None and where.router == system.router
    # no actor was restarted or replaced
    assert pids(status(system)) == before
    log = (Path(config.system.state_dir) / "nova.log").read_text()
    assert "router dropped a StageDown" in log and "only its parent may send it" in log


def test_a_drain_from_a_process_that_did_not_start_the_system_is_dropped(system: NovaSystem) -> None:
    script = textwrap.dedent(
        f"""
        from thespian.actors import ActorSystem
        from nova.actors.base import Ping
        from nova.actors.protocol import Drain
        from nova.messages import WhereIsRouter
        from nova.supervisors.system import bind_to
        from nova.supervisors.tree import RootSupervisor

        bind_to({system.config.system.host!r})
        asys = ActorSystem("multiprocTCPBase", {{"Admin Port": {system.config.system.admin_port}}},
                           transientUnique=True)
        root = asys.createActor(RootSupervisor, globalName="nova")
        router = asys.ask(root, WhereIsRouter(), 10).router
        with asys.private() as ctx:
            ctx.tell(router, Drain())
            print(type(ctx.ask(router, Ping(7), 10)).__name__)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(WORKTREE)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=WORKTREE, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "Pong", done.stderr
    # the router takes calls as before
    response = Calls(system).ok(chat_call("after a forged drain", timeout=20))
    assert response.text == "echo: after a forged drain"
    log = (Path(system.config.system.state_dir) / "nova.log").read_text()
    assert "router dropped a Drain" in log and "only the process that started the system may send it" in log
