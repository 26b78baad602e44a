"""OTP semantics through the real actor system: unexpected messages are answered, not dropped;
a transient child restarts only after an abnormal exit."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from nova import errors
from nova.actors.base import Ping
from nova.supervisors.system import NovaSystem
from tests.integration_helpers import (
    Calls,
    chat_call,
    config_for,
    kill_and_wait,
    router_of,
    running,
    wait_until,
)
from tests.supervisors.otp_actors import Finish, Observed, Start, Strange, TransientParent

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NovaSystem]:
    with running(config_for(tmp_path_factory.mktemp("otp"))) as system:
        yield system


def test_an_unexpected_message_gets_a_typed_error_and_the_actor_goes_on(system: NovaSystem) -> None:
    reply = system.ask(router_of(system), Strange(), 5.0)
    assert isinstance(reply, errors.InvalidInputError)
    assert "Strange" in reply.message
    assert Calls(system).ok(chat_call("still there")).text  # the router took no harm


def _observe(system: NovaSystem, parent: Any) -> Observed:
    reply = system.ask(parent, Observed({}, []), 5.0)
    assert isinstance(reply, Observed)
    return reply


def _worker_pid(system: NovaSystem, worker: Any) -> int:
    pong = system.ask(worker, Ping(), 5.0)
    assert pong is not None, "the worker does not answer"
    return int(pong.pid)


def test_a_transient_child_restarts_after_a_crash_but_not_after_a_normal_exit(system: NovaSystem) -> None:
    parent = system.asys.createActor(TransientParent)
    system.asys.tell(parent, Start())
    first = wait_until(lambda: _observe(system, parent).children.get("worker"))
    assert first is not None

    kill_and_wait(_worker_pid(system, first))  # an abnormal exit: restarted
    second = wait_until(lambda: (w := _observe(system, parent).children.get("worker")) and w != first and w)
    assert second, "the crashed transient child was not restarted"
    assert _observe(system, parent).exits == [("worker", True, "RestartChildren")]
    assert _worker_pid(system, second)  # the new one answers

    system.asys.tell(second, Finish())  # a normal exit: not restarted
    observed = wait_until(lambda: (o := _observe(system, parent)) and len(o.exits) == 2 and o)
    assert observed, "the supervisor never heard of the normal exit"
    assert observed.exits[1] == ("worker", False, "Ignore")
    assert observed.children == {}
