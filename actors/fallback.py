"""FallbackActor: drives each call's `FallbackPlan` against the driver actors.

It sends `DriverCall`s, waits between retries with `wakeupAfter`, and answers the router with the
final `JobDone`. Its in-flight table knows which driver holds each call: when a driver actor dies,
the supervisor's `DriversChanged` makes those attempts fail at once with a retryable error, and
the plan moves on — the caller never waits for a timeout because an actor died. Every attempt
that the service rate-limits (429) pauses that target in the rate-limit stage at once, even when
a retry or the next target then answers the call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from thespian.actors import WakeupMessage

from actors.base import NovaActor
from actors.protocol import (
    CancelDriverCall,
    CancelJob,
    DriverCall,
    DriverResult,
    DriversChanged,
    Job,
    JobDone,
    PauseTarget,
    StageInit,
)
from actors.router import StageDown
from nova import errors
from nova.fallback import CircuitBoard, FallbackPlan, FallbackSettings, GiveUp, Step, Try, resolve_targets
from nova.models import Target
from nova.ratelimit import pauses_target
from nova.types import Response

__all__ = ["FallbackActor"]

_TRY = "nova:try"


@dataclass
class _Call:
    job: Job
    plan: FallbackPlan
    attempt: int = 0
    target: Target | None = None
    started: float = 0.0
    calling: bool = False  # a DriverCall is out (not waiting for a retry delay)
    timeout_s: float | None = None  # the current attempt's own limit (attempt_timeout_s)


class FallbackActor(NovaActor):
    init_message = StageInit

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings = FallbackSettings()
        self.board = CircuitBoard(self.settings.circuit)
        self.drivers: dict[str, Any] = {}
        self.configured: set[str] = set()
        self.ratelimit: Any = None  # the rate-limit stage, when there is one: it hears of 429s
        self.calls: dict[str, _Call] = {}
        # Calls for a configured driver whose actor is not up (the system is starting, or its
        # supervisor is restarting it), by request id with their attempt timeout: they go out
        # when DriversChanged brings its address. The router's deadline still bounds the wait.
        self.parked: dict[str, float | None] = {}

    def handlers(self) -> dict[type, Any]:
        return {
            StageInit: self.on_init,
            Job: self.on_job,
            DriverResult: self.on_result,
            DriversChanged: self.on_drivers,
            CancelJob: self.on_cancel,
            StageDown: self.on_stage_down,
            WakeupMessage: self.on_wakeup,
        }

    def sender_name(self) -> str:
        return "fallback"

    def on_init(self, message: StageInit, sender: Any) -> None:
        self.settings = FallbackSettings(**message.config.fallback)
        self.board = CircuitBoard(self.settings.circuit)
        self.drivers = dict(message.wiring.get("drivers", {}))
        self.configured = set(message.config.drivers)
        self.ratelimit = message.wiring.get("ratelimit")

    def on_stage_down(self, message: StageDown, sender: Any) -> None:
        if message.stage == "ratelimit":  # restarted: its new address
            self.ratelimit = message.replacement

    def on_job(self, job: Job, sender: Any) -> None:
        targets = resolve_targets(Target(job.driver, job.request.model), job.options.fallback, self.settings)
        deadline = time.monotonic() + (job.deadline - time.time())
        call = _Call(job, FallbackPlan(targets, self.settings, self.board, deadline=deadline))
        self.calls[job.request_id] = call
        self._step(call, call.plan.start())

    def on_result(self, result: DriverResult, sender: Any) -> None:
        call = self.calls.get(result.request_id)
        if call is None or result.attempt != call.attempt or not call.calling:
            return  # a late answer from a cancelled or abandoned attempt
        call.calling = False
        if result.error is None:
            response = result.response or Response(model=call.target.model if call.target else "")
            response = call.plan.on_success(response, result.latency_s)
            del self.calls[result.request_id]
            self.send(
                call.job.router, JobDone(result.request_id, response=response, chunks_sent=result.chunks_sent)
            )
        else:
            if self.ratelimit is not None and call.target is not None and pauses_target(result.error):
                # The limiter scopes by configured driver name and requested model: the target's.
                pause = PauseTarget(call.target.driver, call.target.model, result.error)
                self.send(self.ratelimit, pause)
            step = call.plan.on_failure(
                result.error, result.latency_s, after_first_chunk=result.chunks_sent > 0
            )
            self._step(call, step, result.chunks_sent)
        self._circuit_events()

    def on_drivers(self, message: DriversChanged, sender: Any) -> None:
        self.drivers = dict(message.drivers)
        for call in list(self.calls.values()):
            if call.calling and call.target is not None and call.target.driver in message.down:
                # Not retried on the same target: the service may have run the call already, and a
                # request that killed its driver would kill the restarted one too (and escalate).
                error = errors.DriverUnavailableError(
                    f"the {call.target.driver!r} driver actor died mid-call",
                    driver=call.target.driver,
                    model=call.target.model,
                    retryable=False,
                )
                self.on_result(
                    DriverResult(
                        call.job.request_id,
                        call.attempt,
                        error=error,
                        latency_s=time.monotonic() - call.started,
                    ),
                    None,
                )
        for request_id, timeout_s in list(self.parked.items()):
            parked = self.calls.get(request_id)
            if parked is None:
                del self.parked[request_id]
            elif parked.target is not None and parked.target.driver in self.drivers:
                del self.parked[request_id]
                self._launch(parked, timeout_s)

    def on_cancel(self, message: CancelJob, sender: Any) -> None:
        self.parked.pop(message.request_id, None)
        call = self.calls.pop(message.request_id, None)
        if call is None:
            return
        call.plan.abandon()
        if call.calling and call.target is not None and call.target.driver in self.drivers:
            self.send(self.drivers[call.target.driver], CancelDriverCall(message.request_id))

    def on_wakeup(self, message: WakeupMessage, sender: Any) -> None:
        if isinstance(message.payload, tuple) and message.payload[0] == _TRY:
            call = self.calls.get(message.payload[1])
            if call is not None and call.attempt == message.payload[2]:
                self._launch(call, call.timeout_s)

    # -- steps ----------------------------------------------------------------------------------

    def _step(self, call: _Call, step: Step, chunks_sent: int = 0) -> None:
        job = call.job
        if isinstance(step, GiveUp):
            self.calls.pop(job.request_id, None)
            if len(call.plan.attempts) > 1:
                self.emit(
                    "fallback.exhausted",
                    request_id=job.request_id,
                    driver=job.driver,
                    model=job.request.model or None,
                    error_type=type(step.error).__name__,
                    data={"attempts": len(call.plan.attempts)},
                )
            self.send(job.router, JobDone(job.request_id, error=step.error, chunks_sent=chunks_sent))
            return
        assert isinstance(step, Try)
        if step.reason == "next_target":
            self.emit(
                "fallback.next_target",
                request_id=job.request_id,
                driver=step.target.driver,
                model=step.target.model or None,
                attempt=step.attempt,
                data={"target": f"{step.target.driver}/{step.target.model}"},
            )
        call.attempt, call.target, call.calling = step.attempt, step.target, False
        call.timeout_s = step.timeout_s
        if step.delay_s > 0:
            self.wakeupAfter(step.delay_s, payload=(_TRY, job.request_id, step.attempt))
        else:
            self._launch(call, step.timeout_s)

    def _launch(self, call: _Call, timeout_s: float | None = None) -> None:
        job, target = call.job, call.target
        assert target is not None
        if target.driver not in self.drivers and target.driver in self.configured:
            self.parked[job.request_id] = timeout_s
            return
        self.emit(
            "fallback.attempt",
            request_id=job.request_id,
            driver=target.driver,
            model=target.model or None,
            attempt=call.attempt,
        )
        address = self.drivers.get(target.driver)
        call.started, call.calling = time.monotonic(), True
        if address is None:
            error = errors.UnknownDriverError(
                f"no driver named {target.driver!r} is running", driver=target.driver
            )
            self.on_result(DriverResult(job.request_id, call.attempt, error=error), None)
            return
        request = job.request
        if target.model and target.model != request.model:
            request = request.model_copy(update={"model": target.model})
        deadline = job.deadline if timeout_s is None else min(job.deadline, time.time() + timeout_s)
        self.send(address, DriverCall(job.request_id, call.attempt, job.kind, request, deadline, job.router))

    def _circuit_events(self) -> None:
        for change in self.board.drain_transitions():
            target = f"{change.target.driver}/{change.target.model}" if change.target else None
            name = {"open": "circuit.opened", "half_open": "circuit.half_open", "closed": "circuit.closed"}
            self.emit(
                name[change.new],
                driver=change.target.driver if change.target else None,
                data={"target": target, "failures": change.failures},
            )
