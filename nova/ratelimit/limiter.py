"""The rate limiter: admits, queues or rejects calls per driver and per model, deterministically.

A plain object with an injected clock; the RateLimitActor owns one, calls `poll()` when the
`next_wakeup_s` it returned has passed (Thespian `wakeupAfter`) and after any call that changes
state, and answers the tickets that `poll()` reports. Nothing here sleeps or polls in a loop.

Fairness: calls to one driver/model (a lane) are served strictly in arrival order. The first
waiting call of each lane holds every scope in which it lacks capacity (or whose target is paused):
no later call passes it there, however small. It does not hold a scope where it has room, so a full
model limit never stalls the driver's other models. A pass over the queue looks at lane heads only,
so its cost grows with the number of lanes, not with the number of waiting calls.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from nova.errors import InvalidInputError, NovaError, QuotaExhaustedError, RateLimitError
from nova.ratelimit.decisions import (
    Admitted,
    Decision,
    PollResult,
    Queued,
    Rejected,
    ScopeStats,
    Ticket,
    Transition,
)
from nova.ratelimit.holds import Budget, Scope, earliest, find_holds, retry_after, verdict, wake_for
from nova.ratelimit.pause import pause_from_error
from nova.ratelimit.settings import Limits, RateLimitSettings
from nova.ratelimit.window import EPSILON, SlidingWindow

__all__ = ["RateLimiter"]

_UNCONFIGURED = Limits()  # what a ticket with no configured scope gets (it can still be paused)


@dataclass(slots=True)
class _Waiting:
    ticket: Ticket
    scopes: tuple[Scope, ...]
    since: float
    deadline: float
    seq: int  # arrival order across lanes


class RateLimiter:
    def __init__(
        self,
        settings: RateLimitSettings,
        clock: Callable[[], float] = time.monotonic,
        budget: Budget | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self.budget = budget  # a cluster's shared budget (leases), on top of the local limits
        self._scopes: dict[str, Scope] = {}
        self._queue: dict[str, _Waiting] = {}
        # One FIFO lane per driver/model; OrderedDict for O(1) removal at the head and by id.
        self._lanes: dict[tuple[str, ...], OrderedDict[str, _Waiting]] = {}
        self._seq = itertools.count()
        self._in_flight: dict[str, tuple[Scope, ...]] = {}
        self._pauses: dict[str, tuple[float, str]] = {}  # target -> (until, reason)
        # Cached result of the last pass over the queue, valid until `_wake_at` or a state change.
        self._blocked: dict[str, str] = {}
        self._wake_at: float | None = None
        self._dirty = False
        self._admitted: list[Ticket] = []
        self._waited: dict[str, float] = {}
        self._expired: list[tuple[Ticket, str]] = []
        self._rejected: list[tuple[Ticket, str]] = []
        self._transitions: list[Transition] = []

    # -- the actor's calls -------------------------------------------------------------------

    def submit(self, ticket: Ticket) -> Decision:
        """Admit now, queue, or reject. Call `poll()` afterwards when the answer is Queued."""
        if not self.settings.enabled:
            return Admitted()
        if ticket.request_id in self._queue or ticket.request_id in self._in_flight:
            raise InvalidInputError(f"request {ticket.request_id!r} is already known to the rate limiter")
        if ticket.tokens < 0:
            raise InvalidInputError("a ticket's token estimate cannot be negative", field="tokens")
        now = self._clock()
        scopes = self._scopes_for(ticket)
        for scope in scopes:
            tpm = scope.limits.tokens_per_minute
            if tpm is not None and ticket.tokens > tpm:  # it could never fit: do not make it wait
                return Rejected("tokens_per_minute", None, scope.key)
        self._refresh(now)
        holds = find_holds(ticket, scopes, self._pauses, self._blocked, now, self.budget)
        if not holds:
            self._admit(ticket, scopes, now)
            return Admitted()
        deadline = now + min((s.limits.max_wait_s for s in scopes), default=_UNCONFIGURED.max_wait_s)
        outcome, hold = verdict(holds, self._scopes, now, deadline)
        if outcome != "wait":
            return Rejected(hold.limit, retry_after(holds, now), hold.scope)
        waiting = _Waiting(ticket, scopes, now, deadline, next(self._seq))
        self._queue[ticket.request_id] = waiting
        lane = self._lanes.setdefault(ticket.scope_keys, OrderedDict())
        lane[ticket.request_id] = waiting
        if len(lane) == 1:  # only a lane's head holds scopes; the rest wait behind it
            for h in holds:
                self._blocked.setdefault(h.scope, h.limit)
        self._wake_at = earliest(self._wake_at, wake_for(holds, deadline))
        return Queued(hold.limit, hold.scope)

    def poll(self) -> PollResult:
        """Everything admitted, expired, rejected or paused/resumed since the last poll."""
        now = self._clock()
        self._refresh(now)
        result = PollResult(
            admitted=self._admitted,
            expired=self._expired,
            rejected=self._rejected,
            transitions=self._transitions,
            waited_s=self._waited,
            next_wakeup_s=None if self._wake_at is None else max(self._wake_at - now, 0.0),
        )
        self._admitted, self._expired, self._rejected, self._transitions = [], [], [], []
        self._waited = {}
        return result

    def release(self, request_id: str, actual_tokens: int | None = None) -> bool:
        """The admitted call ended: free its concurrency slot and replace its token estimate by
        `actual_tokens` (refund or charge the difference) while it is still in the window.
        False when the id is not in flight (already released, never admitted)."""
        scopes = self._in_flight.pop(request_id, None)
        if scopes is None:
            return False
        if self.budget is not None:
            self.budget.settle(request_id, actual_tokens)
        for scope in scopes:
            scope.in_flight -= 1
            if actual_tokens is not None and scope.window is not None:
                scope.window.adjust(request_id, max(actual_tokens, 0))
        self._dirty = True
        return True

    def budget_changed(self) -> None:
        """The shared budget changed (a grant came, a lease expired, the leader was lost): the
        next `poll()` serves the queue again."""
        self._dirty = True

    def queued_by_scope(self) -> dict[str, tuple[int, int]]:
        """Calls and tokens waiting, by scope."""
        out: dict[str, tuple[int, int]] = {}
        for w in self._queue.values():
            for key in w.ticket.scope_keys:
                n, t = out.get(key, (0, 0))
                out[key] = (n + 1, t + w.ticket.tokens)
        return out

    def cancel(self, request_id: str) -> bool:
        """Drop a queued ticket whose caller went away. False when it is not queued."""
        waiting = self._queue.pop(request_id, None)
        if waiting is None:
            return False
        self._dequeue(waiting)
        self._dirty = True  # it may have been holding a scope for the tickets behind it
        return True

    def pause(self, driver: str, model: str | None, seconds: float, reason: str = "") -> float:
        """Stop admitting calls to a target ("driver" or "driver/model") for `seconds`, capped by
        `max_pause_s`; a longer running pause is kept. Returns the seconds the pause now lasts."""
        if not self.settings.enabled:
            return 0.0
        target = f"{driver}/{model}" if model else driver
        seconds = min(float(seconds), self.settings.max_pause_s)
        now = self._clock()
        self._end_pauses(now)
        current = self._pauses.get(target)
        if current is not None:
            if current[0] >= now + seconds:
                return current[0] - now
        elif seconds <= 0:
            return 0.0
        else:
            self._transitions.append(Transition("paused", target, seconds, reason))
        self._pauses[target] = (now + seconds, reason)
        self._dirty = True
        return seconds

    def observe_error(self, error: NovaError) -> float | None:
        """Pause the failed call's target as the service asked (Retry-After, or a rate-limit header
        at zero); a bare 429 pauses `default_pause_s`. Returns the pause, or None for no pause."""
        if not error.driver or not self.settings.enabled:
            return None
        seconds = pause_from_error(error)
        reason = "retry_after" if error.retry_after else "rate_limit_headers"
        bare_429 = isinstance(error, RateLimitError) and not isinstance(error, QuotaExhaustedError)
        if seconds is None and bare_429:
            seconds, reason = self.settings.default_pause_s, "rate_limited"
        if not seconds:
            return None
        return self.pause(error.driver, error.model or None, seconds, reason)

    def stats(self) -> dict[str, ScopeStats]:
        """Per configured or paused scope: in flight, queued, window usage, pause left."""
        now = self._clock()
        self._end_pauses(now)
        queued = Counter(key for w in self._queue.values() for key in w.ticket.scope_keys)
        out: dict[str, ScopeStats] = {}
        for key in sorted(set(self._scopes) | set(self._pauses)):
            scope = self._scopes.get(key)
            window = scope.window if scope is not None else None
            if window is not None:
                window.prune(now)
            pause = self._pauses.get(key)
            out[key] = ScopeStats(
                in_flight=scope.in_flight if scope is not None else 0,
                queued=queued[key],
                requests_in_window=len(window) if window is not None else 0,
                tokens_in_window=window.tokens if window is not None else 0,
                paused_for_s=max(pause[0] - now, 0.0) if pause is not None else 0.0,
            )
        return out

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    # -- internals ---------------------------------------------------------------------------

    def _scopes_for(self, ticket: Ticket) -> tuple[Scope, ...]:
        scopes = []
        for key in ticket.scope_keys:
            limits = self.settings.limits.get(key)
            if limits is None and key == ticket.driver:
                limits = self.settings.default  # one scope of its own per driver
            if limits is None:
                continue
            scope = self._scopes.get(key)
            if scope is None:
                window = SlidingWindow() if limits.uses_window else None
                scope = self._scopes[key] = Scope(key, limits, window)
            scopes.append(scope)
        return tuple(scopes)

    def _refresh(self, now: float) -> None:
        """Serve the queue if anything could have changed since the last pass."""
        self._end_pauses(now)
        if self._dirty or (self._wake_at is not None and now + EPSILON >= self._wake_at):
            self._pump(now)

    def _end_pauses(self, now: float) -> None:
        for target, (until, _reason) in list(self._pauses.items()):
            if until <= now + EPSILON:
                del self._pauses[target]
                self._transitions.append(Transition("resumed", target))
                self._dirty = True

    def _pump(self, now: float) -> None:
        """One pass over the queue in arrival order: admit, expire, or keep waiting."""
        blocked: dict[str, str] = {}
        wake: float | None = min((until for until, _ in self._pauses.values()), default=None)
        # Lane heads in arrival order; a head that leaves makes the next of its lane a head.
        # Later calls of a waiting head's lane have later deadlines and the same scopes: skip them.
        heads = [(next(iter(lane.values())).seq, key) for key, lane in self._lanes.items()]
        heapq.heapify(heads)
        while heads:
            _, key = heapq.heappop(heads)
            waiting = next(iter(self._lanes[key].values()))
            holds = find_holds(waiting.ticket, waiting.scopes, self._pauses, blocked, now, self.budget)
            if holds:
                outcome, hold = verdict(holds, self._scopes, now, waiting.deadline)
                if outcome == "wait":
                    for h in holds:
                        blocked.setdefault(h.scope, h.limit)
                    wake = earliest(wake, wake_for(holds, waiting.deadline))
                    continue
                bucket = self._rejected if outcome == "reject" else self._expired
                bucket.append((waiting.ticket, hold.limit))
            else:
                self._admit(waiting.ticket, waiting.scopes, now)
                self._admitted.append(waiting.ticket)
                self._waited[waiting.ticket.request_id] = now - waiting.since
            del self._queue[waiting.ticket.request_id]
            if self._dequeue(waiting):
                heapq.heappush(heads, (next(iter(self._lanes[key].values())).seq, key))
        self._blocked, self._wake_at, self._dirty = blocked, wake, False

    def _dequeue(self, waiting: _Waiting) -> bool:
        """Take a call out of its lane; True when the lane still has calls waiting."""
        key = waiting.ticket.scope_keys
        lane = self._lanes[key]
        del lane[waiting.ticket.request_id]
        if not lane:
            del self._lanes[key]
        return bool(lane)

    def _admit(self, ticket: Ticket, scopes: tuple[Scope, ...], now: float) -> None:
        for scope in scopes:
            if self.budget is not None:
                self.budget.take(scope.key, ticket.request_id, scope.limits, ticket.tokens)
            scope.in_flight += 1
            if scope.window is not None:
                scope.window.add(ticket.request_id, ticket.tokens, now)
        self._in_flight[ticket.request_id] = scopes
