"""The answers to one probe: after a stage died, a caller asks every peer which of its calls it
holds; a peer names the peers it passed the probe on to, whose answers are then awaited too."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["Tally"]


class Tally:
    """Complete once every peer the probe reached has answered."""

    def __init__(self, request_ids: frozenset[str], first: Iterable[str]) -> None:
        self.request_ids = request_ids
        self.expected = set(first)
        self.answered: set[str] = set()
        self.held: set[str] = set()

    def add(self, peer: str, held: Iterable[str], asked: Iterable[str]) -> bool:
        """Count `peer`'s answer; whether every answer is in."""
        self.answered.add(peer)
        self.expected.update(asked)
        self.held.update(held)
        return self.expected <= self.answered

    def unheld(self) -> frozenset[str]:
        """The calls nobody said it holds (all of them once the wait for answers is over)."""
        return self.request_ids - self.held
