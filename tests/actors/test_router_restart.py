"""A killed router is restarted, and the facade's callers learn at once that their calls were lost."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nova import errors
from nova.bridge import Bridge
from nova.system import NovaSystem
from tests.integration_helpers import (
    actor_pid,
    chat_call,
    config_for,
    find_node,
    kill_and_wait,
    running,
    status,
    wait_until,
)

pytestmark = pytest.mark.integration

SLOW = {"text": "too late", "delay": 60}  # a call that only ends when the router holding it dies


@pytest.fixture
def system(tmp_path: Path) -> Iterator[NovaSystem]:
    with running(config_for(tmp_path)) as system:
        yield system


def _router_restarted(system: NovaSystem, old_pid: int) -> bool:
    node = find_node(status(system), "pipeline", "router")
    return bool(node["alive"] and node["pid"] != old_pid)


def test_a_sync_caller_of_a_killed_router_gets_a_typed_error_long_before_its_timeout(
    system: NovaSystem,
) -> None:
    bridge = Bridge(system.asys, system.router, system.root)
    pid = actor_pid(system, "pipeline", "router")
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            bridge.call(chat_call("doomed", test_reply=SLOW, timeout=60), 61)
        except errors.NovaError as exc:
            out["error"], out["at"] = exc, time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert wait_until(lambda: find_node(status(system), "drivers", "default").get("in_flight") == 1)
    killed_at = time.monotonic()
    kill_and_wait(pid)
    thread.join(30)
    assert isinstance(out.get("error"), errors.DriverUnavailableError), out
    print(f"SIGKILL of the router -> sync caller told in {(out['at'] - killed_at) * 1000:.0f} ms")
    assert out["at"] - killed_at < 20  # the call's own timeout is 60 s
    assert wait_until(lambda: _router_restarted(system, pid), timeout=10)
    assert bridge.call(chat_call("again"), 10).text == "echo: again"  # the bridge found the new router


def test_async_callers_of_a_killed_router_are_failed_and_the_bridge_moves_on(system: NovaSystem) -> None:
    bridge = Bridge(system.asys, system.router, system.root)
    pid = actor_pid(system, "pipeline", "router")

    async def scenario() -> tuple[list[Any], str]:
        calls = [
            asyncio.ensure_future(bridge.acall(chat_call(f"q{i}", test_reply=SLOW, timeout=60), 61))
            for i in range(3)
        ]
        await asyncio.to_thread(
            wait_until, lambda: find_node(status(system), "drivers", "default").get("in_flight") == 3
        )
        kill_and_wait(pid)
        results = await asyncio.gather(*calls, return_exceptions=True)
        after = await bridge.acall(chat_call("after"), 10)
        return list(results), after.text

    try:
        results, text = asyncio.run(asyncio.wait_for(scenario(), 40))
    finally:
        bridge.close()
    assert all(isinstance(r, errors.DriverUnavailableError) for r in results), results
    assert text == "echo: after"
