"""Three Nova nodes on loopback ports as one cluster: they share one set of limits through leases
from the leader, follow `on_leader_loss` when the leader dies, and run the drivers they can."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from nova.errors import DriverUnavailableError, RateLimitExceededError
from nova.messages import CallFailed, CallSucceeded
from nova.supervisors.system import NovaSystem
from tests.drivers.fixtures_openai import chat_reply
from tests.fakeserver import FakeServer, Reply
from tests.integration_helpers import (
    Calls,
    chat_call,
    config_for,
    find_node,
    kill_and_wait,
    next_port,
    running,
    session_of,
    session_pids,
    status,
    stream_call,
    wait_until,
)

pytestmark = pytest.mark.integration

RPM = 24


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with FakeServer() as server:
        server.default["/v1/chat/completions"] = Reply(body=chat_reply("ok"))
        yield server


def _configs(tmp: Path, server: FakeServer, **cluster: Any) -> list[Any]:
    ports = [next_port() for _ in range(3)]
    leader = f"127.0.0.1:{ports[0]}"
    api = {"kind": "openai", "base_url": f"{server.url}/v1", "api_key": "sk-test-cluster", "model": "gpt-x"}
    limits = {"api": {"requests_per_minute": RPM, "max_wait_s": 3.0}}
    return [
        config_for(
            tmp / f"node{i}",
            port=port,
            drivers={"api": api},
            llm={"driver": "api"},
            ratelimit={"limits": limits},
            cluster={"leader": leader, "lease_s": 2.0, **cluster},
        )
        for i, port in enumerate(ports)
    ]


@contextlib.contextmanager
def _cluster(configs: list[Any]) -> Iterator[list[NovaSystem]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(running(c)) for c in configs]


def _outcomes(system: NovaSystem, n: int, timeout: float = 20.0, **options: Any) -> list[Any]:
    calls = [chat_call(f"q{i}", fallback=False, **options) for i in range(n)]
    replies = Calls(system).many(calls, timeout)
    return [
        next(m for m in replies[c.request_id] if isinstance(m, (CallSucceeded, CallFailed))) for c in calls
    ]


def test_three_nodes_share_one_budget(tmp_path: Path, server: FakeServer) -> None:
    with _cluster(_configs(tmp_path, server)) as nodes:
        with ThreadPoolExecutor(len(nodes)) as pool:  # every node's callers at once
            outcomes = [o for batch in pool.map(lambda node: _outcomes(node, 20), nodes) for o in batch]
    admitted = [o for o in outcomes if isinstance(o, CallSucceeded)]
    refused = [o.error for o in outcomes if isinstance(o, CallFailed)]
    # Sixty calls against a budget of 24 a minute: the cluster as a whole admits no more than
    # the budget (each node alone would have admitted 20, 60 in all).
    assert len(server.requests) == len(admitted) <= RPM
    assert len(admitted) >= RPM // 2  # and the budget is used, not starved
    assert refused and all(isinstance(e, RateLimitExceededError) for e in refused)
    assert {e.limit for e in refused} == {"requests_per_minute"}


@pytest.mark.parametrize("policy", ["refuse", "local"])
def test_after_the_leader_dies_nodes_serve_on_their_leases_then_follow_the_policy(
    tmp_path: Path, server: FakeServer, policy: str
) -> None:
    with _cluster(_configs(tmp_path, server, on_leader_loss=policy)) as nodes:
        leader, follower = nodes[0], nodes[1]
        first = _outcomes(follower, 2)
        assert all(isinstance(o, CallSucceeded) for o in first), first  # it holds a lease now
        sid = session_of(leader.config.system.admin_port)
        assert sid is not None
        for pid in session_pids(sid):
            kill_and_wait(pid)
        # Within its lease (2 s) the follower still admits; the lease had room for more than one.
        assert isinstance(_outcomes(follower, 1)[0], CallSucceeded)
        # Once the lease has expired without a leader to renew it: the policy.
        later = wait_for_policy(follower, policy)
    if policy == "refuse":
        assert isinstance(later.error, RateLimitExceededError) and later.error.limit == "cluster_lease"
    else:
        assert isinstance(later, CallSucceeded)  # under the node's own limits


def wait_for_policy(node: NovaSystem, policy: str) -> Any:
    """Calls until one is answered without a lease (each waits on the lease or fails at once)."""
    seen: list[Any] = []

    def answered_by_policy() -> bool:
        outcome = _outcomes(node, 1)[0]
        seen.append(outcome)
        if policy == "refuse":
            return isinstance(outcome, CallFailed) and getattr(outcome.error, "limit", "") == "cluster_lease"
        return isinstance(outcome, CallSucceeded)

    assert wait_until(answered_by_policy, timeout=15.0, interval=0.2), f"last outcomes: {seen[-3:]}"
    return seen[-1]


def _gpu_cluster(tmp: Path, gpus: list[bool], gpu_driver: dict[str, Any]) -> list[Any]:
    ports = [next_port() for _ in gpus]
    leader = f"127.0.0.1:{ports[0]}"
    drivers = {
        "default": {"kind": "test", "model": "test-model"},
        "gpu": {**gpu_driver, "requires": {"gpu": True}},
    }
    return [
        config_for(
            tmp / f"n{i}",
            port=port,
            drivers=drivers,
            cluster={"leader": leader, "capabilities": {"gpu": gpu}},
        )
        for i, (port, gpu) in enumerate(zip(ports, gpus, strict=True))
    ]


def _node_pid(node: NovaSystem) -> int:
    from tests.integration_helpers import actor_pid

    return actor_pid(node, "drivers", "gpu")


def test_a_driver_runs_on_the_nodes_that_can_and_serves_every_node(tmp_path: Path) -> None:
    configs = _gpu_cluster(tmp_path, [False, True], {"kind": "test", "model": "big-model"})
    with _cluster(configs) as (plain, gpu):
        assert find_node(status(plain), "drivers", "gpu")["alive"] is False  # not placed here
        gpu_pid = _node_pid(gpu)
        answer = Calls(plain).ok(chat_call("hi", driver="gpu", fallback=False))
        assert answer.model == "big-model" and answer.text
        streamed, final = Calls(plain).stream(stream_call("tell a story", driver="gpu", fallback=False))
        assert isinstance(final, CallSucceeded) and len(streamed) == final.chunks > 1
        assert Calls(plain).ok(chat_call("hi")).model == "test-model"  # its own driver, on its lanes
    assert gpu_pid


def test_a_lost_node_s_calls_are_answered_with_a_typed_error(tmp_path: Path, server: FakeServer) -> None:
    server.default["/v1/chat/completions"] = Reply(body=chat_reply("late"), delay=30.0)
    api = {"kind": "openai", "base_url": f"{server.url}/v1", "api_key": "sk-test-cluster", "model": "m"}
    configs = _gpu_cluster(tmp_path, [False, True], api)
    with _cluster(configs) as (plain, gpu):
        calls = [chat_call(f"q{i}", driver="gpu", fallback=False, timeout=60) for i in range(3)]
        with plain.asys.private() as ctx:
            for call in calls:
                ctx.tell(plain.router, call)
            assert wait_until(lambda: len(server.requests) == 3, timeout=10)  # all gone upstream
            sid = session_of(gpu.config.system.admin_port)
            assert sid is not None
            for pid in session_pids(sid):
                kill_and_wait(pid)
            answers = [ctx.listen(10) for _ in calls]  # far sooner than the service's 30 s
    errors = [a.error for a in answers if isinstance(a, CallFailed)]
    assert len(errors) == 3 and all(isinstance(e, DriverUnavailableError) for e in errors)
    assert all("was lost mid-call" in e.message and e.retryable for e in errors)


def test_calls_a_lost_node_never_took_go_to_another_node(tmp_path: Path) -> None:
    configs = _gpu_cluster(tmp_path, [False, True, True], {"kind": "test", "model": "big-model"})
    with _cluster(configs) as (plain, gpu1, _gpu2):
        assert Calls(plain).ok(chat_call("warm", driver="gpu", fallback=False)).model == "big-model"
        sid = session_of(gpu1.config.system.admin_port)
        assert sid is not None
        for pid in session_pids(sid):  # the plain node has not noticed yet
            kill_and_wait(pid)
        outcomes = _outcomes(plain, 6, driver="gpu")
    assert all(isinstance(o, CallSucceeded) and o.response.model == "big-model" for o in outcomes)


def test_calls_whose_node_is_lost_are_stopped_where_they_run(tmp_path: Path, server: FakeServer) -> None:
    server.default["/v1/chat/completions"] = Reply(body=chat_reply("late"), delay=30.0)
    api = {"kind": "openai", "base_url": f"{server.url}/v1", "api_key": "sk-test-cluster", "model": "m"}
    configs = _gpu_cluster(tmp_path, [True, False], api)  # the leader serves, the other node calls

    def in_flight(node: NovaSystem) -> int:
        return int(find_node(status(node), "drivers", "gpu").get("in_flight", -1))

    with _cluster(configs) as (gpu, plain):
        with plain.asys.private() as ctx:
            for i in range(3):
                ctx.tell(plain.router, chat_call(f"q{i}", driver="gpu", fallback=False, timeout=60))
            assert wait_until(lambda: len(server.requests) == 3, timeout=10)  # upstream, on the leader
            assert in_flight(gpu) == 3
            sid = session_of(plain.config.system.admin_port)
            assert sid is not None
            for pid in session_pids(sid):
                kill_and_wait(pid)
        # nobody waits for them any more: the serving node stops them instead of running them out
        assert wait_until(lambda: in_flight(gpu) == 0, timeout=10)


def _kill(node: NovaSystem) -> None:
    sid = session_of(node.config.system.admin_port)
    assert sid is not None
    for pid in session_pids(sid):
        kill_and_wait(pid)


def _leased(node: NovaSystem) -> bool:
    """A call on `node` succeeds (policy "refuse": only on a lease from the leader)."""
    return isinstance(_outcomes(node, 1)[0], CallSucceeded)


def test_a_node_started_before_its_leader_gets_leases_once_the_leader_starts(
    tmp_path: Path, server: FakeServer
) -> None:
    leader_config, *others = _configs(tmp_path, server)
    with contextlib.ExitStack() as stack:
        followers = [stack.enter_context(running(c)) for c in others]
        # no leader yet: once its joining time is over, a node refuses what needs the budget
        later = wait_for_policy(followers[0], "refuse")
        assert isinstance(later.error, RateLimitExceededError) and later.error.limit == "cluster_lease"
        stack.enter_context(running(leader_config))
        for follower in followers:
            assert wait_until(lambda f=follower: _leased(f), timeout=10.0, interval=0.2)


def test_nodes_get_leases_from_a_leader_restarted_at_the_same_address(
    tmp_path: Path, server: FakeServer
) -> None:
    leader_config, *others = _configs(tmp_path, server)
    with contextlib.ExitStack() as stack:
        leader = stack.enter_context(running(leader_config))
        followers = [stack.enter_context(running(c)) for c in others]
        assert all(_leased(f) for f in followers)
        _kill(leader)
        wait_for_policy(followers[0], "refuse")  # its lease is gone, and no leader renews it
        stack.enter_context(running(leader_config))
        for follower in followers:
            assert wait_until(lambda f=follower: _leased(f), timeout=10.0, interval=0.2)


def test_a_restarted_leader_charges_what_the_nodes_hold_before_granting_more(
    tmp_path: Path, server: FakeServer
) -> None:
    leader_config, *others = _configs(tmp_path, server)
    with contextlib.ExitStack() as stack:
        leader = stack.enter_context(running(leader_config))
        followers = [stack.enter_context(running(c)) for c in others]
        before = _outcomes(followers[0], RPM + 6)  # the followers alone use the minute's budget
        assert sum(isinstance(o, CallSucceeded) for o in before) >= RPM // 2
        _kill(leader)
        wait_for_policy(followers[0], "refuse")
        stack.enter_context(running(leader_config))

        def answered_by_the_leader() -> bool:  # a lease, or the leader's word that none is left
            outcome = _outcomes(followers[1], 1)[0]
            return isinstance(outcome, CallSucceeded) or outcome.error.limit == "requests_per_minute"

        assert wait_until(answered_by_the_leader, timeout=10.0, interval=0.2)
        with ThreadPoolExecutor(len(followers)) as pool:
            list(pool.map(lambda node: _outcomes(node, RPM), followers))
    # Within the minute, the new leader granted no more than what the old one had left.
    assert len(server.requests) <= RPM, len(server.requests)
