"""The in-flight table that turns N concurrent identical calls into one upstream call."""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["Coalescer"]

T = TypeVar("T")


class Coalescer(Generic[T]):
    """Waiters grouped by cache key while the first one's call is in flight.

    The CacheActor calls `join(key, waiter)` on a miss: True means "you are first, make the call";
    False means the waiter was parked behind the call already running. When that call ends (answer
    or error), `resolve(key)` hands back every waiter, the first included, in arrival order, to be
    answered alike. `drop(waiter)` forgets a caller who went away; the call itself runs on and its
    result still reaches the others (and the cache). Waiters are compared with `==`, so unhashable
    ones (e.g. message models holding dicts) work.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, list[T]] = {}
        self.coalesced = 0  # joins that did not cause an upstream call

    def join(self, key: str, waiter: T) -> bool:
        """Add `waiter` under `key`; True if no call for `key` was in flight (the caller makes it)."""
        waiters = self._waiting.get(key)
        if waiters is None:
            self._waiting[key] = [waiter]
            return True
        waiters.append(waiter)
        self.coalesced += 1
        return False

    def resolve(self, key: str) -> list[T]:
        """End the call for `key`: every waiter still there, in arrival order ([] if none)."""
        return self._waiting.pop(key, [])

    def pending(self, key: str) -> bool:
        """Whether a call for `key` is in flight (even if every waiter has dropped out)."""
        return key in self._waiting

    def waiters(self, key: str) -> list[T]:
        return list(self._waiting.get(key, ()))

    def drop(self, waiter: T, key: str | None = None) -> str | None:
        """Forget `waiter` (searching every key unless `key` is given); returns the key it waited on."""
        keys = [key] if key is not None else list(self._waiting)
        for k in keys:
            waiters = self._waiting.get(k)
            if waiters is None:
                continue
            for i, w in enumerate(waiters):
                if w == waiter:
                    del waiters[i]
                    return k
        return None

    def __len__(self) -> int:
        """How many calls are in flight."""
        return len(self._waiting)

    def __contains__(self, key: object) -> bool:
        return key in self._waiting
