"""A sliding-window log: what one scope admitted in the last 60 s, with each entry adjustable.

Why a log and not token buckets: a bucket refilling at limit/60 per second lets a full bucket's
burst plus a minute of refill through, up to twice the limit in one 60 s window, which is exactly
what gets a 429 from a service that counts per minute. The log admits at most the limit in *every*
60 s window, knows exactly when capacity frees (the oldest entry's expiry), and lets a finished
call's estimate be replaced by its real usage. Its size is bounded by the admissions of one minute.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = [
    "EPSILON",
    "WINDOW_S",
    "SlidingWindow",
]

WINDOW_S = 60.0
# Clock comparisons allow this much float error: waking at `expiry - now` must find it expired.
EPSILON = 1e-9


@dataclass(slots=True)
class _Entry:
    request_id: str
    expires_at: float
    tokens: int


class SlidingWindow:
    """Admissions whose 60 s have not run out: their count and their token sum."""

    def __init__(self, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self._log: deque[_Entry] = deque()
        self._by_id: dict[str, _Entry] = {}
        self.tokens = 0

    def __len__(self) -> int:
        return len(self._log)

    def prune(self, now: float) -> None:
        log = self._log
        while log and log[0].expires_at <= now + EPSILON:
            entry = log.popleft()
            self.tokens -= entry.tokens
            self._by_id.pop(entry.request_id, None)

    def add(self, request_id: str, tokens: int, now: float) -> None:
        entry = _Entry(request_id, now + self.window_s, tokens)
        self._log.append(entry)
        self._by_id[request_id] = entry
        self.tokens += tokens

    def adjust(self, request_id: str, tokens: int) -> bool:
        """Replace an entry's tokens (estimate -> real usage). False if it has already expired:
        the service's own minute has passed too, so there is nothing left to correct."""
        entry = self._by_id.get(request_id)
        if entry is None:
            return False
        self.tokens += tokens - entry.tokens
        entry.tokens = tokens
        return True

    def when_count_at_most(self, count: int) -> float | None:
        """The time at which at most `count` entries remain (None: now already)."""
        excess = len(self._log) - count
        return None if excess <= 0 else self._log[excess - 1].expires_at

    def when_tokens_at_most(self, tokens: int) -> float | None:
        """The time at which at most `tokens` remain in the window (None: now already)."""
        excess = self.tokens - tokens
        if excess <= 0:
            return None
        for entry in self._log:
            excess -= entry.tokens
            if excess <= 0:
                return entry.expires_at
        return self._log[-1].expires_at if self._log else None
