"""The cache's configuration: which backend, its bounds and the default time to live."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CacheSettings"]

MiB = 1024 * 1024


class CacheSettings(BaseModel):
    """`[cache]` in config.toml. Per-call `cache=True/False/"refresh"` and `ttl=` override at call time.

    - `enabled`: off by default (`nova run` too): switch it on here.
    - `backend`: "memory" (this process, LRU), "sqlite" (a file, survives restarts), "redis" (shared by
      several nodes; needs the `redis` extra).
    - `ttl_s`: default time to live in seconds; None keeps entries until evicted.
    - `max_entries`: memory and SQLite (oldest stored go first); Redis relies on TTL and its own
      `maxmemory` policy.
    - `max_bytes`: memory only; counts the encoded entries and their keys.
    - `path`: the SQLite file (`~` expanded, parent directories created).
    - `redis_url`, `redis_timeout_s`: the Redis server and the socket timeout for each command; a Redis
      that does not answer in time is a miss, not a failed call.
    - `namespace`: prefixes keys in SQLite and Redis so that several applications can share one store.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    backend: Literal["memory", "sqlite", "redis"] = "memory"
    ttl_s: float | None = Field(default=3600, gt=0)
    max_entries: int = Field(default=10_000, ge=1)
    max_bytes: int = Field(default=64 * MiB, ge=1)
    path: str = Field(default="nova-cache.sqlite3", min_length=1)
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_timeout_s: float = Field(default=0.5, gt=0)
    namespace: str = Field(default="nova", min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
