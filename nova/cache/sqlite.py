"""A persistent cache in one SQLite file (WAL), shared safely by the processes of one machine."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from nova.cache.base import Cache
from nova.errors import ConfigurationError, InvalidInputError

__all__ = ["SCHEMA_VERSION", "SQLiteCache"]

SCHEMA_VERSION = 1  # PRAGMA user_version; another value means an old layout: the table is rebuilt
log = logging.getLogger("nova.cache")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nova_cache (
    key        TEXT PRIMARY KEY,
    value      BLOB NOT NULL,
    expires_at REAL,            -- wall-clock seconds; NULL: no expiry
    stored_at  REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS nova_cache_expires ON nova_cache (expires_at);
CREATE INDEX IF NOT EXISTS nova_cache_stored ON nova_cache (stored_at);
"""


class SQLiteCache(Cache):
    """Entries live in table `nova_cache` of the file at `path` (":memory:" for a private one).

    Expiry uses wall-clock time (`clock`, injectable) because it must survive restarts. A hit only
    reads; expired rows are deleted when read and by `prune()`, which runs on open and after every
    `prune_every` writes and also trims the namespace to `max_entries`, oldest stored first (LRU
    would turn every hit into a write). Keys are prefixed with `namespace:` so that applications can
    share a file.
    """

    name = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str] = "nova-cache.sqlite3",
        *,
        namespace: str = "nova",
        max_entries: int = 10_000,
        default_ttl_s: float | None = 3600,
        clock: Callable[[], float] = time.time,
        prune_every: int = 256,
        busy_timeout_s: float = 2.0,
    ) -> None:
        super().__init__(default_ttl_s=default_ttl_s)
        self._backend_errors = (sqlite3.Error,)
        if max_entries < 1 or prune_every < 1:
            raise InvalidInputError("max_entries and prune_every must be at least 1", field="max_entries")
        self.path = str(path)
        self.max_entries = max_entries
        self.prune_every = prune_every
        self._prefix = f"{namespace}:"
        self._upper = f"{namespace};"  # ';' follows ':': [prefix, upper) is exactly this namespace
        self._clock = clock
        self._lock = threading.Lock()
        self._writes = 0
        self._db = self._open(busy_timeout_s)
        self.prune()

    def _open(self, busy_timeout_s: float) -> sqlite3.Connection:
        if self.path != ":memory:":
            self.path = str(Path(self.path).expanduser())
        db: sqlite3.Connection | None = None
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            # autocommit; one connection used under a lock, from whichever thread owns the cache
            db = sqlite3.connect(
                self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable enough for a cache, fast
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                log.warning("sqlite cache %s: layout version %s, rebuilding the table", self.path, version)
                db.execute("DROP TABLE IF EXISTS nova_cache")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            return db
        except (sqlite3.Error, OSError) as exc:
            if db is not None:
                db.close()
            raise ConfigurationError(f"cannot open the SQLite cache at {self.path!r}: {exc}") from None

    def prune(self) -> int:
        """Delete expired rows, then the oldest stored beyond `max_entries`; returns how many went."""
        prefix, upper = self._prefix, self._upper
        with self._lock:
            gone = self._db.execute(
                "DELETE FROM nova_cache WHERE key >= ? AND key < ? AND expires_at <= ?",
                (prefix, upper, self._clock()),
            ).rowcount
            count = self._db.execute(
                "SELECT count(*) FROM nova_cache WHERE key >= ? AND key < ?", (prefix, upper)
            ).fetchone()[0]
            if count > self.max_entries:
                evicted = self._db.execute(
                    "DELETE FROM nova_cache WHERE key IN (SELECT key FROM nova_cache"
                    " WHERE key >= ? AND key < ? ORDER BY stored_at LIMIT ?)",
                    (prefix, upper, count - self.max_entries),
                ).rowcount
                self._evictions += evicted
                gone += evicted
            return gone

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _load(self, key: str) -> bytes | None:
        with self._lock:
            row = self._db.execute(
                "SELECT value, expires_at FROM nova_cache WHERE key = ?", (self._prefix + key,)
            ).fetchone()
            if row is None:
                return None
            value, expires = row
            if expires is not None and expires <= self._clock():
                self._db.execute("DELETE FROM nova_cache WHERE key = ?", (self._prefix + key,))
                return None
            return bytes(value) if not isinstance(value, str) else value.encode("utf-8", "replace")

    def _store(self, key: str, data: bytes, ttl_s: float | None) -> None:
        now = self._clock()
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO nova_cache (key, value, expires_at, stored_at) VALUES (?, ?, ?, ?)",
                (self._prefix + key, data, None if ttl_s is None else now + ttl_s, now),
            )
            self._writes += 1
            due = self._writes % self.prune_every == 0
        if due:
            self.prune()

    def _remove(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM nova_cache WHERE key = ?", (self._prefix + key,))

    def _clear(self) -> None:
        with self._lock:
            self._db.execute("DELETE FROM nova_cache WHERE key >= ? AND key < ?", (self._prefix, self._upper))

    def _size(self) -> tuple[int, int]:
        with self._lock:
            entries, size = self._db.execute(
                "SELECT count(*), coalesce(sum(length(value) + length(key)), 0) FROM nova_cache"
                " WHERE key >= ? AND key < ? AND (expires_at IS NULL OR expires_at > ?)",
                (self._prefix, self._upper, self._clock()),
            ).fetchone()
        return int(entries), int(size)
