"""The answers to a probe are complete only once every peer it reached has answered, in any order."""

from __future__ import annotations

from nova.probes import Tally


def test_an_answer_from_a_later_peer_may_come_first() -> None:
    tally = Tally(frozenset({"a", "b", "c"}), ("router",))
    assert not tally.add("cache", ["a"], ["fallback"])  # before the router said it asked the cache
    assert not tally.add("router", [], ["cache"])
    assert tally.add("fallback", ["b"], [])
    assert tally.unheld() == {"c"}


def test_when_nobody_answers_every_call_is_unheld() -> None:
    assert Tally(frozenset({"a"}), ("router",)).unheld() == {"a"}
