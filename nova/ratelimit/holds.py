"""Why a call cannot go now: the holds its scopes and pauses put on it, and when they end."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from nova.ratelimit.decisions import Ticket
from nova.ratelimit.settings import Limits
from nova.ratelimit.window import EPSILON, SlidingWindow

__all__ = ["Budget", "Hold", "Scope", "earliest", "find_holds", "retry_after", "verdict", "wake_for"]


@dataclass(slots=True)
class Scope:
    """The live state of one configured scope ("driver" or "driver/model")."""

    key: str
    limits: Limits
    window: SlidingWindow | None  # only where a per-minute limit needs 60 s of memory
    in_flight: int = 0


class Budget(Protocol):
    """A budget shared with other nodes (`nova.ratelimit.lease.LeaseHolder`)."""

    def lack(self, scope: str, limits: Limits, tokens: int) -> str | None: ...

    def take(self, scope: str, request_id: str, limits: Limits, tokens: int) -> None: ...

    def settle(self, request_id: str, actual_tokens: int | None) -> None: ...


@dataclass(slots=True)
class Hold:
    """One reason a ticket cannot go now."""

    scope: str
    limit: str
    free_at: float | None  # when time alone ends it; None: an event must (a release, a cancel)
    own: bool = True  # False: an earlier ticket holds this scope
    certain: bool = False  # it cannot end earlier than free_at (pauses, request counts): fail fast
    refuse: bool = False  # no waiting can end it: answer at once


def find_holds(
    ticket: Ticket,
    scopes: tuple[Scope, ...],
    pauses: Mapping[str, tuple[float, str]],
    blocked: Mapping[str, str],
    now: float,
    budget: Budget | None = None,
) -> list[Hold]:
    """Every hold on `ticket` now: pauses first, then each scope's limits and its share of a
    cluster's budget, then earlier tickets."""
    holds: list[Hold] = []
    for key in ticket.scope_keys:
        pause = pauses.get(key)
        if pause is not None and pause[0] > now + EPSILON:
            holds.append(Hold(key, "paused", pause[0], certain=True))
    for scope in scopes:
        limits, window = scope.limits, scope.window
        if limits.max_concurrent is not None and scope.in_flight >= limits.max_concurrent:
            holds.append(Hold(scope.key, "max_concurrent", None))
        if window is None:
            continue
        window.prune(now)
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        if rpm is not None and len(window) >= rpm:
            free_at = window.when_count_at_most(rpm - 1)
            holds.append(Hold(scope.key, "requests_per_minute", free_at, certain=True))
        if tpm is not None and window.tokens + ticket.tokens > tpm:
            # Not certain: a refund from a call in flight may free the tokens sooner.
            free_at = window.when_tokens_at_most(tpm - ticket.tokens)
            holds.append(Hold(scope.key, "tokens_per_minute", free_at))
        if budget is not None:
            lacking = budget.lack(scope.key, limits, ticket.tokens)
            if lacking == "refuse":
                holds.append(Hold(scope.key, "cluster_lease", None, refuse=True))
            elif lacking is not None:  # a grant from the leader ends it
                holds.append(Hold(scope.key, lacking, None))
    held = {h.scope for h in holds}
    for key in ticket.scope_keys:
        if key in blocked and key not in held:
            holds.append(Hold(key, blocked[key], None, own=False))
    return holds


def verdict(
    holds: list[Hold], scopes: Mapping[str, Scope], now: float, deadline: float
) -> tuple[Literal["reject", "expire", "wait"], Hold]:
    """What to do with a held ticket, and the hold to name in the answer."""
    for h in holds:
        if h.refuse:
            return "reject", h
    for h in holds:
        scope = scopes.get(h.scope)
        if h.own and scope is not None and scope.limits.on_limit == "reject":
            return "reject", h
    certain = [h for h in holds if h.certain and h.free_at is not None]
    latest = max(certain, key=lambda h: h.free_at or 0.0, default=None)
    if latest is not None and (latest.free_at or 0.0) > deadline + EPSILON:
        return "expire", latest  # it will not be admitted in time: say so now, not at the deadline
    if now + EPSILON >= deadline:
        return "expire", holds[0]
    return "wait", holds[0]


def wake_for(holds: list[Hold], deadline: float) -> float:
    """When a waiting ticket's holds all end by time alone (or its deadline, if sooner)."""
    if all(h.own and h.free_at is not None for h in holds):
        return min(deadline, max(h.free_at or 0.0 for h in holds))
    return deadline


def retry_after(holds: list[Hold], now: float) -> float | None:
    """Seconds until the ticket's own holds all end by time alone; None if an event must end one."""
    own = [h for h in holds if h.own]
    if any(h.refuse for h in own):
        return None
    if not own or any(h.free_at is None for h in own):
        return None
    return max((h.free_at or now) - now for h in own)


def earliest(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else min(a, b)
