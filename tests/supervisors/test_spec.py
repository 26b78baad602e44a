"""SupervisorPolicy: OTP restart types, strategies, intensity and backoff, without actors."""

from __future__ import annotations

from nova.supervisors.spec import (
    ChildSpec,
    Escalate,
    Ignore,
    Restart,
    RestartChildren,
    Strategy,
    SupervisorPolicy,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def policy(strategy: Strategy = Strategy.ONE_FOR_ONE, **kw: object) -> tuple[SupervisorPolicy, Clock]:
    clock = Clock()
    children = [
        ChildSpec("a", object),
        ChildSpec("b", object, restart=Restart.TRANSIENT),
        ChildSpec("c", object, restart=Restart.TEMPORARY),
        ChildSpec("d", object),
    ]
    return SupervisorPolicy(children, strategy, clock=clock, **kw), clock  # type: ignore[arg-type]


def test_permanent_child_is_restarted_alone_under_one_for_one() -> None:
    p, _ = policy()
    decision = p.on_exit("a", abnormal=True)
    assert isinstance(decision, RestartChildren) and decision.names == ("a",)


def test_transient_child_restarts_only_after_an_abnormal_exit() -> None:
    p, _ = policy()
    assert isinstance(p.on_exit("b", abnormal=False), Ignore)
    assert isinstance(p.on_exit("b", abnormal=True), RestartChildren)


def test_temporary_child_and_unknown_child_are_never_restarted() -> None:
    p, _ = policy()
    assert isinstance(p.on_exit("c", abnormal=True), Ignore)
    assert isinstance(p.on_exit("nobody", abnormal=True), Ignore)


def test_rest_for_one_restarts_the_child_and_those_started_after_it() -> None:
    p, _ = policy(Strategy.REST_FOR_ONE)
    decision = p.on_exit("b", abnormal=True)
    assert isinstance(decision, RestartChildren) and decision.names == ("b", "c", "d")


def test_one_for_all_restarts_every_child_in_start_order() -> None:
    p, _ = policy(Strategy.ONE_FOR_ALL)
    decision = p.on_exit("d", abnormal=True)
    assert isinstance(decision, RestartChildren) and decision.names == ("a", "b", "c", "d")


def test_more_restarts_than_the_intensity_allows_escalates() -> None:
    p, clock = policy(max_restarts=3, max_seconds=5)
    for _ in range(3):
        assert isinstance(p.on_exit("a", abnormal=True), RestartChildren)
        clock.now += 1
    decision = p.on_exit("a", abnormal=True)
    assert isinstance(decision, Escalate) and "4 restarts" in decision.reason


def test_restarts_older_than_the_period_no_longer_count() -> None:
    p, clock = policy(max_restarts=2, max_seconds=5)
    p.on_exit("a", abnormal=True)
    p.on_exit("a", abnormal=True)
    clock.now += 6
    assert isinstance(p.on_exit("a", abnormal=True), RestartChildren)


def test_restart_delay_backs_off_exponentially_up_to_the_maximum() -> None:
    p, _ = policy(max_restarts=10, backoff_initial_s=0.01, backoff_max_s=0.03)
    delays = [p.on_exit("a", abnormal=True).delay_s for _ in range(4)]  # type: ignore[union-attr]
    assert delays == [0.01, 0.02, 0.03, 0.03]
