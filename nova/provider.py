"""The provider: what happens to every call before and after the pipeline, for every driver.

`Provider` is the RouterActor's brain, a plain object: it resolves the driver, runs plugins,
prepares conversation context, decides which pipeline stages a call visits, keeps the table of
calls in flight with their deadlines, assembles streams, prices answers, and decides what the
caller gets — exactly once. The actor only moves messages.

Conversations: calls on one conversation id run one at a time, in arrival order (`Waiting` until
the call ahead has recorded its turn; the deadline still runs). With summarisation on, a call that
dropped turns from the history starts an internal summary job once its own turn is recorded (the
caller never waits for it); the next calls carry the summary once it is in. Calls that started
because another finished, and summary jobs, come out of `take_ready()`.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable
from typing import Any

from nova import answers, errors
from nova.calls import Accepted, Answered, Outcome, Pending, Waiting
from nova.config import NovaConfig
from nova.context.turns import TurnQueue
from nova.messages import CallOptions
from nova.modelref import resolve_model, resolve_target
from nova.summaries import SummaryJobs
from nova.types import ChatRequest, Chunk, CompletionRequest, Message, Response, collect_chunks

__all__ = ["Accepted", "Answered", "Outcome", "Pending", "Provider", "Waiting"]

log = logging.getLogger("nova.provider")


class Provider:
    def __init__(
        self,
        config: NovaConfig,
        *,
        plugins: Any = None,
        conversations: Any = None,
        cache_enabled: bool = False,
        ratelimit_enabled: bool = False,
        estimate_tokens: Callable[[Any], int] | None = None,
        cache_key: Callable[[str, Any], str] | None = None,
        price: Callable[[str, str, Any], float | None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.driver_kinds = {name: d.kind for name, d in config.drivers.items()}  # for model strings
        self._kinds: list[str] | None = None
        self.plugins = plugins
        self.conversations = conversations
        self.cache_enabled = cache_enabled
        self.ratelimit_enabled = ratelimit_enabled
        self._estimate = estimate_tokens or (lambda request: 0)
        self._cache_key = cache_key
        self._price = price
        self.clock = clock
        self.pending: dict[str, Pending] = {}
        self._deadlines: list[tuple[float, str]] = []
        self.turns = TurnQueue()
        self._ready: list[Accepted | Outcome] = []
        self.summaries = SummaryJobs()

    # -- accepting a call -----------------------------------------------------------------------

    def accept(
        self,
        request_id: str,
        kind: str,
        request: ChatRequest | CompletionRequest,
        options: CallOptions,
        caller: Any,
        *,
        direct: bool = False,
    ) -> Accepted | Answered | Waiting:
        """`direct`: the caller can take its answer straight from whoever answers; the router then
        forgets the call once it is on its way, unless plugins or a conversation need it back."""
        if request_id in self.pending:
            return Answered(
                None,
                errors.InvalidInputError(
                    f"request id {request_id!r} is already in flight", field="request_id"
                ),
            )
        try:
            driver, request, options = self._resolve(request, options)
        except errors.UnknownDriverError as exc:
            return Answered(None, exc)
        timeout = options.timeout_s if options.timeout_s is not None else self.config.llm.timeout_s
        now = self.clock()
        pending = Pending(
            request_id, caller, kind, driver, request, options, time.monotonic(), now + timeout, ()
        )
        pending.direct, pending.accepted_at = direct, now
        if isinstance(request, ChatRequest) and options.conversation and self.conversations is not None:
            pending.lane = options.conversation
            if not self.turns.enter(pending.lane, request_id):
                self._track(pending)
                return Waiting(pending)
        try:
            decision = self._begin(pending)
        except BaseException:  # the router answers the crash; the conversation must not stay blocked
            self._drop_lane(pending)
            raise
        if isinstance(decision, Answered):
            self._drop_lane(pending)
        return decision

    def _resolve(
        self, request: ChatRequest | CompletionRequest, options: CallOptions
    ) -> tuple[str, Any, CallOptions]:
        """The call's driver (a configured name) and its request and options with model strings
        resolved: `model="openai/gpt-4o-mini"`, `driver=` a kind, fallback targets (nova.modelref)."""
        kinds = self.driver_kinds
        ref = resolve_model(
            request.model,
            kinds,
            driver=options.driver,
            default=self.config.llm.driver,
            kinds=self._known_kinds,
        )
        model = ref.model
        if not model:  # resolve the default here: cache keys, limits and events need the real name
            default_call = options.driver is None and not request.model
            model = (self.config.llm.model if default_call else "") or str(
                self.config.drivers[ref.driver].options.get("model", "")
            )
        if model != request.model:
            request = request.model_copy(update={"model": model})
        if isinstance(options.fallback, tuple):
            targets = tuple(str(resolve_target(t, kinds, self._known_kinds)) for t in options.fallback)
            if targets != options.fallback:
                options = options.model_copy(update={"fallback": targets})
        return ref.driver, request, options

    def _known_kinds(self) -> list[str]:
        # Looking up entry points costs milliseconds: once per router, not once per call.
        if self._kinds is None:
            from nova.drivers import available_drivers

            self._kinds = available_drivers()
        return self._kinds

    def _drop_lane(self, pending: Pending) -> None:
        if pending.lane is not None:
            self.turns.leave(pending.lane, pending.request_id)  # it ran alone: nothing waits behind it

    def _begin(self, pending: Pending) -> Accepted | Answered:
        """Prepare the conversation, run `before_request` plugins, pick the stages, track the call."""
        if pending.lane is not None:
            assert isinstance(pending.request, ChatRequest)
            pending.new_messages = pending.request.messages
            try:
                pending.request, dropped = self.conversations.prepare_request(
                    pending.lane, pending.request, pending.driver
                )
            except errors.NovaError as exc:  # e.g. the newest turn alone does not fit the window
                return Answered(None, exc)
            except Exception as exc:  # a bug (a token counter's): answered, like any router crash
                log.exception("preparing conversation %r failed", pending.lane)
                error = errors.ProviderError(f"the router failed on this call: {type(exc).__name__}: {exc}")
                return Answered(None, error)
            pending.dropped = tuple(dropped)
        if self.plugins is not None:
            answered: Answered | None = self.plugins.before_request(pending)
            if answered is not None:
                return answered
        stages = []
        if self.cache_enabled and pending.options.cache is not False and self._cache_key is not None:
            pending.cache_key = self._cache_key(pending.driver, pending.request)
            stages.append("cache")
        if self.ratelimit_enabled:
            stages.append("ratelimit")
        stages.append("fallback")
        pending.stages = tuple(stages)
        pending.via_router = (
            not pending.direct
            or self.plugins is not None
            or pending.lane is not None
            or pending.summary_of is not None
        )
        if pending.via_router:
            self._track(pending)
        return Accepted(pending, self._estimate(pending.request) if self.ratelimit_enabled else 0)

    def _track(self, pending: Pending) -> None:
        if pending.request_id not in self.pending:
            self.pending[pending.request_id] = pending
            heapq.heappush(self._deadlines, (pending.deadline, pending.request_id))

    def take_ready(self) -> list[Accepted | Outcome]:
        """What became ready since the last look: calls whose turn came (`Accepted`: send the job;
        `Outcome`: it ended before running, e.g. a plugin answered it) and summary jobs to send."""
        ready, self._ready = self._ready, []
        return ready

    def _leave_turn(self, pending: Pending) -> None:
        """The call is over: start the next waiting call of its conversation, if any."""
        if pending.lane is None:
            return
        lane = pending.lane
        following = self.turns.leave(lane, pending.request_id)
        while following is not None:
            nxt = self.pending[following]
            try:
                decision = self._begin(nxt)
            except Exception as exc:  # answer it here: no message of its own would reach on_crash
                log.exception("starting call %s failed", following)
                error = errors.ProviderError(f"the router failed on this call: {type(exc).__name__}: {exc}")
                decision = Answered(None, error)
            if isinstance(decision, Accepted):
                self._ready.append(decision)
                return
            del self.pending[following]
            self._ready.append(self._outcome(nxt, decision.response, decision.error, False, ran=False))
            following = self.turns.leave(lane, following)

    # -- streams --------------------------------------------------------------------------------

    def chunk(self, request_id: str, index: int, chunk: Chunk) -> list[tuple[Pending, Chunk, int]]:
        """The chunks now ready for the caller, in order, each with its index. Pieces can arrive
        out of order (Thespian does not keep the order of messages between two actors under
        load), so one arrival may release none or several. Nothing is forwarded once the call is
        gone or a plugin failed on an earlier chunk (the call then ends with that plugin's error)."""
        pending = self.pending.get(request_id)
        if pending is None:
            return []
        ready = []
        for next_chunk in pending.order.add(index, chunk):
            position = len(pending.chunks)
            taken = self._take(pending, next_chunk)
            if taken is not None:
                ready.append((pending, taken, position))
        return ready

    def _take(self, pending: Pending, chunk: Chunk) -> Chunk | None:
        """Count the next chunk in order; the chunk to forward, or None."""
        if pending.plugin_error is not None:
            pending.chunks.append(chunk)  # counted, so the stream still finishes
            return None
        if self.plugins is not None:
            try:
                chunk = self.plugins.on_chunk(pending, chunk)
            except errors.NovaError as exc:
                pending.plugin_error = exc
                pending.chunks.append(chunk)
                return None
        pending.chunks.append(chunk)
        return chunk

    # -- finishing ------------------------------------------------------------------------------

    def finish(
        self,
        request_id: str,
        response: Response | None,
        error: errors.NovaError | None,
        chunks_sent: int = 0,
        from_cache: bool = False,
    ) -> Outcome | None:
        """The pipeline's answer. None: unknown call (already answered), or a stream still
        waiting for chunks that the driver sent before its result."""
        pending = self.pending.get(request_id)
        if pending is None:
            return None
        if pending.kind == "stream" and len(pending.chunks) < chunks_sent:
            pending.done = (response, error, chunks_sent, from_cache)
            return None
        del self.pending[request_id]
        if pending.plugin_error is not None:
            response, error = None, pending.plugin_error
        if pending.kind == "stream" and error is None:
            assembled = collect_chunks(pending.chunks, driver=pending.driver)
            response = assembled.model_copy(
                update={
                    "attempts": response.attempts if response else (),
                    "cached": from_cache,
                }
            )
        return self._outcome(pending, response, error, from_cache)

    def chunks_complete(self, request_id: str) -> Outcome | None:
        """Finish a stream whose result arrived before its last chunks, once they are in."""
        pending = self.pending.get(request_id)
        if pending is None or pending.done is None or len(pending.chunks) < pending.done[2]:
            return None
        response, error, chunks_sent, from_cache = pending.done
        pending.done = None
        return self.finish(request_id, response, error, chunks_sent, from_cache)

    def fail(self, request_id: str, error: errors.NovaError) -> Outcome | None:
        pending = self.pending.pop(request_id, None)
        return None if pending is None else self._outcome(pending, None, error, False)

    def expired(self) -> list[Outcome]:
        """Calls past their deadline, failed with RequestTimeoutError."""
        now = self.clock()
        out = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, request_id = heapq.heappop(self._deadlines)
            pending = self.pending.get(request_id)
            if pending is not None:
                timeout = pending.deadline - (now - (time.monotonic() - pending.started))
                error = errors.RequestTimeoutError(
                    f"no answer within the call's timeout ({timeout:.3g}s)",
                    driver=pending.driver,
                    model=pending.request.model or None,
                )
                outcome = self.fail(request_id, error)
                if outcome is not None:
                    out.append(outcome)
        return out

    def next_deadline(self) -> float | None:
        while self._deadlines and self._deadlines[0][1] not in self.pending:
            heapq.heappop(self._deadlines)
        return self._deadlines[0][0] if self._deadlines else None

    def _outcome(
        self,
        pending: Pending,
        response: Response | None,
        error: errors.NovaError | None,
        from_cache: bool,
        ran: bool = True,
    ) -> Outcome:
        """`ran` False: a waiting call whose turn came ended before it ran (a plugin answered it,
        or its context did not fit): like an answer at `accept`, no after-hooks and no turn to
        record; `_leave_turn` moves its conversation on."""
        if pending.summary_of is not None:
            return self.summaries.finish(pending, response, error, self.conversations)
        try:
            return self._result(pending, response, error, from_cache, ran)
        finally:  # even when recording the turn fails, the conversation's next call must start
            if ran:
                self._leave_turn(pending)

    def _result(
        self,
        pending: Pending,
        response: Response | None,
        error: errors.NovaError | None,
        from_cache: bool,
        ran: bool,
    ) -> Outcome:
        if self.plugins is not None and ran:
            response, error = self.plugins.after(pending, response, error)
        outcome = Outcome(pending, response, error)
        started = time.time() - (time.monotonic() - pending.started)
        if response is not None:
            response, event = answers.succeeded(
                response,
                request_id=pending.request_id,
                driver=pending.driver,
                requested_model=pending.request.model,
                started=started,
                from_cache=from_cache,
                price=self._price,
                extra=_answer_content(response),
            )
            outcome.response = response
            if ran and pending.lane is not None and pending.new_messages:
                self.conversations.record(pending.lane, pending.new_messages, response)
                self._summarise(pending)
        else:
            assert error is not None
            model = pending.request.model
            event = answers.failed(
                error, request_id=pending.request_id, driver=pending.driver, model=model, started=started
            )
        outcome.events.append(event)
        return outcome

    def _summarise(self, pending: Pending) -> None:
        job = self.summaries.job_for(
            pending,
            config=self.config,
            conversations=self.conversations,
            plugins=self.plugins,
            clock=self.clock,
        )
        if job is not None:
            job.stages = ("ratelimit", "fallback") if self.ratelimit_enabled else ("fallback",)
            self._track(job)
            self._ready.append(Accepted(job, self._estimate(job.request) if self.ratelimit_enabled else 0))


def _answer_content(response: Response) -> dict[str, Any]:
    """The answer, only when content capture is switched on."""
    from nova.events import capture_content_enabled, message_content

    if not capture_content_enabled():
        return {}
    answer = (
        Message(role="assistant", content=response.text or None, tool_calls=response.tool_calls)
        if response.text or response.tool_calls
        else Message(role="assistant", content="")
    )
    return {"content": message_content([answer])[0]}
