"""MemoryCache: LRU order, the entry and byte bounds, TTL on an injected clock, the hit/put rules."""

from __future__ import annotations

import math

import pytest

from nova.cache import CacheSettings, MemoryCache, SQLiteCache, encode_entry, open_cache
from nova.errors import InvalidInputError, RateLimitError
from nova.types import Attempt, Response, Usage


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def answer(text: str = "Paris.") -> Response:
    return Response(text=text, finish_reason="stop", model="m", usage=Usage(input_tokens=10, output_tokens=2))


def test_least_recently_used_goes_first() -> None:
    cache = MemoryCache(max_entries=3)
    for key in "abc":
        cache.put(key, answer(key))
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("d", answer("d"))
    assert cache.keys() == ["c", "a", "d"]
    assert cache.get("b") is None
    assert cache.stats().evictions == 1


def test_rewriting_a_key_does_not_count_twice() -> None:
    cache = MemoryCache(max_entries=2)
    cache.put("a", answer("one"))
    cache.put("a", answer("two"))
    cache.put("b", answer())
    stats = cache.stats()
    assert (stats.entries, stats.evictions) == (2, 0)
    assert stats.bytes == len(encode_entry(answer("two"))) + len(encode_entry(answer())) + 2
    hit = cache.get("a")
    assert hit is not None and hit.text == "two"


def test_byte_bound_evicts_and_oversized_entries_are_not_stored() -> None:
    size = len(encode_entry(answer("x" * 100))) + 1  # value plus a one-letter key
    cache = MemoryCache(max_bytes=size * 2 + size // 2)
    for key in "abc":
        cache.put(key, answer("x" * 100))
    stats = cache.stats()
    assert cache.keys() == ["b", "c"] and stats.bytes == 2 * size <= cache.max_bytes
    cache.put("huge", answer("y" * (size * 3)))
    assert cache.get("huge") is None
    assert cache.keys() == ["b", "c"]  # nothing was evicted for an entry that could never fit


def test_ttl_on_the_injected_clock() -> None:
    clock = FakeClock()
    cache = MemoryCache(default_ttl_s=10, clock=clock)
    cache.put("default", answer())
    cache.put("short", answer(), ttl_s=1)
    cache.put("forever", answer(), ttl_s=math.inf)
    clock.now += 1
    assert cache.get("short") is None
    clock.now += 8.99
    assert cache.get("default") is not None
    clock.now += 0.01
    assert cache.get("default") is None
    clock.now += 1e9
    assert cache.get("forever") is not None


def test_no_default_ttl_keeps_entries_and_zero_ttl_stores_nothing() -> None:
    clock = FakeClock()
    cache = MemoryCache(default_ttl_s=None, clock=clock)
    cache.put("k", answer("old"))
    clock.now += 1e9
    assert cache.get("k") is not None
    cache.put("k", answer("new"), ttl_s=0)  # "do not keep": also drops the old answer
    assert cache.get("k") is None


def test_expired_entries_leave_the_counts() -> None:
    clock = FakeClock()
    cache = MemoryCache(default_ttl_s=5, clock=clock)
    cache.put("a", answer())
    cache.put("b", answer(), ttl_s=60)
    clock.now += 6
    assert cache.prune_expired() == 1
    assert cache.stats().entries == 1


def test_a_hit_is_marked_cached_costs_nothing_and_keeps_usage() -> None:
    cache = MemoryCache()
    original = answer().model_copy(
        update={"cost_usd": 0.02, "latency_s": 1.5, "attempts": (Attempt(driver="d", model="m", ok=True),)}
    )
    cache.put("k", original)
    hit = cache.get("k")
    assert hit is not None
    assert hit.cached is True and hit.cost_usd == 0.0
    assert hit.usage == original.usage and hit.text == original.text
    assert hit.attempts == () and hit.latency_s is None  # this call made no attempt
    assert cache.get("k") is not hit  # every hit is its own object


def test_errors_are_never_stored() -> None:
    cache = MemoryCache()
    with pytest.raises(InvalidInputError):
        cache.put("k", RateLimitError("slow down"))  # type: ignore[arg-type]
    assert cache.get("k") is None and cache.stats().entries == 0


def test_stats_count_hits_and_misses() -> None:
    cache = MemoryCache()
    cache.put("k", answer())
    cache.get("k")
    cache.get("k")
    cache.get("nope")
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.corrupt, stats.errors) == (2, 1, 0, 0)
    assert stats.hit_ratio == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "bad", [{"max_entries": 0}, {"max_bytes": 0}, {"default_ttl_s": 0}, {"default_ttl_s": -1}]
)
def test_bad_bounds_are_typed_errors(bad: dict[str, float]) -> None:
    with pytest.raises(InvalidInputError):
        MemoryCache(**bad)  # type: ignore[arg-type]


def test_settings_defaults_and_strictness() -> None:
    s = CacheSettings()
    assert (s.enabled, s.backend, s.ttl_s, s.max_entries, s.max_bytes) == (
        False,
        "memory",
        3600,
        10_000,
        64 * 1024 * 1024,
    )
    assert (s.path, s.redis_url, s.namespace) == ("nova-cache.sqlite3", "redis://127.0.0.1:6379/0", "nova")
    with pytest.raises(ValueError, match="max_entrys"):
        CacheSettings(max_entrys=5)  # type: ignore[call-arg]
    with pytest.raises(ValueError):
        CacheSettings(ttl_s=0)
    with pytest.raises(ValueError):
        CacheSettings(backend="memcached")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        CacheSettings(namespace="has space")
    with pytest.raises(ValueError):
        s.enabled = True  # type: ignore[misc]


def test_open_cache_builds_the_configured_backend(tmp_path) -> None:  # type: ignore[no-untyped-def]
    memory = open_cache(CacheSettings(max_entries=7, ttl_s=None))
    assert isinstance(memory, MemoryCache) and memory.max_entries == 7 and memory.default_ttl_s is None
    with open_cache(CacheSettings(backend="sqlite", path=str(tmp_path / "sub" / "c.db"))) as sqlite:
        assert isinstance(sqlite, SQLiteCache) and (tmp_path / "sub" / "c.db").exists()
