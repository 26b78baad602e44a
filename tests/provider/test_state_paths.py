"""Relative SQLite paths (cache and conversation store) live under `system.state_dir`."""

from __future__ import annotations

from pathlib import Path

import pytest

from nova.cache import CacheSettings, SQLiteCache, open_cache
from nova.config import parse_config
from nova.context import ContextSettings, Conversation, SQLiteStore
from nova.features import build_provider


def sqlite_cache(path: str, base_dir: Path | None) -> SQLiteCache:
    cache = open_cache(CacheSettings(backend="sqlite", path=path), base_dir=base_dir)
    assert isinstance(cache, SQLiteCache)
    return cache


def test_a_relative_cache_path_is_under_the_base_dir(tmp_path: Path) -> None:
    with sqlite_cache("sub/cache.sqlite3", tmp_path / "state") as cache:
        assert cache.path == str(tmp_path / "state" / "sub" / "cache.sqlite3")
    assert (tmp_path / "state" / "sub" / "cache.sqlite3").is_file()


def test_absolute_home_and_memory_cache_paths_are_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with sqlite_cache(str(tmp_path / "abs.sqlite3"), tmp_path / "state") as cache:
        assert cache.path == str(tmp_path / "abs.sqlite3")
    with sqlite_cache("~/c.sqlite3", tmp_path / "state") as cache:
        assert cache.path == str(tmp_path / "home" / "c.sqlite3")
    with sqlite_cache(":memory:", tmp_path / "state") as cache:
        assert cache.path == ":memory:"
    assert not (tmp_path / "state").exists()


def test_without_a_base_dir_a_relative_cache_path_is_under_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with sqlite_cache("here.sqlite3", None):
        pass
    assert (tmp_path / "here.sqlite3").is_file()


def store_path(conv: Conversation) -> str:
    assert isinstance(conv.store, SQLiteStore)
    return conv.store.path


def test_conversation_store_paths_resolve_like_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    state = tmp_path / "state"
    for configured, expected in [
        ("deep/conv.sqlite3", str(state / "deep" / "conv.sqlite3")),
        (str(tmp_path / "abs.sqlite3"), str(tmp_path / "abs.sqlite3")),
        ("~/conv.sqlite3", str(tmp_path / "home" / "conv.sqlite3")),
        (":memory:", ":memory:"),
    ]:
        conv = Conversation.from_settings(ContextSettings(store="sqlite", path=configured), base_dir=state)
        assert store_path(conv) == expected
        conv.close()
    assert (state / "deep" / "conv.sqlite3").is_file()


def test_the_provider_puts_a_relative_conversation_store_under_the_state_dir(tmp_path: Path) -> None:
    config = parse_config(
        {
            "system": {"state_dir": str(tmp_path / "state")},
            "context": {"store": "sqlite", "path": "conversations.sqlite3"},
        }
    )
    provider = build_provider(config)
    assert store_path(provider.conversations.conversation) == str(
        tmp_path / "state" / "conversations.sqlite3"
    )
    provider.conversations.conversation.close()
