"""What every cache backend shares: the entry format, the miss-never-crash rules and the counters.

A backend subclasses `Cache` and implements five small byte-level methods (`_load`, `_store`,
`_remove`, `_clear`, `_size`). The public methods here add the rules:

- Only a `Response` is ever stored; errors never are.
- Entries are versioned JSON, `{"v": 1, "response": {...}}`, never pickles: a shared Redis must not be
  able to make Nova run code.
- An entry that cannot be decoded (bad bytes, another format version, a changed schema) is a miss: it
  is counted as corrupt, logged as a warning (key prefix and reason, never content) and deleted.
- A backend that fails (Redis down, SQLite locked) makes `get` a miss and `put`/`delete` a no-op, with a
  rate-limited warning: the cache speeds calls up and never fails them.
- A TTL of zero (or less, or under `MIN_TTL_S`) stores nothing and drops any entry under the key, on
  every backend: Redis cannot expire in less than a millisecond (it would round such a TTL up and
  serve the entry), so no backend keeps anything shorter.
- A hit comes back with `cached=True` and `cost_usd=0.0` (this call cost nothing) and keeps its usage;
  the stored copy drops per-call fields (attempts, latency, cost).
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from typing import ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from nova.errors import InvalidInputError, ProviderError
from nova.secrets import redact
from nova.types import Response

__all__ = [
    "FORMAT_VERSION",
    "MIN_TTL_S",
    "Cache",
    "CacheStats",
    "CorruptEntryError",
    "decode_entry",
    "encode_entry",
]

FORMAT_VERSION = 1
MIN_TTL_S = 0.001  # the shortest expiry every backend can keep (Redis counts milliseconds)
log = logging.getLogger("nova.cache")
_WARN_EVERY_S = 30.0  # a dead Redis must not write a warning per call


class CacheStats(BaseModel):
    """Counters of one cache object: `entries`/`bytes` describe the store (None when the backend did
    not answer), the rest count what this object saw."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: str
    entries: int | None
    bytes: int | None
    hits: int = 0
    misses: int = 0
    corrupt: int = 0  # undecodable entries found (and deleted); each also counts as a miss
    errors: int = 0  # backend failures turned into misses or skipped writes
    evictions: int = 0  # entries dropped to respect max_entries / max_bytes

    @property
    def hit_ratio(self) -> float:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0


