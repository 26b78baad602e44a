"""Keeps API keys out of every message, repr, log line and event Nova produces.

Drivers register the keys they hold with `register`; `redact` replaces those and anything shaped
like a well-known key (sk-…, sk-ant-…, Bearer tokens) with a mask.
"""

from __future__ import annotations

import re
import threading

__all__ = ["Secret", "redact", "register"]

_MASK = "***"
# Anchored at a word start, so "risk-assessment" or "task-oriented" stay; a Bearer token must
# hold a digit or be longer than ordinary words ("the bearer instrument" stays).
_TOKEN = r"[A-Za-z0-9_\-.=~+/]"
_PATTERN = re.compile(
    rf"(?<![A-Za-z0-9])sk-(?:ant-|proj-)?[A-Za-z0-9_\-]{{8,}}"
    rf"|\b(?i:bearer)\s+(?:(?={_TOKEN}*\d){_TOKEN}{{8,}}|{_TOKEN}{{20,}})"
    r"|(?<![A-Za-z0-9])AIza[0-9A-Za-z_\-]{20,}"
)
_known: set[str] = set()
_lock = threading.Lock()


def register(secret: str) -> None:
    """Remember a secret so that `redact` masks it wherever it appears."""
    if secret and len(secret) >= 4:
        with _lock:
            _known.add(secret)


def redact(text: str) -> str:
    if not text:
        return text
    for secret in tuple(_known):
        if secret in text:
            text = text.replace(secret, _MASK)
    return _PATTERN.sub(_MASK, text)


class Secret:
    """A string that never shows itself: repr and str are masked; `.reveal()` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        register(value)

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        return (Secret, (self._value,))
