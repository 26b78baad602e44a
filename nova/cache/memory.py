"""An in-process cache: least recently used entries go first, bounded by entry count and bytes, with TTL."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from nova.cache.base import Cache
from nova.errors import InvalidInputError

__all__ = ["MemoryCache"]


class MemoryCache(Cache):
    """LRU + TTL in a dict. Entries are kept encoded, so `max_bytes` bounds real memory (values plus
    keys) and a hit returns a fresh object that no caller can share by accident.

    `clock` (monotonic seconds) is injectable so that TTL tests need no sleeping.
    """

    name = "memory"

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        default_ttl_s: float | None = 3600,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(default_ttl_s=default_ttl_s)
        if max_entries < 1 or max_bytes < 1:
            raise InvalidInputError("max_entries and max_bytes must be at least 1", field="max_entries")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: OrderedDict[str, tuple[bytes, float | None]] = OrderedDict()  # oldest use first
        self._bytes = 0
        self._lock = threading.Lock()

    def keys(self) -> list[str]:
        """The keys held, least recently used first (expired ones included until touched)."""
        with self._lock:
            return list(self._entries)

    def prune_expired(self) -> int:
        """Drop every expired entry now (otherwise they go when touched or evicted); returns how many."""
        with self._lock:
            now = self._clock()
            expired = [k for k, (_, exp) in self._entries.items() if exp is not None and exp <= now]
            for key in expired:
                self._pop(key)
            return len(expired)

    def _load(self, key: str) -> bytes | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            data, expires = entry
            if expires is not None and expires <= self._clock():
                self._pop(key)
                return None
            self._entries.move_to_end(key)
            return data

    def _store(self, key: str, data: bytes, ttl_s: float | None) -> None:
        size = _size_of(key, data)
        with self._lock:
            self._pop(key)
            if size > self.max_bytes:  # could never fit; evicting everything else would not help
                return
            self._entries[key] = (data, None if ttl_s is None else self._clock() + ttl_s)
            self._bytes += size
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                oldest = next(iter(self._entries))
                self._pop(oldest)
                self._evictions += 1

    def _remove(self, key: str) -> None:
        with self._lock:
            self._pop(key)

    def _clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def _size(self) -> tuple[int, int]:
        self.prune_expired()
        with self._lock:
            return len(self._entries), self._bytes

    def _pop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= _size_of(key, entry[0])


def _size_of(key: str, data: bytes) -> int:
    return len(data) + len(key)
