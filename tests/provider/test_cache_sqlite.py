"""SQLiteCache: survives reopening, expires on wall-clock time, prunes, shares a file by namespace."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from nova.cache import SQLiteCache
from nova.errors import ConfigurationError
from nova.types import Response, Usage


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def answer(text: str = "Paris.") -> Response:
    return Response(text=text, finish_reason="stop", model="m", usage=Usage(input_tokens=10, output_tokens=2))


def rows(path: Path) -> list[tuple[str, float | None]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT key, expires_at FROM nova_cache ORDER BY key").fetchall()


def test_entries_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    with SQLiteCache(path) as cache:
        cache.put("k", answer("kept"))
    with SQLiteCache(path) as reopened:
        hit = reopened.get("k")
        assert hit is not None and hit.text == "kept" and hit.cached
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_expiry_is_wall_clock_and_survives_reopening(tmp_path: Path) -> None:
    path, clock = tmp_path / "cache.db", FakeClock()
    with SQLiteCache(path, default_ttl_s=60, clock=clock) as cache:
        cache.put("short", answer())
        cache.put("long", answer(), ttl_s=3600)
        cache.put("forever", answer(), ttl_s=float("inf"))
    clock.now += 61
    with SQLiteCache(path, clock=clock) as reopened:  # opening prunes what expired meanwhile
        assert [k for k, _ in rows(path)] == ["nova:forever", "nova:long"]
        assert reopened.get("short") is None
        assert reopened.get("long") is not None
        clock.now += 3600
        assert reopened.get("long") is None
        assert reopened.get("forever") is not None
        assert rows(path) == [("nova:forever", None)]  # an expired row read is deleted too


def test_prune_trims_to_max_entries_oldest_stored_first(tmp_path: Path) -> None:
    clock = FakeClock()
    with SQLiteCache(tmp_path / "c.db", max_entries=3, prune_every=1000, clock=clock) as cache:
        for i in range(5):
            clock.now += 1
            cache.put(f"k{i}", answer())
        assert cache.stats().entries == 5  # between prunes the bound is approximate
        assert cache.prune() == 2
        assert [k for k, _ in rows(tmp_path / "c.db")] == ["nova:k2", "nova:k3", "nova:k4"]
        assert cache.stats().evictions == 2


def test_prune_runs_by_itself_every_n_writes(tmp_path: Path) -> None:
    with SQLiteCache(tmp_path / "c.db", max_entries=2, prune_every=4) as cache:
        for i in range(4):
            cache.put(f"k{i}", answer())
        assert cache.stats().entries == 2


def test_namespaces_share_a_file_without_mixing(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    with SQLiteCache(path, namespace="a") as a, SQLiteCache(path, namespace="a2") as a2:
        a.put("k", answer("from a"))
        a2.put("k", answer("from a2"))
        a.clear()
        assert a.get("k") is None
        hit = a2.get("k")
        assert hit is not None and hit.text == "from a2"
        assert (a.stats().entries, a2.stats().entries) == (0, 1)


def test_a_corrupt_row_written_by_hand_is_a_miss(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "c.db"
    with SQLiteCache(path) as cache:
        cache.put("k", answer())
        with sqlite3.connect(path) as db:
            db.execute("UPDATE nova_cache SET value = ? WHERE key = 'nova:k'", ("garbage as TEXT",))
        with caplog.at_level(logging.WARNING, logger="nova.cache"):
            assert cache.get("k") is None
        assert rows(path) == [] and cache.stats().corrupt == 1
        assert "corrupt entry k" in caplog.text


def test_a_file_that_is_not_a_database_is_a_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    path.write_bytes(b"this is not an SQLite file" * 100)
    with pytest.raises(ConfigurationError, match="c.db"):
        SQLiteCache(path)


def test_an_old_table_layout_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "c.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE nova_cache (k TEXT, v BLOB)")
        db.execute("PRAGMA user_version=99")
    with caplog.at_level(logging.WARNING, logger="nova.cache"), SQLiteCache(path) as cache:
        cache.put("k", answer())
        assert cache.get("k") is not None
    assert "rebuilding" in caplog.text


def test_a_failing_database_is_a_miss_not_an_error(tmp_path: Path) -> None:
    cache = SQLiteCache(tmp_path / "c.db")
    cache.put("k", answer())
    cache.close()  # every later statement fails inside sqlite3
    assert cache.get("k") is None
    cache.put("k", answer())
    stats = cache.stats()
    assert (stats.errors, stats.entries, stats.misses) == (3, None, 1)
    cache.close()  # twice is harmless
