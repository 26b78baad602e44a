"""Where conversations live: the `ConversationStore` protocol, in memory or in SQLite.

A conversation exists while it has messages; `reset` forgets it. Messages are stored as JSON
(`Message.model_dump_json`), never pickles, so a store file is safe to open and to read by hand.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from pydantic import ValidationError

from nova.errors import ConfigurationError, InvalidInputError
from nova.types import Message

__all__ = ["ConversationStore", "MemoryStore", "SQLiteStore"]

log = logging.getLogger("nova.context")


@runtime_checkable
class ConversationStore(Protocol):
    def history(self, conv_id: str) -> list[Message]: ...

    def append(self, conv_id: str, *messages: Message) -> None: ...

    def replace(self, conv_id: str, messages: Sequence[Message]) -> None: ...

    def reset(self, conv_id: str) -> None: ...

    def fork(self, src_id: str, new_id: str) -> None: ...

    def list(self) -> list[str]: ...

    def close(self) -> None: ...


def _check_id(conv_id: object) -> str:
    if not isinstance(conv_id, str) or not conv_id:
        raise InvalidInputError(
            f"a conversation id must be a non-empty string, got {conv_id!r}", field="conversation"
        )
    return conv_id


def _check_fork(src_exists: bool, src_id: str, new_id: str, target_exists: bool) -> None:
    if not src_exists:
        raise InvalidInputError(
            f"cannot fork conversation {src_id!r}: it has no messages", field="conversation"
        )
    if target_exists:
        raise InvalidInputError(
            f"cannot fork into conversation {new_id!r}: it already exists", field="conversation"
        )


class MemoryStore:
    """Conversations in this process's memory; gone when it stops."""

    def __init__(self) -> None:
        self._conversations: dict[str, list[Message]] = {}
        self._lock = threading.Lock()

    def history(self, conv_id: str) -> list[Message]:
        with self._lock:
            return list(self._conversations.get(_check_id(conv_id), ()))

    def append(self, conv_id: str, *messages: Message) -> None:
        if messages:
            with self._lock:
                self._conversations.setdefault(_check_id(conv_id), []).extend(messages)

    def replace(self, conv_id: str, messages: Sequence[Message]) -> None:
        with self._lock:
            if messages:
                self._conversations[_check_id(conv_id)] = list(messages)
            else:
                self._conversations.pop(_check_id(conv_id), None)

    def reset(self, conv_id: str) -> None:
        self.replace(conv_id, ())

    def fork(self, src_id: str, new_id: str) -> None:
        with self._lock:
            src = self._conversations.get(_check_id(src_id), [])
            _check_fork(bool(src), src_id, new_id, bool(self._conversations.get(_check_id(new_id))))
            self._conversations[new_id] = list(src)  # messages are frozen: sharing them is safe

    def list(self) -> list[str]:
        with self._lock:
            return sorted(self._conversations)

    def close(self) -> None:
        pass


_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    conv_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (conv_id, seq)
)
"""


class SQLiteStore:
    """Conversations in one SQLite file; they survive a restart.

    One connection guarded by a lock: the owning actor has one thread, and the lock keeps a
    second thread (a test, a CLI command) safe too.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(_SCHEMA)
        except sqlite3.Error as exc:
            raise ConfigurationError(f"cannot open the conversation store {self.path!r}: {exc}") from exc
        self._lock = threading.Lock()

    def history(self, conv_id: str) -> list[Message]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, body FROM messages WHERE conv_id = ? ORDER BY seq", (_check_id(conv_id),)
            ).fetchall()
        messages = []
        for seq, body in rows:
            try:
                messages.append(Message.model_validate_json(body))
            except ValidationError:
                # One damaged row must not make the whole conversation unusable.
                log.warning(
                    "conversation %r: message %d in %s is unreadable; skipped", conv_id, seq, self.path
                )
        return messages

    def append(self, conv_id: str, *messages: Message) -> None:
        if messages:
            with self._lock, self._transaction():
                self._insert(_check_id(conv_id), messages)

    def replace(self, conv_id: str, messages: Sequence[Message]) -> None:
        with self._lock, self._transaction():
            self._db.execute("DELETE FROM messages WHERE conv_id = ?", (_check_id(conv_id),))
            self._insert(conv_id, messages)

    def reset(self, conv_id: str) -> None:
        self.replace(conv_id, ())

    def fork(self, src_id: str, new_id: str) -> None:
        with self._lock, self._transaction():
            exists = self._count(_check_id(src_id)) > 0
            _check_fork(exists, src_id, new_id, self._count(_check_id(new_id)) > 0)
            self._db.execute(
                "INSERT INTO messages (conv_id, seq, body)"
                " SELECT ?, seq, body FROM messages WHERE conv_id = ?",
                (new_id, src_id),
            )

    def list(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT DISTINCT conv_id FROM messages ORDER BY conv_id")]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _count(self, conv_id: str) -> int:
        return int(
            self._db.execute("SELECT COUNT(*) FROM messages WHERE conv_id = ?", (conv_id,)).fetchone()[0]
        )

    def _insert(self, conv_id: str, messages: Iterable[Message]) -> None:
        start = self._db.execute(
            "SELECT COALESCE(MAX(seq), -1) + 1 FROM messages WHERE conv_id = ?", (conv_id,)
        ).fetchone()[0]
        self._db.executemany(
            "INSERT INTO messages (conv_id, seq, body) VALUES (?, ?, ?)",
            [(conv_id, start + i, m.model_dump_json()) for i, m in enumerate(messages)],
        )

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on error (the connection runs in autocommit mode)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
