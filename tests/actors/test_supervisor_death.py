"""A supervisor SIGKILLed with calls in flight: its children die with it, every call is answered
(its result or a retryable error, never a wait for the deadline), and the root starts the
supervisor and its children again."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from nova import errors
from nova.actors.bridge import Bridge
from nova.supervisors.system import NovaSystem
from nova.types import Response
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

CALLS = 10


@pytest.fixture
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NovaSystem]:
    config = config_for(
        tmp_path_factory.mktemp("supervisor-death"),
        drivers={"default": {"kind": "test", "model": "test-model", "latency": 3.0}},
        ratelimit={"default": {"max_concurrent": 100}},
        supervision={"max_restarts": 10, "max_seconds": 5.0},
    )
    with running(config) as system:
        yield system


def _in_flight(system: NovaSystem) -> int:
    return int(find_node(status(system), "drivers", "default").get("in_flight") or 0)


def _outcome(bridge: Bridge, text: str) -> Response | errors.NovaError:
    try:
        return bridge.call(chat_call(text, driver="default"), 20.0)
    except errors.NovaError as exc:
        return exc


@pytest.mark.parametrize("supervisor", ["drivers", "pipeline"])
def test_a_killed_supervisor_answers_every_call_and_comes_back(system: NovaSystem, supervisor: str) -> None:
    # The drivers' supervisor takes the drivers with it: every call in flight at them fails,
    # retryably. The pipeline's takes the router and the stages: calls already at a driver are
    # answered with their result, the others with a retryable error.
    pid = actor_pid(system, supervisor)
    bridge = Bridge(system.lanes)
    try:
        with ThreadPoolExecutor(CALLS) as pool:
            results = [pool.submit(_outcome, bridge, f"held {i}") for i in range(CALLS)]
            assert wait_until(lambda: _in_flight(system) == CALLS, 10)
            kill_and_wait(pid)
            outcomes = [result.result() for result in results]
    finally:
        bridge.close()
    failed = [o for o in outcomes if isinstance(o, errors.NovaError)]
    assert all(o.retryable and not isinstance(o, errors.RequestTimeoutError) for o in failed), failed
    if supervisor == "drivers":
        assert len(failed) == CALLS
    assert wait_until(lambda: actor_pid(system, supervisor) != pid, 10)
    fresh = Bridge(system.lanes)
    try:
        answer = fresh.call(chat_call("served again", driver="default", test_reply={"text": "yes"}), 30)
    finally:
        fresh.close()
    assert answer.text == "yes"
