"""CacheActor: answers repeated calls from the cache and coalesces identical calls in flight.

A hit goes straight back to the router (a stream is replayed as chunks). A miss goes on along the
routing slip, and identical calls arriving meanwhile wait here; when the router reports the
outcome (`StoreResult`) the answer is stored — errors never are — and every waiter gets it.
"""

from __future__ import annotations

from typing import Any

from actors.base import NovaActor
from actors.protocol import Job, JobDone, StageInit, StoreResult, StreamPiece
from nova.cache import Cache, CacheSettings, Coalescer, open_cache, replay_chunks
from nova.types import Response

__all__ = ["CacheActor"]


class CacheActor(NovaActor):
    init_message = StageInit

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cache: Cache | None = None
        self.settings = CacheSettings()
        self.inflight: Coalescer[Job] = Coalescer()

    def handlers(self) -> dict[type, Any]:
        return {StageInit: self.on_init, Job: self.on_job, StoreResult: self.on_store}

    def sender_name(self) -> str:
        return "cache"

    def on_init(self, message: StageInit, sender: Any) -> None:
        self.settings = CacheSettings(**message.config.cache)
        # A relative SQLite path lives with the rest of the state, not in whatever directory
        # the actor system happened to start in.
        self.cache = open_cache(self.settings, base_dir=message.config.system.state_dir)

    def on_job(self, job: Job, sender: Any) -> None:
        assert self.cache is not None and job.cache_key is not None
        fields = {
            "request_id": job.request_id,
            "driver": job.driver,
            "model": job.request.model or None,
            "data": {"key": job.cache_key[:16]},
        }
        if job.options.cache != "refresh":
            hit = self.cache.get(job.cache_key)
            if hit is not None:
                self.emit("cache.hit", **fields)
                self._answer(job, hit, None)
                return
            self.emit("cache.miss", **fields)
        if not self.inflight.join(job.cache_key, job):
            self.emit("cache.coalesced", **fields)
            return
        target, job = job.forward()
        self.send(target, job)

    def on_store(self, message: StoreResult, sender: Any) -> None:
        assert self.cache is not None
        if message.response is not None and message.error is None:
            self.cache.put(
                message.cache_key,
                message.response.model_copy(update={"attempts": ()}),
                message.ttl_s if message.ttl_s is not None else self.settings.ttl_s,
            )
        waiters = self.inflight.resolve(message.cache_key)
        for job in waiters[1:]:  # the first went upstream and has its answer already
            self._answer(job, message.response, message.error)

    def _answer(self, job: Job, response: Response | None, error: Any) -> None:
        if response is None:
            self.send(job.router, JobDone(job.request_id, error=error))
            return
        response = response.model_copy(update={"cached": True, "attempts": ()})
        if job.kind == "stream":
            chunks = replay_chunks(response)
            for i, chunk in enumerate(chunks):
                self.send(job.router, StreamPiece(job.request_id, i, chunk))
            self.send(
                job.router,
                JobDone(job.request_id, response=response, chunks_sent=len(chunks), from_cache=True),
            )
        else:
            self.send(job.router, JobDone(job.request_id, response=response, from_cache=True))

    def on_exit(self) -> None:
        super().on_exit()
        if self.cache is not None:
            self.cache.close()
