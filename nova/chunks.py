"""A stream's chunks put back in order: each carries its index, and a chunk can arrive before one
sent ahead of it (it came another way, or a retry's answer overtook it)."""

from __future__ import annotations

from nova.types import Chunk

__all__ = ["InOrder"]


class InOrder:
    def __init__(self) -> None:
        self.next = 0  # the index of the next chunk to hand out
        self._early: dict[int, Chunk] = {}

    def add(self, index: int, chunk: Chunk) -> list[Chunk]:
        """The chunks that are now next in order: none, or several when `chunk` filled a gap."""
        self._early[index] = chunk
        ready = []
        while self.next in self._early:
            ready.append(self._early.pop(self.next))
            self.next += 1
        return ready
