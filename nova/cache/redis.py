"""A cache shared by several nodes in Redis (the optional `redis` extra), expiry done by the server."""

from __future__ import annotations

import re
from typing import Any

from nova.cache.base import Cache
from nova.errors import ConfigurationError, InvalidInputError

__all__ = ["RedisCache"]

_GLOB = re.compile(r"([*?\[\]\\])")
_SCAN_BATCH = 500


class RedisCache(Cache):
    """Entries are Redis strings at `{namespace}:cache:{key}`, written with `SET … PX ttl`.

    Bounds are Redis's business (TTL plus its `maxmemory` policy, e.g. `allkeys-lru`). Every command
    has `timeout_s` and at most one immediate retry, so an unreachable Redis costs a call a short
    wait and a miss, never an error. `client` may be given (any `redis.Redis`) instead of `url`.
    """

    name = "redis"

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        namespace: str = "nova",
        default_ttl_s: float | None = 3600,
        timeout_s: float = 0.5,
        client: Any = None,
    ) -> None:
        super().__init__(default_ttl_s=default_ttl_s)
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError:
            raise ConfigurationError(
                "the redis cache backend needs the 'redis' package: pip install 'nova-llm[redis]'"
            ) from None
        if not namespace:
            raise InvalidInputError("namespace must not be empty", field="namespace")
        self._backend_errors = (redis.RedisError, OSError)
        self._prefix = f"{namespace}:cache:"
        if client is None:
            try:
                client = redis.Redis.from_url(
                    url,
                    socket_timeout=timeout_s,
                    socket_connect_timeout=timeout_s,
                    retry=Retry(NoBackoff(), 1),  # redis-py's default retries 10 times with backoff
                    health_check_interval=30,
                )
            except ValueError as exc:  # the message names the scheme problem, not the password
                raise ConfigurationError(f"cache.redis_url is not a Redis URL: {exc}") from None
        self._client = client

    @property
    def client(self) -> Any:
        """The underlying `redis.Redis` (for tests and administration)."""
        return self._client

    def redis_key(self, key: str) -> str:
        """The Redis key that holds the entry for `key`."""
        return self._prefix + key

    def close(self) -> None:
        self._client.close()

    def _load(self, key: str) -> bytes | None:
        value = self._client.get(self._prefix + key)
        return None if value is None else bytes(value)

    def _store(self, key: str, data: bytes, ttl_s: float | None) -> None:
        if ttl_s is None:
            self._client.set(self._prefix + key, data)
        else:
            self._client.set(self._prefix + key, data, px=max(1, round(ttl_s * 1000)))

    def _remove(self, key: str) -> None:
        self._client.delete(self._prefix + key)

    def _clear(self) -> None:
        batch: list[Any] = []
        for name in self._scan():
            batch.append(name)
            if len(batch) >= _SCAN_BATCH:
                self._client.unlink(*batch)
                batch.clear()
        if batch:
            self._client.unlink(*batch)

    def _size(self) -> tuple[int, int]:
        names = list(self._scan())
        if not names:
            return 0, 0
        pipe = self._client.pipeline(transaction=False)
        for name in names:
            pipe.strlen(name)
        lengths = pipe.execute()
        return len(names), sum(lengths) + sum(len(n) for n in names)

    def _scan(self) -> Any:
        return self._client.scan_iter(match=_GLOB.sub(r"\\\1", self._prefix) + "*", count=_SCAN_BATCH)
