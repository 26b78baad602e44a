"""RouterActor: the provider, and the only actor callers talk to.

A call arrives on the router's lane (the facade's bridge) or as a Thespian message (a user's own
actor). The router hands it to `nova.provider.Provider` — validation, conversation context,
`before_request` plugins, which stages it visits — and sends the job to its first stage. Whoever
ends the call answers the caller's lane directly; the answer comes back here only when the call
needs the router afterwards (plugins, a conversation, or a caller that speaks Thespian). For
those calls the router keeps the in-flight table, with deadlines, and answers exactly once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any, cast

from nova import errors
from nova.actors.base import PARENT, STARTER
from nova.actors.lane_actor import LaneActor
from nova.actors.protocol import (
    DRIVERS,
    PROBE_WAIT_S,
    Answer,
    Cancel,
    Credit,
    Drain,
    DrainStatus,
    Holding,
    Job,
    Kind,
    Piece,
    Probe,
    StageDown,
    StageInit,
    StageLost,
    Taken,
)
from nova.messages import (
    CallFailed,
    CallSucceeded,
    CancelCall,
    ChatCall,
    CompleteCall,
    StreamCall,
    StreamChunk,
)
from nova.probes import Tally
from nova.provider import Accepted, Answered, Outcome, Pending, Provider

__all__ = ["RouterActor", "StageDown"]

log = logging.getLogger("nova.router")
_KINDS = {ChatCall: "chat", CompleteCall: "complete", StreamCall: "stream"}
_Call = ChatCall | CompleteCall | StreamCall
ROUTER = "router"


class _Actor:
    """A caller that speaks Thespian (a user's actor): answered through the actor's thread."""

    __slots__ = ("address", "batches")

    def __init__(self, address: Any, batches: bool) -> None:
        self.address, self.batches = address, batches


class RouterActor(LaneActor):
    init_message = StageInit

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.provider: Provider | None = None
        self.stages: tuple[str, ...] = ()  # the stage actors this pipeline has
        self.callers: set[str] = set()  # lanes of callers that have talked to us
        self.draining = False
        self._deadline_timer: Any = None
        self._deadline_at: float | None = None
        self._probes: dict[int, tuple[str, Tally, Any]] = {}  # after a stage died: stage, answers, timer
        self._tokens = 0

    def handlers(self) -> dict[type, Any]:
        return {
            **super().handlers(),
            StageInit: self.on_init,
            ChatCall: self.on_actor_call,
            CompleteCall: self.on_actor_call,
            StreamCall: self.on_actor_call,
            CancelCall: lambda m, s: self.to_lane(self.cancel, m.request_id),
            StageDown: lambda m, s: self.to_lane(self.on_stage_down, m),
            Drain: self.on_drain,
        }

    def entitled(self) -> dict[type, str]:
        return {**super().entitled(), StageInit: PARENT, StageDown: PARENT, Drain: STARTER}

    def sender_name(self) -> str:
        return ROUTER

    def on_init(self, message: StageInit, sender: Any) -> None:
        from nova.features import build_provider, pipeline_stages

        config = message.config
        self.stages = pipeline_stages(config)
        self.provider = build_provider(config, emit=self.emit)  # stores under system.state_dir
        self.open_lane(config.system.lane_dir, ROUTER)

    def status_info(self) -> dict[str, Any]:
        return {"in_flight": len(self.provider.pending) if self.provider else 0}

    def on_drain(self, message: Drain, sender: Any) -> None:
        self.draining = True
        self.send(sender, DrainStatus(len(self.provider.pending) if self.provider else 0))

    # -- calls ----------------------------------------------------------------------------------

    def on_actor_call(self, call: _Call, sender: Any) -> None:
        caller = _Actor(sender, self.in_batch)
        if self.hub is None:  # not initialised: the init failed
            self._refuse(call.request_id, caller)
            return
        checked = _revalidated(call)
        if isinstance(checked, errors.NovaError):
            self.to_lane(self._reply, caller, str(getattr(call, "request_id", "")), None, checked, 0)
        else:
            self.to_lane(self.take, checked, caller)

    def on_lane(self, peer: str, message: Any) -> None:
        if isinstance(message, (ChatCall, CompleteCall, StreamCall)):
            self.callers.add(peer)
            self.take(message, peer)
        elif isinstance(message, Answer):
            self.on_answer(message)
        elif isinstance(message, Piece):
            self.on_piece(message)
        elif isinstance(message, Cancel):
            self.cancel(message.request_id)
        elif isinstance(message, Holding):
            probe = self._probes.get(message.token)
            if probe is not None and probe[1].add(message.peer, message.held, message.asked):
                self._probed(message.token)

    def take(self, call: _Call, caller: str | _Actor) -> None:
        """Accept a call (lane thread)."""
        provider = self.provider
        if provider is None or self.hub is None or self.draining:
            self._refuse(call.request_id, caller)
            return
        try:
            decision = provider.accept(
                call.request_id,
                _KINDS[type(call)],
                call.request,
                call.options,
                caller,
                direct=isinstance(caller, str),
            )
        except Exception as exc:  # a bug must still answer the call, once
            self._crashed(call.request_id, caller, exc)
            return
        if isinstance(decision, Answered):
            self._reply(caller, call.request_id, decision.response, decision.error, 0)
            return
        self._emit_started(decision.pending)
        if isinstance(caller, str):
            self.hub.send(caller, Taken(call.request_id, decision.pending.via_router))
        if isinstance(decision, Accepted):
            self._send_job(decision)
        self._arm_deadline()

    def _refuse(self, request_id: str, caller: str | _Actor) -> None:
        reason = (
            "is shutting down and takes no new calls" if self.draining else "failed to start (see nova.log)"
        )
        error = errors.DriverUnavailableError(f"Nova's router {reason}")
        self._reply(caller, request_id, None, error, 0)

    def _crashed(self, request_id: str, caller: str | _Actor, exc: Exception) -> None:
        log.exception("the router failed on call %s", request_id)
        error = errors.ProviderError(f"the router failed on this call: {type(exc).__name__}: {exc}")
        outcome = self.provider.fail(request_id, error) if self.provider else None
        if outcome is not None:
            self._deliver(outcome)
        else:
            self._reply(caller, request_id, None, error, 0)

    def _emit_started(self, pending: Pending) -> None:
        assert self.provider is not None
        self.emit(
            "request.started",
            request_id=pending.request_id,
            driver=pending.driver,
            model=pending.request.model or None,
            data={
                "operation": "text_completion" if pending.kind == "complete" else "chat",
                "stream": pending.kind == "stream",
                "traceparent": pending.options.traceparent,
                "driver_kind": self.provider.config.drivers[pending.driver].kind,
                **_request_params(pending.request),
                **_content(pending.request),
            },
        )

    def _send_job(self, decision: Accepted) -> None:
        assert self.hub is not None
        pending = decision.pending
        reply_to = ROUTER if pending.via_router else cast(str, pending.caller)
        job = Job(
            pending.request_id,
            cast(Kind, pending.kind),
            pending.driver,
            pending.request,
            pending.options,
            pending.deadline,
            reply_to,
            pending.stages,
            pending.stages,
            pending.accepted_at or time.time(),
            pending.via_router,
            pending.cache_key,
            decision.tokens,
        )
        stage, job = job.forward()
        self.hub.send(stage, job)

    def _start_ready(self) -> None:
        """Send what became ready: a conversation's next call, a summary job (or answer a call
        that ended before it ran)."""
        assert self.provider is not None
        ready = self.provider.take_ready()
        while ready:
            for item in ready:
                if isinstance(item, Accepted):
                    self._send_job(item)
                else:
                    self._answer(item)
            ready = self.provider.take_ready()
        self._arm_deadline()

    # -- answers of calls that come back here ---------------------------------------------------

    def on_piece(self, piece: Piece) -> None:
        assert self.provider is not None and self.hub is not None
        for pending, chunk, index in self.provider.chunk(piece.request_id, piece.index, piece.chunk):
            if index == 0:
                self.emit(
                    "stream.first_chunk",
                    request_id=piece.request_id,
                    driver=pending.driver,
                    model=chunk.model or pending.request.model or None,
                    duration_s=time.monotonic() - pending.started,
                )
            caller = pending.caller
            if isinstance(caller, _Actor):  # Thespian queues for it: grant the credit ourselves
                self.to_thespian(
                    caller.address,
                    StreamChunk(request_id=piece.request_id, index=index, chunk=chunk),
                    batch=caller.batches,
                )
                self.hub.send(piece.source, Credit(piece.request_id, 1))
            elif caller is not None:  # the caller grants credit to the source itself
                self.hub.send(caller, Piece(piece.request_id, index, chunk, piece.source))
            pending.sent += 1
        self._deliver(self.provider.chunks_complete(piece.request_id))

    def on_answer(self, answer: Answer) -> None:
        assert self.provider is not None
        outcome = self.provider.finish(
            answer.request_id, answer.response, answer.error, answer.chunks, answer.from_cache
        )
        self._deliver(outcome)

    def cancel(self, request_id: str) -> None:
        assert self.provider is not None and self.hub is not None
        for stage in self.stages:  # wherever the call is, it stops there
            self.hub.send(stage, Cancel(request_id))
        outcome = self.provider.fail(request_id, errors.CancelledError("cancelled by the caller"))
        self._deliver(outcome)

    def route_probe(self, probe: Probe) -> Probe:
        """A caller's probe goes on through every stage, in the order calls visit them, then to
        the drivers."""
        return replace(probe, slip=(*self.stages, DRIVERS))

    def on_stage_down(self, message: StageDown) -> None:
        """A stage died: the calls inside it are lost, the calls past it go on. Callers find out
        which of theirs are lost (`StageLost`); the router does the same for the calls it holds:
        it asks every stage and driver which of them they hold, and fails the rest."""
        assert self.provider is not None and self.hub is not None
        for caller in self.callers:
            self.hub.send(caller, StageLost(message.stage))
        ids = frozenset(r for r, p in self.provider.pending.items() if message.stage in p.stages)
        if not ids:
            return
        self._tokens += 1
        token = self._tokens
        timer = self.hub.loop.call_later(PROBE_WAIT_S, self._probed, token)
        tally = Tally(ids, ())
        tally.held.update(ids & self.resending.keys())
        self._probes[token] = (message.stage, tally, timer)
        tally.expected.update(self.pass_probe(self.route_probe(Probe(token, ROUTER, ids))))

    def _probed(self, token: int) -> None:
        """Every answer to a probe is in, or the wait is over: fail the calls nobody holds."""
        probe = self._probes.pop(token, None)
        if probe is None:
            return
        stage, tally, timer = probe
        timer.cancel()
        error = errors.DriverUnavailableError(
            f"Nova's {stage} stage died while it held the call", retryable=True
        )
        for request_id in tally.unheld():
            outcome = self.provider.fail(request_id, error) if self.provider is not None else None
            if outcome is not None:
                for peer in self.stages:  # wherever it might still be, it stops there
                    self.hub.send(peer, Cancel(request_id))  # type: ignore[union-attr]
                self._deliver(outcome)

    def on_lost(self, peer: str, since: float) -> None:
        self.callers.discard(peer)

    # -- deadlines of the calls held here -------------------------------------------------------

    def _arm_deadline(self) -> None:
        assert self.provider is not None and self.hub is not None
        deadline = self.provider.next_deadline()
        if deadline is None or (self._deadline_at is not None and self._deadline_at <= deadline):
            return
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self._deadline_at = deadline
        self._deadline_timer = self.hub.loop.call_later(max(0.0, deadline - time.time()), self._expire)

    def _expire(self) -> None:
        assert self.provider is not None and self.hub is not None
        self._deadline_timer = self._deadline_at = None
        for outcome in self.provider.expired():
            for stage in self.stages:
                self.hub.send(stage, Cancel(outcome.pending.request_id))
            self._deliver(outcome)
        self._arm_deadline()

    # -- answering ------------------------------------------------------------------------------

    def _deliver(self, outcome: Outcome | None) -> None:
        if outcome is not None:
            self._answer(outcome)
            self._start_ready()

    def _answer(self, outcome: Outcome) -> None:
        pending = outcome.pending
        if pending.caller is not None:  # None: an internal job (a summary)
            self._reply(pending.caller, pending.request_id, outcome.response, outcome.error, pending.sent)
        for name, fields in outcome.events:
            self.emit(name, **fields)

    def _reply(
        self, caller: Any, request_id: str, response: Any, error: errors.NovaError | None, chunks: int
    ) -> None:
        reply: Any
        if isinstance(caller, _Actor):
            if response is not None:
                reply = CallSucceeded(request_id=request_id, response=response, chunks=chunks)
            else:
                reply = CallFailed(request_id=request_id, error=cast(errors.NovaError, error), chunks=chunks)
            self.to_thespian(caller.address, reply, batch=caller.batches)
        elif self.hub is not None:
            self.hub.send(caller, Answer(request_id, response, error, chunks))


def _revalidated(call: Any) -> Any:
    """A user's actor's call, validated again: a message arrives unpickled, and one built with
    `model_construct` (or changed after it was built) was never checked, so a wrong field would
    fail deep inside a stage or a driver instead of naming itself."""
    from pydantic import ValidationError

    from nova.types import validation_error

    try:
        return type(call).model_validate(call.model_dump(warnings=False))
    except ValidationError as exc:
        return validation_error(exc)
    except Exception as exc:  # a field that cannot even be dumped
        return errors.InvalidInputError(f"invalid {type(call).__name__}: {type(exc).__name__}: {exc}")


def _content(request: Any) -> dict[str, Any]:
    """The prompt, only when content capture is switched on (OTEL_INSTRUMENTATION_GENAI_…)."""
    from nova.events import capture_content_enabled, message_content

    if not capture_content_enabled() or not hasattr(request, "messages"):
        return {}
    return {"content": message_content(request.messages)}


def _request_params(request: Any) -> dict[str, Any]:
    params = {
        k: getattr(request, k)
        for k in ("temperature", "max_tokens", "top_p", "seed")
        if getattr(request, k, None) is not None
    }
    if getattr(request, "stop", None):
        params["stop_sequences"] = list(request.stop)
    return params
