"""The response cache as plain objects: keys, backends (memory, SQLite, Redis), replay and coalescing.

The CacheActor owns one `Cache` from `open_cache(settings)` and one `Coalescer`; everything here is
synchronous, quick, and never fails a call because of a bad entry or a failing backend.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from nova.cache.base import FORMAT_VERSION, Cache, CacheStats, CorruptEntryError, decode_entry, encode_entry
from nova.cache.coalesce import Coalescer
from nova.cache.key import IGNORED_EXTRA_KEYS, KEY_VERSION, cache_key, canonical_request
from nova.cache.memory import MemoryCache
from nova.cache.redis import RedisCache
from nova.cache.replay import replay_chunks
from nova.cache.settings import CacheSettings
from nova.cache.sqlite import SQLiteCache

__all__ = [
    "FORMAT_VERSION",
    "IGNORED_EXTRA_KEYS",
    "KEY_VERSION",
    "Cache",
    "CacheSettings",
    "CacheStats",
    "Coalescer",
    "CorruptEntryError",
    "MemoryCache",
    "RedisCache",
    "SQLiteCache",
    "cache_key",
    "canonical_request",
    "decode_entry",
    "encode_entry",
    "open_cache",
    "replay_chunks",
]


def open_cache(
    settings: CacheSettings,
    *,
    clock: Callable[[], float] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
) -> Cache:
    """The backend `settings` names, configured from it. It opens regardless of `settings.enabled`
    (whether to consult the cache is the actor's decision). A relative SQLite `path` (after `~` is
    expanded) is under `base_dir` (the CacheActor passes `system.state_dir`); None: the working
    directory. `clock` is for tests: monotonic seconds for memory, wall-clock seconds for SQLite;
    Redis keeps time itself."""
    if settings.backend == "memory":
        return MemoryCache(
            max_entries=settings.max_entries,
            max_bytes=settings.max_bytes,
            default_ttl_s=settings.ttl_s,
            clock=clock or time.monotonic,
        )
    if settings.backend == "sqlite":
        path = settings.path
        if base_dir is not None and path != ":memory:" and not Path(path).expanduser().is_absolute():
            path = str(Path(base_dir).expanduser() / path)
        return SQLiteCache(
            path,
            namespace=settings.namespace,
            max_entries=settings.max_entries,
            default_ttl_s=settings.ttl_s,
            clock=clock or time.time,
        )
    return RedisCache(
        settings.redis_url,
        namespace=settings.namespace,
        default_ttl_s=settings.ttl_s,
        timeout_s=settings.redis_timeout_s,
    )
