"""RateLimitActor: admits calls within their limits, queues the rest in order, answers the rest.

Waiting is a `wakeupAfter` at the moment the limiter says something can change; a queued call that
waits too long, or a call a limit rejects, is answered with `RateLimitExceededError` naming the
limit. A rate-limit error from the service pauses its target (admission control).
"""

from __future__ import annotations

import copy
import time
from typing import Any

from thespian.actors import WakeupMessage

from actors.base import NovaActor
from actors.protocol import CancelJob, Job, JobDone, PauseTarget, Release, StageInit
from nova import errors
from nova.ratelimit import Admitted, PollResult, Queued, RateLimiter, RateLimitSettings, Ticket

__all__ = ["RateLimitActor"]

_POLL = "nova:ratelimit-poll"


class RateLimitActor(NovaActor):
    init_message = StageInit

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limiter = RateLimiter(RateLimitSettings())
        self.held: dict[str, Job] = {}  # queued jobs by request id
        self._wakeup_at: float | None = None  # monotonic time of the earliest wakeup asked for

    def handlers(self) -> dict[type, Any]:
        return {
            StageInit: self.on_init,
            Job: self.on_job,
            Release: self.on_release,
            PauseTarget: self.on_pause,
            CancelJob: self.on_cancel,
            WakeupMessage: self.on_wakeup,
        }

    def sender_name(self) -> str:
        return "ratelimit"

    def on_init(self, message: StageInit, sender: Any) -> None:
        self.limiter = RateLimiter(RateLimitSettings(**message.config.ratelimit))

    def on_job(self, job: Job, sender: Any) -> None:
        ticket = Ticket(job.request_id, job.driver, job.request.model, job.tokens)
        decision = self.limiter.submit(ticket)
        if isinstance(decision, Admitted):
            self._forward(job)
        elif isinstance(decision, Queued):
            self.held[job.request_id] = job
            self._after(self.limiter.poll())
        else:
            self._refuse(job, decision.limit, decision.retry_after_s)

    def on_release(self, message: Release, sender: Any) -> None:
        self.limiter.release(message.request_id, message.tokens)
        self._after(self.limiter.poll())

    def on_pause(self, message: PauseTarget, sender: Any) -> None:
        # Pause the scope the calls are admitted under: the configured driver name (the error
        # names the driver class, "openai") and the requested model, which is "" when the call
        # relies on the driver's built-in default (then the whole driver rests).
        error = copy.copy(message.error)
        error.driver, error.model = message.driver, message.model or None
        self.limiter.observe_error(error)
        self._after(self.limiter.poll())

    def on_cancel(self, message: CancelJob, sender: Any) -> None:
        if self.held.pop(message.request_id, None) is not None:
            self.limiter.cancel(message.request_id)

    def on_wakeup(self, message: WakeupMessage, sender: Any) -> None:
        if message.payload == _POLL:
            if self._wakeup_at is not None and self._wakeup_at <= time.monotonic() + 0.001:
                self._wakeup_at = None
            self._after(self.limiter.poll())

    def _after(self, result: PollResult) -> None:
        for ticket in result.admitted:
            job = self.held.pop(ticket.request_id, None)
            if job is not None:
                waited = result.waited_s.get(ticket.request_id, 0.0)
                self.emit(
                    "ratelimit.delayed",
                    request_id=job.request_id,
                    driver=job.driver,
                    model=job.request.model or None,
                    data={"wait_s": waited},
                )
                self._forward(job)
        for ticket, limit in [*result.expired, *result.rejected]:
            job = self.held.pop(ticket.request_id, None)
            if job is not None:
                self._refuse(job, limit, None)
        for change in result.transitions:
            self.emit(
                f"ratelimit.{change.kind}",
                data={"target": change.target, "until_s": change.until_s, "reason": change.reason},
            )
        # A wakeup cannot be cancelled, so ask for another one whenever the limiter needs an
        # earlier one: a call queued with a 30 s max_wait must not make a later 0.3 s one wait 30 s.
        if result.next_wakeup_s is not None:
            due = time.monotonic() + max(0.001, result.next_wakeup_s)
            if self._wakeup_at is None or due < self._wakeup_at:
                self._wakeup_at = due
                self.wakeupAfter(max(0.001, result.next_wakeup_s), payload=_POLL)

    def _forward(self, job: Job) -> None:
        target, job = job.forward()
        self.send(target, job)

    def _refuse(self, job: Job, limit: str, retry_after: float | None) -> None:
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
        self.send(job.router, JobDone(job.request_id, error=error))
