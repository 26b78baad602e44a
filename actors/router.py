"""RouterActor: the provider, and the only actor callers talk to.

It hands each call to `nova.provider.Provider`, sends the resulting job along its routing slip
(cache → rate limit → fallback), forwards stream chunks to the caller, and answers the caller
exactly once: with the pipeline's answer, or with a typed error when the call's deadline passes
or a stage holding it dies.
"""

from __future__ import annotations

import logging
import time
from typing import Any, cast

from thespian.actors import WakeupMessage

from actors.base import NovaActor
from actors.protocol import (
    CancelJob,
    Drain,
    DrainStatus,
    Job,
    JobDone,
    Kind,
    Release,
    StageInit,
    StoreResult,
    StreamPiece,
)
from nova import errors
from nova.messages import (
    CallFailed,
    CallSucceeded,
    CancelCall,
    ChatCall,
    CompleteCall,
    StreamCall,
    StreamChunk,
)
from nova.provider import Accepted, Answered, Outcome, Pending, Provider

__all__ = ["RouterActor", "StageDown"]

log = logging.getLogger("nova.router")
_DEADLINE = "nova:deadline"
_KINDS = {ChatCall: "chat", CompleteCall: "complete", StreamCall: "stream"}


class StageDown:
    """PipelineSupervisor → router: a stage died; fail the calls that may be inside it."""

    def __init__(self, stage: str, replacement: Any) -> None:
        self.stage = stage
        self.replacement = replacement


