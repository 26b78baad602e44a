"""CacheActor: answers repeated calls from the cache and coalesces identical calls in flight.

A hit is answered from here, straight to the caller's lane (a stream is replayed as chunks). A
miss goes on to the next stage; identical calls arriving meanwhile wait here. When the call's
outcome comes back (`Store`, from whoever ended it) the answer is stored — errors never are —
and every waiter gets it.
"""

from __future__ import annotations

from typing import Any

from nova.actors.base import PARENT
from nova.actors.lane_actor import LaneActor
from nova.actors.protocol import Cancel, Job, Piece, StageInit, Store
from nova.cache import Cache, CacheSettings, Coalescer, open_cache, replay_chunks
from nova.errors import NovaError
from nova.types import Response

__all__ = ["CacheActor"]

CACHE = "cache"


class CacheActor(LaneActor):
    init_message = StageInit

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cache: Cache | None = None
        self.settings = CacheSettings()
        self.inflight: Coalescer[Job] = Coalescer()
        self.coalesced: dict[str, Job] = {}  # waiting behind an identical call, by request id
        self.leading: dict[str, str] = {}  # request id -> the key of the call it made upstream

    def handlers(self) -> dict[type, Any]:
        return {**super().handlers(), StageInit: self.on_init}

    def entitled(self) -> dict[type, str]:
        return {**super().entitled(), StageInit: PARENT}

    def sender_name(self) -> str:
        return CACHE

    def on_init(self, message: StageInit, sender: Any) -> None:
        self.settings = message.config.cache
        # A relative SQLite path lives with the rest of the state, not in whatever directory
        # the actor system happened to start in.
        self.cache = open_cache(self.settings, base_dir=message.config.system.state_dir)
        self.open_lane(message.config.system.lane_dir, CACHE)

    def on_lane(self, peer: str, message: Any) -> None:
        if isinstance(message, Job):
            self.on_job(message)
        elif isinstance(message, Store):
            self.on_store(message)
        elif isinstance(message, Cancel):
            job = self.coalesced.pop(message.request_id, None)
            if job is not None:  # a waiter leaves; the call it waited for runs on for the others
                self.inflight.drop(job, job.cache_key)
            else:
                self.on_leader_cancelled(message.request_id)

    def holds(self, request_id: str) -> bool:
        return request_id in self.coalesced  # a leader is on its way: the next stage has it

    def on_job(self, job: Job) -> None:
        assert self.cache is not None and self.hub is not None and job.cache_key is not None
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
        if not self.inflight.join(job.cache_key, job):
            self.coalesced[job.request_id] = job
            self.emit("cache.coalesced", **fields)  # instead of a miss: one lookup, one event
            return
        if job.options.cache != "refresh":
            self.emit("cache.miss", **fields)
        self.leading[job.request_id] = job.cache_key
        stage, job = job.forward()
        self.hub.send(stage, job)

    def on_leader_cancelled(self, request_id: str) -> None:
        """The call that went upstream for its key was cancelled, so no answer will come for the
        calls waiting behind it: the first of them goes upstream in its place (the others wait
        for it), instead of every one waiting until its deadline."""
        assert self.hub is not None
        key = self.leading.pop(request_id, None)
        if key is None:
            return
        queue = self.inflight.waiters(key)  # the cancelled call first, if it is still there
        if queue and queue[0].request_id == request_id:
            self.inflight.drop(queue[0], key)
            queue = queue[1:]
        if not queue:
            self.inflight.resolve(key)
            return
        leader = queue[0]
        self.coalesced.pop(leader.request_id, None)
        self.leading[leader.request_id] = key
        stage, forwarded = leader.forward()
        self.hub.send(stage, forwarded)

    def on_store(self, message: Store) -> None:
        assert self.cache is not None
        if message.response is not None and message.error is None:
            ttl = message.ttl_s if message.ttl_s is not None else self.settings.ttl_s
            stored = message.response.model_copy(
                update={"attempts": (), "driver": _answered_by(message.response)}
            )
            self.cache.put(message.cache_key, stored, ttl)
        waiters = self.inflight.resolve(message.cache_key)
        if waiters:
            self.leading.pop(waiters[0].request_id, None)
        for job in waiters[1:]:  # the first went upstream and has its answer already
            self.coalesced.pop(job.request_id, None)
            self._answer(job, message.response, message.error)

    def _answer(self, job: Job, response: Response | None, error: NovaError | None) -> None:
        assert self.hub is not None
        if response is None:
            self.end_call(job, error=error)
            return
        response = response.model_copy(
            update={"cached": True, "attempts": (), "driver": _answered_by(response)}
        )
        chunks = replay_chunks(response) if job.kind == "stream" else []
        for i, chunk in enumerate(chunks):
            self.hub.send(job.reply_to, Piece(job.request_id, i, chunk, CACHE))
        self.end_call(job, response, chunks=len(chunks), from_cache=True)

    def on_exit(self) -> None:
        super().on_exit()
        if self.cache is not None:
            self.cache.close()


def _answered_by(response: Response) -> str:
    """The configured driver that answered (a fallback target, say): a hit names it, as the first
    answer did; the attempts that say so are not kept."""
    return next((a.driver for a in reversed(response.attempts) if a.ok), response.driver)
