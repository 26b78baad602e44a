"""RateLimitActor: admits calls within their limits, queues the rest in order, answers the rest.

Every call with a limit passes here on its way to the fallback stage. Waiting is a timer on the
lane's loop, set for the moment the limiter says something can change; a queued call that waits
too long, or a call a limit rejects, is answered from here with `RateLimitExceededError` naming
the limit. A call's outcome (`Release`, with its real usage) reconciles the estimate, and a
service that says to slow down (`PauseTarget`) pauses its target.
"""

from __future__ import annotations

import copy
import time
from typing import Any

from nova import errors
from nova.actors.base import PARENT
from nova.actors.cluster import DESK_S, LeaderHere, LeaseReply, LeaseRequest
from nova.actors.lane_actor import LaneActor
from nova.actors.protocol import Cancel, Job, PauseTarget, Release, StageInit, Store
from nova.ratelimit import (
    Admitted,
    LeaseHolder,
    LeaseServer,
    PollResult,
    Queued,
    RateLimiter,
    RateLimitSettings,
    Ticket,
)

__all__ = ["RateLimitActor"]

RATELIMIT = "ratelimit"
RELAY = "relay"
ANNOUNCE_S = 0.5  # how often the leader's limiter tells the desk where it is
LEASE_TICK_S = 0.1  # how often a cluster node looks at its leases (expiry, refresh, the leader)