class RouterActor(NovaActor):
    init_message = StageInit

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.provider: Provider | None = None
        self.stages: dict[str, Any] = {}
        self._wakeup_at: float | None = None
        self.draining = False
        self._batch_callers: set[str] = set()  # calls whose caller unpacks batches

    def handlers(self) -> dict[type, Any]:
        return {
            StageInit: self.on_init,
            ChatCall: self.on_call,
            CompleteCall: self.on_call,
            StreamCall: self.on_call,
            JobDone: self.on_done,
            StreamPiece: self.on_piece,
            CancelCall: self.on_cancel,
            StageDown: self.on_stage_down,
            WakeupMessage: self.on_wakeup,
            Drain: self.on_drain,
        }

    def sender_name(self) -> str:
        return "router"

    def on_init(self, message: StageInit, sender: Any) -> None:
        from nova.features import build_provider

        self.stages = dict(message.wiring)
        self.provider = build_provider(message.config)  # stores under system.state_dir

    def status_info(self) -> dict[str, Any]:
        return {"in_flight": len(self.provider.pending) if self.provider else 0}

    def on_drain(self, message: Drain, sender: Any) -> None:
        self.draining = True
        self.send(sender, DrainStatus(len(self.provider.pending) if self.provider else 0))

    def on_call(self, call: ChatCall | CompleteCall | StreamCall, sender: Any) -> None:
        if self.provider is None or self.draining:
            reason = (
                "is shutting down and takes no new calls"
                if self.draining
                else "failed to start (see nova.log)"
            )
            error = errors.DriverUnavailableError(f"Nova's router {reason}")
            self.send(sender, CallFailed(request_id=call.request_id, error=error), batch=self.in_batch)
            return
        kind = _KINDS[type(call)]
        decision = self.provider.accept(call.request_id, kind, call.request, call.options, sender)
        if isinstance(decision, Answered):
            reply: Any = (
                CallSucceeded(request_id=call.request_id, response=decision.response)
                if decision.response is not None
                else CallFailed(request_id=call.request_id, error=cast(errors.NovaError, decision.error))
            )
            self.send(sender, reply, batch=self.in_batch)
            return
        if self.in_batch:  # the caller unpacks batches (the facade's bridge): answers may share one
            self._batch_callers.add(call.request_id)
        # A call waiting for its conversation's turn has started too, for every listener.
        self._emit_started(decision.pending)
        if isinstance(decision, Accepted):
            self._send_job(decision)
        self._schedule_deadline()

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
        pending = decision.pending
        slip = tuple(self.stages[name] for name in pending.stages)
        job = Job(
            pending.request_id,
            cast(Kind, pending.kind),
            pending.driver,
            pending.request,
            pending.options,
            pending.deadline,
            self.myAddress,
            slip,
            pending.cache_key,
            decision.tokens,
        )
        target, job = job.forward()
        self.send(target, job)

    def _start_ready(self) -> None:
        """Send what became ready: a conversation's next call, a summary job (or answer a call
        that ended before it ran)."""
        assert self.provider is not None
        ready = self.provider.take_ready()
        if not ready:
            return
        while ready:
            for item in ready:
                if isinstance(item, Accepted):
                    self._send_job(item)
                else:
                    self._answer(item)
            ready = self.provider.take_ready()
        self._schedule_deadline()

    def on_piece(self, piece: StreamPiece, sender: Any) -> None:
        assert self.provider is not None
        for pending, chunk, index in self.provider.chunk(piece.request_id, piece.index, piece.chunk):
            if index == 0:
                self.emit(
                    "stream.first_chunk",
                    request_id=piece.request_id,
                    driver=pending.driver,
                    model=chunk.model or pending.request.model or None,
                    duration_s=time.monotonic() - pending.started,
                )
            self.send(
                pending.caller,
                StreamChunk(request_id=piece.request_id, index=index, chunk=chunk),
                batch=piece.request_id in self._batch_callers,
            )
            pending.sent += 1
        self._deliver(self.provider.chunks_complete(piece.request_id))

    def on_done(self, done: JobDone, sender: Any) -> None:
        assert self.provider is not None
        self._deliver(
            self.provider.finish(
                done.request_id, done.response, done.error, done.chunks_sent, done.from_cache
            )
        )

    def on_cancel(self, message: CancelCall, sender: Any) -> None:
        assert self.provider is not None
        outcome = self.provider.fail(message.request_id, errors.CancelledError("cancelled by the caller"))
        if outcome is not None:
            self.send(self.stages["fallback"], CancelJob(message.request_id))
            self._deliver(outcome)

    def on_stage_down(self, message: StageDown, sender: Any) -> None:
        assert self.provider is not None
        self.stages[message.stage] = message.replacement
        error = errors.DriverUnavailableError(f"the {message.stage} stage restarted while holding the call")
        for outcome in self.provider.fail_all(lambda p: error if message.stage in p.stages else None):
            self._deliver(outcome)

    def on_wakeup(self, message: WakeupMessage, sender: Any) -> None:
        if message.payload != _DEADLINE or self.provider is None:
            return
        self._wakeup_at = None
        for outcome in self.provider.expired():
            self.send(self.stages["fallback"], CancelJob(outcome.pending.request_id))
            self._deliver(outcome)
        self._schedule_deadline()

    def _schedule_deadline(self) -> None:
        assert self.provider is not None
        deadline = self.provider.next_deadline()
        if deadline is None or (self._wakeup_at is not None and self._wakeup_at <= deadline):
            return
        self._wakeup_at = deadline
        self.wakeupAfter(max(0.0, deadline - time.time()), payload=_DEADLINE)

    def _deliver(self, outcome: Outcome | None) -> None:
        if outcome is not None:
            self._answer(outcome)
            self._start_ready()

    def _answer(self, outcome: Outcome) -> None:
        pending = outcome.pending
        batch = pending.request_id in self._batch_callers
        self._batch_callers.discard(pending.request_id)
        if pending.caller is None:  # an internal job (a summary): nobody to answer
            pass
        elif outcome.response is not None:
            self.send(
                pending.caller,
                CallSucceeded(request_id=pending.request_id, response=outcome.response, chunks=pending.sent),
                batch=batch,
            )
        else:
            assert outcome.error is not None
            self.send(
                pending.caller,
                CallFailed(request_id=pending.request_id, error=outcome.error, chunks=pending.sent),
                batch=batch,
            )
        if outcome.store and "cache" in self.stages and pending.cache_key:
            self.send(
                self.stages["cache"],
                StoreResult(pending.cache_key, outcome.response, outcome.error, pending.options.ttl_s),
            )
        if "ratelimit" in pending.stages:
            # The fallback stage already paused the target of every rate-limited attempt.
            self.send(self.stages["ratelimit"], Release(pending.request_id, outcome.release_tokens))
        for name, fields in outcome.events:
            self.emit(name, **fields)

    def on_crash(self, message: Any, sender: Any, exc: Exception) -> None:
        request_id = getattr(message, "request_id", None)
        if request_id is None:
            return
        error = errors.ProviderError(f"the router failed on this call: {type(exc).__name__}: {exc}")
        outcome = self.provider.fail(request_id, error) if self.provider else None
        if outcome is not None:
            self._deliver(outcome)
        elif isinstance(message, (ChatCall, CompleteCall, StreamCall)):
            self.send(sender, CallFailed(request_id=request_id, error=error), batch=self.in_batch)
        if self.provider is not None:
            self._start_ready()  # what the failed handler had made ready still goes out


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
