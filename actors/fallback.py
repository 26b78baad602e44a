"""FallbackActor: picks each call's target and decides after every failed attempt.

It runs each call's `FallbackPlan` on its lane thread: it sends a `DriverCall` to a driver's lane
(the least busy process of that driver's pool), and hears a `DriverResult` for every attempt. A
driver that succeeds has already answered the caller; here that result only closes the call and
feeds the target's breaker. After a failure the plan says retry (after a delay), next target,
or give up — then this actor answers the caller with the final error.

A driver whose lane closes has died: its calls fail at once with an error that never counts
against a circuit, and their plans move on. A call for a driver that is not running yet waits
here (parked) until the supervisor reports it up; the call's own deadline still bounds the wait.
An attempt that the service rate-limits (a 429), and a success whose rate-limit headers say a
budget is at zero, pause that target: in the rate-limit stage when there is one, else here (calls
to a paused target wait for the pause to end, or fail at once if it outlasts their deadline).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from nova import errors
from nova.actors.base import PARENT
from nova.actors.lane_actor import RETRY_S, LaneActor
from nova.actors.protocol import (
    Cancel,
    DriverCall,
    DriverResult,
    DriversChanged,
    Job,
    PauseTarget,
    Probe,
    Release,
    StageInit,
    Store,
    Took,
    driver_lane,
)
from nova.events import known
from nova.fallback import (
    CircuitBoard,
    FallbackPlan,
    FallbackSettings,
    GiveUp,
    Step,
    Try,
    default_models,
    resolve_targets,
)
from nova.features import pipeline_stages, pricer
from nova.models import Target
from nova.ratelimit import RateLimitSettings, pause_from_error, pause_from_snapshot, pauses_target
from nova.types import Response

__all__ = ["FallbackActor"]

FALLBACK = "fallback"
RELAY = "relay"  # the lane of a cluster node's RelayActor


@dataclass
class _Call:
    job: Job
    plan: FallbackPlan
    attempt: int = 0
    target: Target | None = None
    lane: str | None = None  # the driver lane holding the current attempt
    took: bool = False  # that driver has the attempt (it said `Took`)
    started: float = 0.0
    timeout_s: float | None = None  # the current attempt's own limit (attempt_timeout_s)
    timer: Any = None
    chunks: int = 0


class FallbackActor(LaneActor):
    init_message = StageInit

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.settings = FallbackSettings()
        self.board = CircuitBoard(self.settings.circuit)
        self.configured: dict[str, int] = {}  # driver name -> processes in its pool
        self.remote: set[str] = set()  # drivers that run on other nodes of a cluster
        self.up: set[str] = set()  # drivers whose actors are running
        self.load: dict[str, int] = {}  # attempts in flight by driver lane
        self.calls: dict[str, _Call] = {}
        self.parked: dict[str, _Call] = {}  # waiting for their driver to come up
        self.ratelimited = False  # a rate-limit stage exists: it keeps the pauses
        self.pause_settings = RateLimitSettings()
        self.pauses: dict[str, float] = {}  # without that stage: target -> monotonic end of its pause
        self.default_models: dict[str, str] = {}
        self.price: Any = None

    def handlers(self) -> dict[type, Any]:
        return {
            **super().handlers(),
            StageInit: self.on_init,
            DriversChanged: lambda m, s: self.to_lane(self.on_drivers, m),
        }

    def entitled(self) -> dict[type, str]:
        return {**super().entitled(), StageInit: PARENT, DriversChanged: PARENT}

    def sender_name(self) -> str:
        return FALLBACK

    def on_init(self, message: StageInit, sender: Any) -> None:
        config = message.config
        self.settings = config.fallback
        self.board = CircuitBoard(self.settings.circuit)
        # the drivers of this node; in a cluster, the others run elsewhere and go through the relay
        self.configured = {
            name: d.processes for name, d in config.drivers.items() if config.cluster.can_run(d)
        }
        self.remote = {name for name in config.drivers if name not in self.configured}
        self.default_models = default_models(config.drivers)
        self.price = pricer(config)
        self.ratelimited = "ratelimit" in pipeline_stages(config)
        self.pause_settings = config.ratelimit
        self.open_lane(config.system.lane_dir, FALLBACK)

    def status_info(self) -> dict[str, Any]:
        return {"in_flight": len(self.calls), "parked": len(self.parked)}

    # -- the lane -------------------------------------------------------------------------------

    def on_lane(self, peer: str, message: Any) -> None:
        if isinstance(message, DriverResult):
            self.on_result(message)
        elif isinstance(message, Took):
            call = self.calls.get(message.request_id)
            if call is not None and call.attempt == message.attempt:
                call.took = True
        elif isinstance(message, Job):
            self.on_job(message)
        elif isinstance(message, Cancel):
            self.on_cancel(message.request_id)

    def holds(self, request_id: str) -> bool:
        return request_id in self.calls  # at a driver too: its outcome comes back here

    def on_job(self, job: Job) -> None:
        primary = Target(job.driver, job.request.model)
        targets = resolve_targets(primary, job.options.fallback, self.settings, self.default_models)
        deadline = time.monotonic() + (job.deadline - time.time())
        plan = FallbackPlan(targets, self.settings, self.board, deadline=deadline, price=self.price)
        call = _Call(job, plan)
        self.calls[job.request_id] = call
        self._step(call, call.plan.start())

    def on_result(self, result: DriverResult) -> None:
        call = self.calls.get(result.request_id)
        if call is None or result.attempt != call.attempt or call.lane is None:
            return  # a late answer from a cancelled or abandoned attempt
        self._unload(call)
        if result.error is None:
            del self.calls[result.request_id]
            response = result.response or Response(model=result.model)
            call.plan.on_success(response, result.latency_s)
            seconds = pause_from_snapshot(response.rate_limits)
            if seconds and call.target is not None:
                self._pause(call.target, PauseTarget(call.target.driver, call.target.model, None, seconds))
        else:
            if call.target is not None and pauses_target(result.error):
                self._pause(call.target, PauseTarget(call.target.driver, call.target.model, result.error))
            call.chunks = result.chunks_sent
            step = call.plan.on_failure(
                result.error, result.latency_s, after_first_chunk=result.chunks_sent > 0
            )
            self._step(call, step)
        self._circuit_events()

    # -- pauses the service asked for --------------------------------------------------------------

    def _pause(self, target: Target, pause: PauseTarget) -> None:
        """Rest `target`: the rate-limit stage does it when there is one (it scopes by configured
        driver name and requested model: the target's); else this actor keeps the pause."""
        assert self.hub is not None
        if self.ratelimited:
            self.hub.send("ratelimit", pause)
            return
        seconds = pause.seconds
        if pause.error is not None:
            seconds = pause_from_error(pause.error) or self.pause_settings.default_pause_s
        seconds = min(seconds, self.pause_settings.max_pause_s)
        key = _pause_key(target.driver, target.model)
        until = time.monotonic() + seconds
        if seconds > 0 and until > self.pauses.get(key, 0.0):
            self.pauses[key] = until
            reason = "rate_limit_headers" if pause.error is None else "rate_limited"
            self.emit("ratelimit.paused", data={"target": key, "until_s": seconds, "reason": reason})

    def _paused_for(self, target: Target) -> float:
        """Seconds until `target` (or its whole driver) may be called again."""
        now = time.monotonic()
        ends = [
            self.pauses.get(_pause_key(target.driver, target.model), 0.0),
            self.pauses.get(target.driver, 0.0),
        ]
        return max(0.0, max(ends) - now)

    def on_cancel(self, request_id: str) -> None:
        self.parked.pop(request_id, None)
        call = self.calls.pop(request_id, None)
        if call is None:
            return
        call.plan.abandon()
        if call.timer is not None:
            call.timer.cancel()
        if call.lane is not None and self.hub is not None:
            self.hub.send(call.lane, Cancel(request_id))
            self._unload(call)
        if not call.job.via_router:  # the router holds no record of it: the call ends here, for
            # its events and metrics (its caller has stopped waiting and ignores the answer)
            error = errors.CancelledError("cancelled by the caller", driver=call.job.driver)
            self.end_call(call.job, error=error, chunks=call.chunks)

    def on_lost(self, peer: str, since: float) -> None:
        """A driver process died: the attempts it held failed (not the service's fault); an attempt
        it never took (sent as it died) goes again once the driver is back."""
        assert self.hub is not None
        for call in [c for c in self.calls.values() if c.lane == peer]:
            assert call.target is not None
            if not call.took:
                self._unload(call)
                call.timer = self.hub.loop.call_later(RETRY_S, self._retry, call, call.attempt)
                continue
            # The plan never retries it on the same target; the caller may (a new actor is up).
            error = errors.DriverUnavailableError(
                f"the {call.target.driver!r} driver actor died mid-call; the service may have run it",
                driver=call.target.driver,
                model=call.target.model,
                retryable=True,
            )
            self.on_result(
                DriverResult(
                    call.job.request_id, call.attempt, error=error, latency_s=time.monotonic() - call.started
                )
            )
        self.load.pop(peer, None)

    def on_undelivered(self, peer: str, messages: list[Any], reason: str) -> None:
        for message in messages:
            if isinstance(message, DriverCall):
                call = self.calls.get(message.job.request_id)
                if call is not None and call.attempt == message.attempt:
                    self._unload(call)
                    if "cannot be sent" in reason:
                        self._answer_error(call, errors.InvalidInputError(f"the call {reason}"))
                    else:  # its driver is starting or restarting: try again shortly
                        assert self.hub is not None
                        call.timer = self.hub.loop.call_later(RETRY_S, self._retry, call, call.attempt)
        super().on_undelivered(peer, [m for m in messages if isinstance(m, (Job, Probe))], reason)

    def on_drivers(self, message: DriversChanged) -> None:
        self.up = set(message.drivers)
        for request_id, call in list(self.parked.items()):
            if request_id not in self.calls:
                del self.parked[request_id]
            elif call.target is not None and call.target.driver in self.up:
                del self.parked[request_id]
                self._launch(call)

    # -- steps ----------------------------------------------------------------------------------

    def _step(self, call: _Call, step: Step) -> None:
        job = call.job
        if isinstance(step, GiveUp):
            if len(call.plan.attempts) > 1:
                self.emit(
                    "fallback.exhausted",
                    request_id=job.request_id,
                    driver=job.driver,
                    model=job.request.model or None,
                    error_type=type(step.error).__name__,
                    data={"attempts": len(call.plan.attempts)},
                )
            self._answer_error(call, step.error)
            return
        assert isinstance(step, Try)
        if step.reason == "next_target":
            tried = call.plan.attempts
            self.emit(
                "fallback.next_target",
                request_id=job.request_id,
                driver=step.target.driver,
                model=step.target.model or None,
                attempt=step.attempt,
                error_type=tried[-1].error_type if tried else None,
                data={"target": f"{step.target.driver}/{step.target.model}"},
            )
        call.attempt, call.target, call.lane = step.attempt, step.target, None
        call.timeout_s = step.timeout_s
        if step.delay_s > 0:
            assert self.hub is not None
            call.timer = self.hub.loop.call_later(step.delay_s, self._retry, call, step.attempt)
        else:
            self._launch(call)

    def _retry(self, call: _Call, attempt: int) -> None:
        call.timer = None
        if self.calls.get(call.job.request_id) is call and call.attempt == attempt:
            self._launch(call)

    def _launch(self, call: _Call) -> None:
        assert self.hub is not None
        job, target = call.job, call.target
        assert target is not None
        error: errors.NovaError
        if time.time() >= job.deadline:  # e.g. its driver never came back up
            error = errors.RequestTimeoutError(
                "the call's deadline passed before its driver could take it", driver=target.driver
            )
            self._answer_error(call, error)
            return
        if target.driver not in self.configured and target.driver not in self.remote:
            call.lane, call.started = "", time.monotonic()
            error = errors.UnknownDriverError(
                f"no driver named {target.driver!r} is running", driver=target.driver
            )
            self.on_result(DriverResult(job.request_id, call.attempt, error=error))
            return
        if target.driver not in self.up and target.driver not in self.remote:
            self.parked[job.request_id] = call
            return
        wait = self._paused_for(target)
        if wait > 0:  # the service asked for a rest: wait it out, or fail now if it outlasts the call
            if time.time() + wait < job.deadline:
                assert self.hub is not None
                call.timer = self.hub.loop.call_later(wait, self._retry, call, call.attempt)
                self.emit(
                    "ratelimit.delayed",
                    request_id=job.request_id,
                    driver=target.driver,
                    model=target.model or None,
                    data={"wait_s": wait},
                )
            else:
                limit = f"pause of {_pause_key(target.driver, target.model)} asked by the service"
                error = errors.RateLimitExceededError(
                    f"{target.driver} is resting for {wait:.1f}s as its rate limits asked",
                    driver=target.driver,
                    model=target.model or None,
                    retry_after=wait,
                    limit=limit,
                )
                self._answer_error(call, error)
            return
        self.emit(
            "fallback.attempt",
            request_id=job.request_id,
            driver=target.driver,
            model=target.model or None,
            attempt=call.attempt,
        )
        request = job.request
        if target.model != request.model:  # a target without a model: its driver's default
            request = request.model_copy(update={"model": target.model})
        timeout_s = call.timeout_s
        deadline = job.deadline if timeout_s is None else min(job.deadline, time.time() + timeout_s)
        call.lane, call.started, call.took = self._pick_lane(target.driver), time.monotonic(), False
        self.load[call.lane] = self.load.get(call.lane, 0) + 1
        prior = tuple(call.plan.attempts)
        self.hub.send(call.lane, DriverCall(job, call.attempt, target.driver, request, deadline, prior))

    def _pick_lane(self, driver: str) -> str:
        """The least busy process of the driver's pool."""
        if driver in self.remote:
            return RELAY
        lanes = [driver_lane(driver, i) for i in range(self.configured.get(driver, 1))]
        return min(lanes, key=lambda lane: self.load.get(lane, 0))

    def _unload(self, call: _Call) -> None:
        if call.lane:
            self.load[call.lane] = max(0, self.load.get(call.lane, 0) - 1)
        call.lane = None

    def _answer_error(self, call: _Call, error: errors.NovaError) -> None:
        """The call ends with `error`: answer its caller, and tell the stages that held it."""
        assert self.hub is not None
        job = call.job
        self.calls.pop(job.request_id, None)
        self.parked.pop(job.request_id, None)
        call.plan.abandon()
        self.end_call(job, error=error, chunks=call.chunks)
        if job.cache_key is not None and "cache" in job.stages:
            self.hub.send("cache", Store(job.cache_key, None, error))
        if "ratelimit" in job.stages:
            self.hub.send("ratelimit", Release(job.request_id, None))

    def _circuit_events(self) -> None:
        for change in self.board.drain_transitions():
            target = f"{change.target.driver}/{change.target.model}" if change.target else None
            self.emit(
                _CIRCUIT_EVENTS[change.new],
                driver=change.target.driver if change.target else None,
                data={"target": target, "failures": change.failures},
            )


_CIRCUIT_EVENTS = dict(
    zip(
        ("open", "half_open", "closed"),
        known("circuit.opened", "circuit.half_open", "circuit.closed"),
        strict=True,
    )
)


def _pause_key(driver: str, model: str) -> str:
    return f"{driver}/{model}" if model else driver