class RateLimitActor(LaneActor):
    init_message = StageInit

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limiter = RateLimiter(RateLimitSettings())
        self.held: dict[str, Job] = {}  # queued jobs by request id
        self._timer: Any = None
        self._timer_at: float | None = None  # monotonic time of the earliest poll asked for
        # in a cluster: this node's leases and name; the leader's ledger
        self.holder: LeaseHolder | None = None
        self.node = ""
        self._announced = float("-inf")
        self.server: LeaseServer | None = None

    def handlers(self) -> dict[type, Any]:
        return {
            **super().handlers(),
            StageInit: self.on_init,
            LeaseRequest: lambda m, s: self.to_lane(self._serve, m),
            LeaseReply: lambda m, s: self.to_lane(self._granted, m),
        }

    def entitled(self) -> dict[type, str]:
        return {**super().entitled(), StageInit: PARENT}

    def sender_name(self) -> str:
        return RATELIMIT

    def status_info(self) -> dict[str, Any]:
        return {"queued": len(self.held)}

    def on_init(self, message: StageInit, sender: Any) -> None:
        config = message.config
        settings = config.ratelimit
        cluster = config.cluster
        if not cluster.enabled:
            self.limiter = RateLimiter(settings)
            self.open_lane(config.system.lane_dir, RATELIMIT)
            return
        self.node = f"{cluster.bind}:{config.system.admin_port}"
        reply_timeout = min(2.0, cluster.lease_s / 2)
        self.holder = LeaseHolder(
            settings, cluster.lease_s, cluster.on_leader_loss, reply_timeout_s=reply_timeout
        )
        self.limiter = RateLimiter(settings, budget=self.holder)
        if self.node == cluster.leader:
            # a (re)started ledger grants nothing until every node that held leases could report
            # them: a node finds the new desk within DESK_S, and asks again within reply_timeout
            settle = DESK_S + reply_timeout + 2 * LEASE_TICK_S
            self.server = LeaseServer(settings, cluster.lease_s, settle_s=settle)
        hub = self.open_lane(config.system.lane_dir, RATELIMIT)
        hub.loop.call_soon_threadsafe(self._lease_tick)

    # -- leases (lane thread) ------------------------------------------------------------------

    def _lease_tick(self) -> None:
        assert self.hub is not None and self.holder is not None
        due = self.holder.due(self.limiter.queued_by_scope())
        now = time.monotonic()
        if self.server is not None and now - self._announced >= ANNOUNCE_S:
            # the leader's desk learns (again) where its limiter is, through this node's relay
            self._announced = now
            self.hub.send(RELAY, LeaderHere(self.myAddress))
        if due is not None:
            wants, returns = due
            if self.server is not None:  # the leader asks its own ledger
                self.holder.granted(self.server.request(self.node, wants, returns))
            else:  # through this node's relay, which knows the leader's desk
                request = LeaseRequest(
                    self.node, self.myAddress, tuple(wants), tuple(returns), self.holder.report()
                )
                self.hub.send(RELAY, request)
        self.limiter.budget_changed()  # grants may have expired, the leader may be lost
        self._after(self.limiter.poll())
        self.hub.loop.call_later(LEASE_TICK_S, self._lease_tick)

    def _serve(self, request: LeaseRequest) -> None:
        if self.server is None:
            return  # not the leader (a stale desk): the node will find the leader lost
        grants = self.server.request(request.node, request.wants, request.returns, request.charged)
        self.to_thespian(request.reply_to, LeaseReply(tuple(grants)))

    def _granted(self, reply: LeaseReply) -> None:
        if self.holder is None:
            return
        self.holder.granted(reply.grants)
        self.limiter.budget_changed()
        self._after(self.limiter.poll())

    def on_lane(self, peer: str, message: Any) -> None:
        if isinstance(message, Job):
            self.on_job(message)
        elif isinstance(message, Release):
            self.limiter.release(message.request_id, message.tokens)
            self._after(self.limiter.poll())
        elif isinstance(message, PauseTarget):
            self.on_pause(message)
        elif isinstance(message, Cancel):
            if self.held.pop(message.request_id, None) is not None:
                self.limiter.cancel(message.request_id)

    def holds(self, request_id: str) -> bool:
        return request_id in self.held  # an admitted call is on its way: the next stage has it

    def on_job(self, job: Job) -> None:
        ticket = Ticket(job.request_id, job.driver, job.request.model, job.tokens)
        decision = self.limiter.submit(ticket)
        if isinstance(decision, Admitted):
            self._forward(job)
        elif isinstance(decision, Queued):
            self.held[job.request_id] = job
            self._after(self.limiter.poll())
        else:
            self._refuse(job, decision.limit, decision.retry_after_s)

    def on_pause(self, message: PauseTarget) -> None:
        # Pause the scope the calls are admitted under: the configured driver name (the error
        # names the driver class, "openai") and the requested model, which is "" when the call
        # relies on the driver's built-in default (then the whole driver rests).
        if message.error is None:
            self.limiter.pause(message.driver, message.model or None, message.seconds, "rate_limit_headers")
        else:
            error = copy.copy(message.error)
            error.driver, error.model = message.driver, message.model or None
            self.limiter.observe_error(error)
        self._after(self.limiter.poll())

    def _poll(self) -> None:
        self._timer = self._timer_at = None
        self._after(self.limiter.poll())

    def _after(self, result: PollResult) -> None:
        for ticket in result.admitted:
            job = self.held.pop(ticket.request_id, None)
            if job is not None:
                self.emit(
                    "ratelimit.delayed",
                    request_id=job.request_id,
                    driver=job.driver,
                    model=job.request.model or None,
                    data={"wait_s": result.waited_s.get(ticket.request_id, 0.0)},
                )
                self._forward(job)
        for ticket, limit in [*result.expired, *result.rejected]:
            job = self.held.pop(ticket.request_id, None)
            if job is not None:
                self._refuse(job, limit, None)
        for change in result.transitions:
            if change.kind == "paused":
                data = {"target": change.target, "until_s": change.until_s, "reason": change.reason}
                self.emit("ratelimit.paused", data=data)
            else:
                self.emit("ratelimit.resumed", data={"target": change.target})
        if result.next_wakeup_s is not None:
            assert self.hub is not None
            due = time.monotonic() + max(0.001, result.next_wakeup_s)
            if self._timer_at is None or due < self._timer_at:
                if self._timer is not None:
                    self._timer.cancel()
                self._timer_at = due
                self._timer = self.hub.loop.call_later(max(0.001, result.next_wakeup_s), self._poll)

    def _forward(self, job: Job) -> None:
        assert self.hub is not None
        stage, job = job.forward()
        self.hub.send(stage, job)

    def _refuse(self, job: Job, limit: str, retry_after: float | None) -> None:
        assert self.hub is not None
        self.emit(
            "ratelimit.rejected",
            request_id=job.request_id,
            driver=job.driver,
            model=job.request.model or None,
            data={"limit": limit},
        )
        error = errors.RateLimitExceededError(
            f"Nova's {limit} limit for {job.driver} refused the call",
            driver=job.driver,
            model=job.request.model or None,
            retry_after=retry_after,
            limit=limit,
        )
        self.end_call(job, error=error)
        if job.cache_key is not None and "cache" in job.stages:
            self.hub.send("cache", Store(job.cache_key, None, error))  # the calls waiting on it
