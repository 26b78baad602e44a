"""The rate-limit stage in the real actor system: FIFO queue, reject, bounded wait, service pauses."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nova import errors
from nova.messages import CallFailed, CallSucceeded
from nova.supervisors.system import NovaSystem
from tests.integration_helpers import (
    Calls,
    EventTap,
    chat_call,
    config_for,
    find_node,
    log_lines,
    running,
    status,
    wait_until,
)

pytestmark = pytest.mark.integration

HANDLER = "tests.actors.handlers:record"


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NovaSystem]:
    drivers = {
        name: {"kind": "test", "handler": HANDLER}
        for name in ("default", "fifo", "strict", "brief", "paused")
    }
    config = config_for(
        tmp_path_factory.mktemp("ratelimit"),
        drivers=drivers,
        ratelimit={
            "limits": {
                "fifo": {"max_concurrent": 1},
                "strict": {"max_concurrent": 1, "on_limit": "reject"},
                "brief": {"max_concurrent": 1, "max_wait_s": 0.3},
                "paused": {"requests_per_minute": 1000},
            }
        },
        fallback={"retry": {"max_attempts_per_target": 1}},
    )
    with running(config) as system:
        yield system


def _in_flight(system: NovaSystem, driver: str) -> int:
    node = find_node(status(system), "drivers", driver)
    return int(node.get("in_flight", 0)) if node["alive"] else 0


def _background(system: NovaSystem, call: Any) -> threading.Thread:
    thread = threading.Thread(target=Calls(system).one, args=(call,), daemon=True)
    thread.start()
    return thread


def test_queued_calls_are_served_in_arrival_order(system: NovaSystem, tmp_path: Path) -> None:
    log = tmp_path / "upstream.jsonl"
    calls = [
        chat_call(f"fifo {i}", driver="fifo", log=log, script={"text": f"{i}", "delay": 0.05})
        for i in range(6)
    ]
    with EventTap(system, topics=("ratelimit.",)) as tap:
        replies = Calls(system).many(calls, timeout=30)
        tap.wait_for("ratelimit.delayed", count=5, driver="fifo")
    assert all(isinstance(r[-1], CallSucceeded) for r in replies.values())
    assert [x["prompt"] for x in log_lines(log)] == [f"fifo {i}" for i in range(6)]
    assert all(e.data["wait_s"] > 0 for e in tap.named("ratelimit.delayed"))


def test_reject_mode_refuses_at_once_naming_the_limit(system: NovaSystem) -> None:
    slow = _background(
        system, chat_call("hold the slot", driver="strict", script={"text": "ok", "delay": 1.0})
    )
    assert wait_until(lambda: _in_flight(system, "strict") == 1)
    with EventTap(system, topics=("ratelimit.",)) as tap:
        error = Calls(system).error(chat_call("refused", driver="strict"))
        tap.wait_for("ratelimit.rejected", driver="strict", limit="max_concurrent")
    assert isinstance(error, errors.RateLimitExceededError)
    assert error.limit == "max_concurrent"
    assert "max_concurrent" in error.message and error.driver == "strict"
    slow.join(10)


def test_a_queued_call_gives_up_after_max_wait(system: NovaSystem) -> None:
    first = chat_call("long call", driver="brief", script={"text": "ok", "delay": 2.0})
    second = chat_call("waits too long", driver="brief")
    order: list[str] = []
    calls = Calls(system)
    with system.asys.private() as ctx:
        ctx.tell(calls.router, first)
        assert wait_until(lambda: _in_flight(system, "brief") == 1)
        ctx.tell(calls.router, second)
        replies = {}
        while len(replies) < 2:
            reply = ctx.listen(10)
            assert reply is not None, "no answer"
            if isinstance(reply, (CallSucceeded, CallFailed)):
                replies[reply.request_id] = reply
                order.append(reply.request_id)
    assert order == [second.request_id, first.request_id]  # the wait ended while the first still ran
    error = replies[second.request_id].error
    assert isinstance(error, errors.RateLimitExceededError)
    assert isinstance(replies[first.request_id], CallSucceeded)


def test_a_429_with_retry_after_pauses_the_target(system: NovaSystem, tmp_path: Path) -> None:
    log = tmp_path / "upstream.jsonl"
    limited = {"error": "RateLimitError", "status_code": 429, "retry_after": 0.5, "message": "slow down"}
    with EventTap(system, topics=("ratelimit.",)) as tap:
        error = Calls(system).error(chat_call("too fast", driver="paused", log=log, script=limited))
        assert isinstance(error, errors.RateLimitError) and error.retry_after == 0.5
        paused = tap.wait_for("ratelimit.paused")[0]
        waiting = chat_call("after the pause", driver="paused", log=log)
        assert Calls(system).ok(waiting).text == "echo: after the pause"
        tap.wait_for("ratelimit.resumed")
        delayed = tap.wait_for("ratelimit.delayed", request_id=waiting.request_id)[0]
    assert "paused" in paused.data["target"]
    assert delayed.data["wait_s"] > 0  # it waited for the pause instead of hammering the service
    assert [x["prompt"] for x in log_lines(log)] == ["too fast", "after the pause"]