class CorruptEntryError(ValueError):
    """A stored entry that cannot be turned back into a `Response`; `.reason` says why, without content."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    v: Literal[1]
    response: Response


def encode_entry(response: Response) -> bytes:
    """The stored form of `response`: versioned JSON, UTF-8."""
    return b'{"v":%d,"response":%s}' % (FORMAT_VERSION, response.model_dump_json().encode())


def decode_entry(data: bytes | str) -> Response:
    """The `Response` in a stored entry; raises `CorruptEntryError` for anything else."""
    try:
        return _Entry.model_validate_json(data).response
    except ValidationError as exc:
        # Name the fields and error types only: the input would show cached answer text in logs.
        first = exc.errors(include_url=False, include_input=False, include_context=False)[:3]
        reason = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['type']}" for e in first)
        raise CorruptEntryError(reason) from None


class Cache(ABC):
    """The cache interface the CacheActor calls on its own thread. Every method is synchronous and quick.

    `default_ttl_s` applies when `put` is given no `ttl_s`; None keeps entries until evicted.
    """

    name: ClassVar[str] = "cache"

    def __init__(self, *, default_ttl_s: float | None = 3600) -> None:
        if default_ttl_s is not None and not default_ttl_s > 0:
            raise InvalidInputError("default_ttl_s must be positive or None", field="ttl_s")
        self.default_ttl_s = default_ttl_s
        # what the backend raises when it fails (not when an entry is bad); set by subclasses
        self._backend_errors: tuple[type[BaseException], ...] = ()
        self._hits = self._misses = self._corrupt = self._errors = self._evictions = 0
        self._last_warning = -math.inf
        self._suppressed = 0

    # --- the public contract -------------------------------------------------------------------

    def get(self, key: str) -> Response | None:
        """The cached response for `key` (marked `cached=True`, `cost_usd=0.0`), or None."""
        try:
            data = self._load(key)
        except self._backend_errors as exc:
            self._backend_failed("get", exc)
            data = None
        if data is None:
            self._misses += 1
            return None
        try:
            response = decode_entry(data)
        except CorruptEntryError as exc:
            self._corrupt += 1
            self._misses += 1
            log.warning("%s cache: discarding corrupt entry %s…: %s", self.name, key[:16], exc.reason)
            self.delete(key)
            return None
        self._hits += 1
        return response.model_copy(update={"cached": True, "cost_usd": 0.0})

    def put(self, key: str, response: Response, ttl_s: float | None = None) -> None:
        """Store `response` under `key` for `ttl_s` seconds (None: the default TTL; `math.inf`: no
        expiry; zero, less, or under `MIN_TTL_S`: store nothing and drop any entry under `key`)."""
        if not isinstance(response, Response):
            raise InvalidInputError(
                f"only a Response can be cached, not {type(response).__name__}", field="response"
            )
        ttl = self.default_ttl_s if ttl_s is None else ttl_s
        if ttl is not None and math.isinf(ttl) and ttl > 0:
            ttl = None
        if ttl is not None and not ttl >= MIN_TTL_S:  # also NaN
            self.delete(key)
            return
        stored = response.model_copy(
            update={"cached": False, "cost_usd": None, "attempts": (), "latency_s": None}
        )
        try:
            self._store(key, encode_entry(stored), ttl)
        except self._backend_errors as exc:
            self._backend_failed("put", exc)

    def delete(self, key: str) -> None:
        try:
            self._remove(key)
        except self._backend_errors as exc:
            self._backend_failed("delete", exc)

    def clear(self) -> None:
        """Remove every entry of this cache (of its namespace, for shared stores)."""
        try:
            self._clear()
        except self._backend_errors as exc:
            raise ProviderError(f"{self.name} cache: clear failed: {_describe(exc)}") from None

    def stats(self) -> CacheStats:
        """The counters; never raises, so that a metrics listener can always ask."""
        entries: int | None
        size: int | None
        try:
            entries, size = self._size()
        except self._backend_errors as exc:
            self._backend_failed("stats", exc)
            entries = size = None
        return CacheStats(
            backend=self.name,
            entries=entries,
            bytes=size,
            hits=self._hits,
            misses=self._misses,
            corrupt=self._corrupt,
            errors=self._errors,
            evictions=self._evictions,
        )

    def close(self) -> None:  # noqa: B027 - a backend without resources has nothing to release
        """Release the backend's resources; calling it twice is harmless."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- what a backend implements -------------------------------------------------------------

    @abstractmethod
    def _load(self, key: str) -> bytes | None:
        """The stored bytes, or None when absent or expired."""

    @abstractmethod
    def _store(self, key: str, data: bytes, ttl_s: float | None) -> None:
        """Store `data`; `ttl_s` is positive, or None for no expiry."""

    @abstractmethod
    def _remove(self, key: str) -> None: ...

    @abstractmethod
    def _clear(self) -> None: ...

    @abstractmethod
    def _size(self) -> tuple[int, int]:
        """(entries, bytes) currently stored."""

    # --- helpers -------------------------------------------------------------------------------

    def _backend_failed(self, op: str, exc: BaseException) -> None:
        self._errors += 1
        now = time.monotonic()
        if now - self._last_warning < _WARN_EVERY_S:
            self._suppressed += 1
            return
        more = f" ({self._suppressed} more failures since the last warning)" if self._suppressed else ""
        log.warning("%s cache: %s failed, served as a miss: %s%s", self.name, op, _describe(exc), more)
        self._last_warning, self._suppressed = now, 0


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {redact(str(exc))}"
