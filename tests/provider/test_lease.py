"""Leases of a cluster's budget: the leader's ledger, a node's holder, and the limiter on top."""

from __future__ import annotations

from nova.ratelimit import (
    Admitted,
    Charged,
    LeaseHolder,
    LeaseServer,
    Limits,
    Queued,
    RateLimiter,
    RateLimitSettings,
    Rejected,
    Return,
    Ticket,
    Want,
)
from nova.ratelimit.lease import fair_shares


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def settings(rpm: int | None = 30, tpm: int | None = None) -> RateLimitSettings:
    return RateLimitSettings(limits={"test": Limits(requests_per_minute=rpm, tokens_per_minute=tpm)})


def test_fair_shares_give_small_wants_in_full_and_split_the_rest() -> None:
    assert fair_shares({"a": 2, "b": 50, "c": 50}, 30) == {"a": 2, "b": 14, "c": 14}
    assert fair_shares({"a": 5}, 30) == {"a": 5}


def test_grants_of_a_minute_never_add_up_to_more_than_the_limit() -> None:
    clock = Clock()
    server = LeaseServer(settings(rpm=30), lease_s=5, clock=clock)
    granted = 0
    for i in range(40):
        for grant in server.request(f"node{i % 3}", [Want("test", 10, 1)]):
            granted += grant.requests or 0
        clock.now += 1
    assert granted == 30  # forty requests over 40 s: the minute's budget and not one more


def test_unused_parts_come_back_and_can_be_granted_again() -> None:
    clock = Clock()
    server = LeaseServer(settings(rpm=10), lease_s=5, clock=clock)
    [grant] = server.request("a", [Want("test", 10, 1)])
    assert grant.requests == 10
    assert server.request("b", [Want("test", 5, 1)]) == []  # nothing left
    server.request("a", [], [Return(grant.lease_id, 7, 0)])  # a used three
    [again] = server.request("b", [Want("test", 5, 1)])
    assert again.requests == 5


def test_a_node_that_stops_asking_leaves_the_split_when_its_lease_expires() -> None:
    clock = Clock()
    server = LeaseServer(settings(rpm=60), lease_s=5, clock=clock)
    server.request("a", [Want("test", 100, 1)])  # a takes what it can: everything
    assert server.nodes() == ["a"]
    clock.now += 6
    assert server.nodes() == []  # reclaimed: a's share is no longer reserved
    clock.now += 60  # and once its charge has had its minute, the budget is whole again
    [grant] = server.request("b", [Want("test", 100, 1)])
    assert grant.requests == 60


def test_shares_follow_demand() -> None:
    clock = Clock()
    server = LeaseServer(settings(rpm=100), lease_s=5, clock=clock)
    server.request("small", [Want("test", 4, 1)])
    [big] = server.request("big", [Want("test", 500, 1)])
    assert big.requests == 96  # what the small one did not want


def test_holder_admits_only_what_it_holds_and_asks_for_more() -> None:
    clock = Clock()
    s = settings(rpm=30)
    holder = LeaseHolder(s, lease_s=5, clock=clock)
    limiter = RateLimiter(s, clock=clock, budget=holder)
    assert isinstance(limiter.submit(Ticket("r1", "test", "", 1)), Queued)  # no lease yet
    wants, returns = holder.due(limiter.queued_by_scope()) or ([], [])
    assert wants and wants[0].scope == "test" and not returns
    server = LeaseServer(s, lease_s=5, clock=clock)
    holder.granted(server.request("n", [Want("test", 2, 1)]))
    limiter.budget_changed()
    assert [t.request_id for t in limiter.poll().admitted] == ["r1"]
    assert isinstance(limiter.submit(Ticket("r2", "test", "", 1)), Admitted)
    assert isinstance(limiter.submit(Ticket("r3", "test", "", 1)), Queued)  # the grant is used up


