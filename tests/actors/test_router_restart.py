"""A killed router is restarted: calls it had passed on are still answered, the calls it held fail at
once, and the facade's bridge moves on to the new router."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nova import errors
from nova.actors.bridge import Bridge
from nova.supervisors.system import NovaSystem
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


def test_a_call_the_router_passed_on_is_still_answered_when_the_router_dies(system: NovaSystem) -> None:
    bridge = Bridge(system.lanes)
    pid = actor_pid(system, "pipeline", "router")
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["text"] = bridge.call(
                chat_call("survivor", test_reply={"text": "made it", "delay": 1.0}), 30
            ).text
        except errors.NovaError as exc:
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    try:
        thread.start()
        assert wait_until(lambda: find_node(status(system), "drivers", "default").get("in_flight") == 1)
        kill_and_wait(pid)
        thread.join(30)
        assert out == {"text": "made it"}
        assert wait_until(lambda: _router_restarted(system, pid), timeout=10)
        assert bridge.call(chat_call("again"), 10).text == "echo: again"  # the bridge found the new router
    finally:
        bridge.close()


def test_a_sync_caller_of_a_call_the_router_held_gets_a_typed_error_long_before_its_timeout(
    system: NovaSystem,
) -> None:
    bridge = Bridge(system.lanes)
    pid = actor_pid(system, "pipeline", "router")
    out: dict[str, Any] = {}

    def run() -> None:
        try:  # a conversation's answer comes back through the router, which records the turn
            bridge.call(chat_call("doomed", test_reply=SLOW, timeout=60, conversation="c1"), 61)
        except errors.NovaError as exc:
            out["error"], out["at"] = exc, time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    try:
        thread.start()
        assert wait_until(lambda: find_node(status(system), "drivers", "default").get("in_flight") == 1)
        killed_at = time.monotonic()
        kill_and_wait(pid)
        thread.join(30)
        assert isinstance(out.get("error"), errors.DriverUnavailableError), out
        assert out["error"].retryable
        print(f"SIGKILL of the router -> sync caller told in {(out['at'] - killed_at) * 1000:.0f} ms")
        assert out["at"] - killed_at < 20  # the call's own timeout is 60 s
        assert wait_until(lambda: _router_restarted(system, pid), timeout=10)
        assert bridge.call(chat_call("again"), 10).text == "echo: again"
    finally:
        bridge.close()


def test_async_callers_of_a_killed_router_are_failed_and_the_bridge_moves_on(system: NovaSystem) -> None:
    bridge = Bridge(system.lanes)
    pid = actor_pid(system, "pipeline", "router")

    async def scenario() -> tuple[list[Any], str]:
        calls = [
            asyncio.ensure_future(
                bridge.acall(chat_call(f"q{i}", test_reply=SLOW, timeout=60, conversation=f"c{i}"), 61)
            )
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
