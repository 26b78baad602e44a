"""Every backend keeps the same contract; Redis runs against a real redis-server these tests start.

Corrupt entries (bad bytes, another format version, a changed schema) must be a miss, a warning and a
deletion on every backend, never an exception.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nova.cache import Cache, CacheSettings, MemoryCache, RedisCache, SQLiteCache, encode_entry, open_cache
from nova.errors import ConfigurationError, ProviderError
from nova.types import Response, ToolCall, Usage
from tests.waiting import wait_until

SECRET_TEXT = "the-cached-answer-text"


def answer(text: str = SECRET_TEXT) -> Response:
    return Response(
        text=text,
        finish_reason="tool_calls",
        model="gpt-4o-mini",
        driver="openai",
        id="resp-1",
        usage=Usage(input_tokens=12, output_tokens=3, cached_input_tokens=4),
        tool_calls=(ToolCall(id="c1", name="weather", arguments={"city": "Paris"}),),
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(
            "redis-server not found on PATH (apt-get install redis-server): Redis cache tests skipped"
        )
    pytest.importorskip("redis", reason="the redis package is not installed (pip install 'nova-llm[redis]')")
    import redis

    workdir = tmp_path_factory.mktemp("redis")
    for _ in range(3):  # the free port may be taken between probing and binding
        port = free_port()
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=port, socket_connect_timeout=0.2)

        def ready(client: Any = client, proc: subprocess.Popen[bytes] = proc) -> bool:
            if proc.poll() is not None:
                return True
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_until(ready, timeout=10)
        client.close()
        if proc.poll() is None:
            break
    else:
        pytest.fail("redis-server did not start on a free port in 3 tries")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def redis_cache(redis_url: str) -> Iterator[RedisCache]:
    cache = RedisCache(redis_url, namespace="test")
    cache.client.flushdb()
    yield cache
    cache.close()


@pytest.fixture(params=["memory", "sqlite", "redis"])
def cache(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cache]:
    if request.param == "memory":
        yield MemoryCache()
    elif request.param == "sqlite":
        with SQLiteCache(tmp_path / "cache.db") as sqlite:
            yield sqlite
    else:
        yield request.getfixturevalue("redis_cache")


def test_round_trip_delete_and_clear(cache: Cache) -> None:
    assert cache.get("k1") is None
    cache.put("k1", answer())
    cache.put("k2", answer("other"))
    hit = cache.get("k1")
    assert hit is not None and hit.cached and hit.cost_usd == 0.0
    assert hit.model_copy(update={"cached": False, "cost_usd": None}) == answer()
    cache.delete("k1")
    assert cache.get("k1") is None
    stats = cache.stats()
    assert (stats.backend, stats.entries, stats.hits, stats.misses) == (cache.name, 1, 1, 2)
    assert stats.bytes is not None and stats.bytes > len(encode_entry(answer("other")))
    cache.clear()
    assert cache.get("k2") is None and cache.stats().entries == 0


def test_unicode_survives(cache: Cache) -> None:
    cache.put("k", answer("Zürich – 東京 – 🚀"))
    hit = cache.get("k")
    assert hit is not None and hit.text == "Zürich – 東京 – 🚀"


CORRUPT = {
    "not json": b"\x80\x04\x95 a pickle, perhaps",
    "truncated": encode_entry(answer())[:-9],
    "empty": b"",
    "json but not an entry": b"[1, 2, 3]",
    "another format version": encode_entry(answer()).replace(b'{"v":1', b'{"v":2', 1),
    "schema changed": encode_entry(answer()).replace(b'"text":', b'"new_field":1,"text":', 1),
    "wrong field type": encode_entry(answer()).replace(b'"input_tokens":12', b'"input_tokens":"many"', 1),
}


@pytest.mark.parametrize("what", sorted(CORRUPT))
def test_a_corrupt_entry_is_a_logged_miss_and_is_deleted(
    cache: Cache, what: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache._store("bad", CORRUPT[what], None)  # the backend's raw write: what another writer could leave
    with caplog.at_level(logging.WARNING, logger="nova.cache"):
        assert cache.get("bad") is None
    assert cache._load("bad") is None  # deleted, so the next call can store a good answer
    stats = cache.stats()
    assert (stats.corrupt, stats.misses, stats.hits) == (1, 1, 0)
    [record] = caplog.records
    assert "corrupt entry bad" in record.getMessage()
    assert SECRET_TEXT not in record.getMessage()  # the reason names fields, never the content
    cache.put("bad", answer())
    assert cache.get("bad") is not None


def test_entries_are_versioned_json_not_pickles(cache: Cache) -> None:
    cache.put("k", answer())
    raw = cache._load("k")
    assert raw is not None and raw.startswith(b'{"v":1,"response":{')


# --- Redis only ------------------------------------------------------------------------------------


def test_redis_uses_server_side_expiry_with_px(redis_cache: RedisCache) -> None:
    redis_cache.put("short", answer(), ttl_s=0.2)
    redis_cache.put("default", answer())
    client = redis_cache.client
    assert 0 < client.pttl(redis_cache.redis_key("short")) <= 200
    assert 3_500_000 < client.pttl(redis_cache.redis_key("default")) <= 3_600_000
    redis_cache.put("forever", answer(), ttl_s=float("inf"))
    assert client.pttl(redis_cache.redis_key("forever")) == -1
    assert wait_until(lambda: redis_cache.get("short") is None, timeout=5)
    assert redis_cache.get("default") is not None


def test_redis_namespaces_are_separate(redis_url: str, redis_cache: RedisCache) -> None:
    with RedisCache(redis_url, namespace="other") as other:
        redis_cache.put("k", answer("mine"))
        other.put("k", answer("theirs"))
        other.clear()
        mine = redis_cache.get("k")
        assert mine is not None and mine.text == "mine"
        assert other.get("k") is None
        assert redis_cache.redis_key("k") == "test:cache:k"


def test_redis_clear_handles_many_keys(redis_cache: RedisCache) -> None:
    for i in range(1200):
        redis_cache._store(f"k{i}", b"x", None)
    assert redis_cache.stats().entries == 1200
    redis_cache.clear()
    assert redis_cache.stats().entries == 0


def test_open_cache_builds_redis(redis_url: str) -> None:
    with open_cache(CacheSettings(backend="redis", redis_url=redis_url, namespace="via-settings")) as cache:
        assert isinstance(cache, RedisCache)
        cache.put("k", answer())
        assert cache.get("k") is not None
        cache.clear()


def test_an_unreachable_redis_is_a_miss_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    cache = RedisCache(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    with caplog.at_level(logging.WARNING, logger="nova.cache"):
        cache.put("k", answer())
        assert cache.get("k") is None
        cache.delete("k")
        stats = cache.stats()
    assert (stats.entries, stats.bytes, stats.errors, stats.misses) == (None, None, 4, 1)
    assert len(caplog.records) == 1  # one warning, not one per call
    assert "served as a miss" in caplog.records[0].getMessage()
    with pytest.raises(ProviderError):
        cache.clear()  # an explicit administrative call does report the failure
    cache.close()


def test_redis_without_the_package_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # `import redis` now raises ImportError
    with pytest.raises(ConfigurationError, match=r"nova-llm\[redis\]"):
        RedisCache()


def test_a_bad_redis_url_is_a_configuration_error() -> None:
    pytest.importorskip("redis", reason="the redis package is not installed")
    with pytest.raises(ConfigurationError, match="redis_url") as info:
        RedisCache("http://user:pw-secret@host/0")
    assert "pw-secret" not in str(info.value)


@pytest.mark.parametrize("ttl", [0, 0.0, -0.0, -1, float("nan"), 1e-9, 0.0004])
def test_a_zero_ttl_is_never_served_on_any_backend(cache: Cache, ttl: float) -> None:
    cache.put("fresh", answer(), ttl_s=ttl)
    assert cache.get("fresh") is None
    cache.put("old", answer("old"))
    cache.put("old", answer("new"), ttl_s=ttl)  # "do not keep" also drops the earlier answer
    assert cache.get("old") is None
    assert cache.stats().entries == 0 and cache.stats().hits == 0