def test_an_expired_grant_is_returned_with_what_was_left() -> None:
    clock = Clock()
    s = settings(rpm=30)
    holder = LeaseHolder(s, lease_s=5, clock=clock)
    limiter = RateLimiter(s, clock=clock, budget=holder)
    holder.due({"test": (1, 1)})
    holder.granted(LeaseServer(s, 5, clock).request("n", [Want("test", 4, 1)]))
    assert isinstance(limiter.submit(Ticket("r1", "test", "", 1)), Admitted)
    clock.now += 5.5
    _wants, returns = holder.due({}) or ([], [])
    assert [(r.requests, r.tokens) for r in returns] == [(3, 0)]
    assert isinstance(limiter.submit(Ticket("r2", "test", "", 1)), Queued)  # expired: not used again


def test_tokens_are_reconciled_with_real_usage_in_the_grant() -> None:
    clock = Clock()
    s = settings(rpm=None, tpm=1000)
    holder = LeaseHolder(s, lease_s=5, clock=clock)
    limiter = RateLimiter(s, clock=clock, budget=holder)
    holder.due({"test": (1, 600)})
    holder.granted(LeaseServer(s, 5, clock).request("n", [Want("test", 1, 1000)]))
    assert isinstance(limiter.submit(Ticket("r1", "test", "", 600)), Admitted)
    assert holder.holding("test") == (0, 400)
    limiter.release("r1", actual_tokens=100)
    assert holder.holding("test") == (0, 900)


def test_without_a_leader_calls_are_refused_once_the_leases_are_gone() -> None:
    clock = Clock()
    s = settings(rpm=30)
    holder = LeaseHolder(s, lease_s=5, clock=clock, on_leader_loss="refuse")
    limiter = RateLimiter(s, clock=clock, budget=holder)
    holder.due({"test": (1, 1)})
    holder.granted(LeaseServer(s, 5, clock).request("n", [Want("test", 100, 1)]))
    holder.due({"test": (1, 1)})  # a request to a leader that is gone
    clock.now += 2
    assert holder.leader_lost()
    assert isinstance(limiter.submit(Ticket("r1", "test", "", 1)), Admitted)  # the lease still holds
    clock.now += 4  # it expired
    decision = limiter.submit(Ticket("r2", "test", "", 1))
    assert isinstance(decision, Rejected) and decision.limit == "cluster_lease"
    assert decision.retry_after_s is None


def test_a_node_that_refuses_without_a_leader_asks_again_and_admits_once_it_answers() -> None:
    clock = Clock()
    s = settings(rpm=30)
    holder = LeaseHolder(s, lease_s=5, clock=clock, on_leader_loss="refuse")
    limiter = RateLimiter(s, clock=clock, budget=holder)
    holder.due({})
    holder.unreachable()  # no leader yet
    clock.now += 6
    assert limiter.submit(Ticket("r1", "test", "", 1)).limit == "cluster_lease"  # type: ignore[union-attr]
    asked = holder.due(limiter.queued_by_scope())  # the refused call still counts as demand
    assert asked is not None and [w.scope for w in asked[0]] == ["test"]
    holder.granted(LeaseServer(s, 5, clock).request("n", asked[0]))  # the leader is there now
    assert isinstance(limiter.submit(Ticket("r2", "test", "", 1)), Admitted)


def test_without_a_leader_the_local_policy_keeps_the_node_own_limits() -> None:
    clock = Clock()
    s = settings(rpm=2)
    holder = LeaseHolder(s, lease_s=5, clock=clock, on_leader_loss="local")
    limiter = RateLimiter(s, clock=clock, budget=holder)
    holder.unreachable()
    assert isinstance(limiter.submit(Ticket("r1", "test", "", 1)), Admitted)
    assert isinstance(limiter.submit(Ticket("r2", "test", "", 1)), Admitted)
    decision = limiter.submit(Ticket("r3", "test", "", 1))  # the node's own minute is full
    assert isinstance(decision, Rejected) and decision.limit == "requests_per_minute"


