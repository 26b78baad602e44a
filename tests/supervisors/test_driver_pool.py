"""A driver served by a pool of processes (`processes = N`): calls are spread over the pool, and a
member that dies is restarted while the others serve on."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from nova.supervisors.system import NovaSystem
from tests.integration_helpers import (
    Calls,
    chat_call,
    config_for,
    find_node,
    kill_and_wait,
    running,
    status,
    wait_until,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def system(tmp_path: Path) -> Iterator[NovaSystem]:
    pool = {"kind": "test", "model": "test-model", "processes": 2}
    with running(config_for(tmp_path, drivers={"default": pool})) as system:
        yield system


def _members(system: NovaSystem) -> list[dict[str, object]]:
    return [find_node(status(system), "drivers", f"default#{i}") for i in range(2)]


def test_calls_are_spread_over_the_pool(system: NovaSystem) -> None:
    slow = [chat_call(f"q{i}", test_reply={"text": f"a{i}", "delay": 1.0}) for i in range(4)]
    replies: dict[str, object] = {}
    thread = threading.Thread(target=lambda: replies.update(Calls(system).many(slow, 30)), daemon=True)
    thread.start()
    # the least busy member takes each call: both hold some while they run
    assert wait_until(lambda: all(m.get("in_flight", 0) >= 1 for m in _members(system)), 10)
    thread.join(30)
    assert len(replies) == 4


def test_a_dead_member_is_restarted_and_the_pool_serves_on(system: NovaSystem) -> None:
    first = _members(system)[0]
    assert first["alive"]
    kill_and_wait(int(str(first["pid"])))
    assert Calls(system).ok(chat_call("still here")).text == "echo: still here"
    assert wait_until(lambda: all(m["alive"] for m in _members(system)), 10)
    assert _members(system)[0]["pid"] != first["pid"]