def test_a_grant_that_arrives_lets_queued_calls_through_in_order() -> None:
    clock = Clock()
    s = settings(rpm=30)
    holder = LeaseHolder(s, lease_s=5, clock=clock)
    limiter = RateLimiter(s, clock=clock, budget=holder)
    for i in range(3):
        assert isinstance(limiter.submit(Ticket(f"r{i}", "test", "", 1)), Queued)
    wants, _ = holder.due(limiter.queued_by_scope()) or ([], [])
    assert wants[0].requests >= 3
    holder.granted(LeaseServer(s, 5, clock).request("n", wants))
    limiter.budget_changed()
    assert [t.request_id for t in limiter.poll().admitted] == ["r0", "r1", "r2"]


def test_a_restarted_leader_charges_what_a_node_reports_before_granting_it_more() -> None:
    clock = Clock()
    s = settings(rpm=30)
    holder = LeaseHolder(s, lease_s=5, clock=clock, reply_timeout_s=1.0)
    old = LeaseServer(s, 5, clock)
    holder.due({"test": (20, 20)})
    holder.granted(old.request("n", [Want("test", 20, 1)]))
    assert holder.holding("test") == (20, 0)
    assert holder.report() == ()  # the leader answers: nothing to report
    clock.now += 6  # the lease expires unused but for 5 calls; the request goes unanswered
    for i in range(5):
        holder.take("test", f"r{i}", s.limits["test"], 1)
    asked = holder.due({"test": (1, 1)})
    assert asked is not None
    clock.now += 2
    again = holder.due({"test": (1, 1)})  # the leader has gone: it asks whoever answers now
    assert again is not None and holder.leader_lost()
    wants, returns = again
    new = LeaseServer(s, 5, clock)  # the leader, restarted with an empty ledger
    grants = new.request("n", wants, returns, holder.report())
    # what the old leader granted (20) less what came back (15 unused) is charged again
    assert new.charged("test") == (5 + sum(g.requests or 0 for g in grants), 0)
    assert sum(g.requests or 0 for g in grants) <= 25
    other = new.request("m", [Want("test", 100, 1)])  # another node gets only what is left
    assert new.charged("test")[0] == 30 and sum(g.requests or 0 for g in other) <= 30 - 5


def test_a_new_leader_grants_nothing_until_the_nodes_could_report_what_they_hold() -> None:
    clock = Clock()
    s = settings(rpm=30)
    new = LeaseServer(s, 5, clock, settle_s=3.0)
    assert new.request("fresh", [Want("test", 100, 1)]) == []  # asks first, holds nothing
    held = [Charged("old#1", "test", 10.0, 20, 0)]
    assert new.request("n", [Want("test", 100, 1)], charged=held) == []
    clock.now += 3
    granted = sum(g.requests or 0 for g in new.request("fresh", [Want("test", 100, 1)]))
    assert 0 < granted <= 10  # of what the old leader had not granted
    assert new.charged("test") == (20 + granted, 0)


def test_a_node_that_lost_its_leader_reports_its_leases_without_calls_to_make() -> None:
    clock = Clock()
    s = settings(rpm=30)
    holder = LeaseHolder(s, lease_s=5, clock=clock, reply_timeout_s=1.0)
    holder.due({"test": (1, 1)})
    holder.granted(LeaseServer(s, 5, clock).request("n", [Want("test", 4, 1)]))
    holder.take("test", "r1", s.limits["test"], 1)
    clock.now += 3
    assert holder.due({}) is not None  # renewing: the leader has gone meanwhile
    clock.now += 3
    assert holder.due({}) is not None  # unanswered: again, with what was left of the lease
    clock.now += 1.5
    assert holder.due({}) is not None  # nothing held or wanted, but a new leader must hear of it
    [charged] = holder.report()  # four granted, three came back unused
    assert (charged.scope, charged.requests, charged.age_s) == ("test", 1, 7.5)
    holder.granted([])  # a leader answered: it knows
    assert holder.report() == ()
