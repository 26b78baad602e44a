"""The values the rate limiter takes and gives: tickets, decisions, poll results, stats."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "LIMIT_NAMES",
    "Admitted",
    "Decision",
    "PollResult",
    "Queued",
    "Rejected",
    "ScopeStats",
    "Ticket",
    "Transition",
]

# What a `limit` string can be: a configured limit, the service's own ("paused"), or a cluster's
# shared budget when no lease can be had ("cluster_lease": the leader is lost, policy "refuse").
LIMIT_NAMES = ("cluster_lease", "max_concurrent", "paused", "requests_per_minute", "tokens_per_minute")


@dataclass(frozen=True, slots=True)
class Ticket:
    """One call asking for admission; `tokens` is its estimate (see `estimate_tokens`)."""

    request_id: str
    driver: str
    model: str
    tokens: int

    @property
    def scope_keys(self) -> tuple[str, ...]:
        """The scopes that apply: the driver's, then the model's."""
        return (self.driver, f"{self.driver}/{self.model}") if self.model else (self.driver,)


@dataclass(frozen=True, slots=True)
class Admitted:
    """Go ahead now; call `release` when the call ends."""


@dataclass(frozen=True, slots=True)
class Queued:
    """Waiting: a later `poll` admits or expires it. `limit`/`scope` say what it waits for."""

    limit: str = ""
    scope: str = ""


@dataclass(frozen=True, slots=True)
class Rejected:
    """Refused: answer with RateLimitExceededError naming `limit`. `retry_after_s` is None when
    unknown or never (a request larger than tokens_per_minute can never fit)."""

    limit: str
    retry_after_s: float | None = None
    scope: str = ""


Decision = Admitted | Queued | Rejected


@dataclass(frozen=True, slots=True)
class Transition:
    """A target was paused by the service's own limit, or takes calls again."""

    kind: Literal["paused", "resumed"]
    target: str  # "driver" or "driver/model"
    until_s: float | None = None  # paused: seconds from the transition until the resume
    reason: str = ""


@dataclass(frozen=True, slots=True)
class PollResult:
    """What changed since the last poll, and when to poll again.

    `expired` waited past max_wait_s (or can no longer be admitted in time); `rejected` were queued
    and then met a scope set to reject. Both carry the limit name for RateLimitExceededError.
    `next_wakeup_s` is a delay from now; None: nothing is waiting and no pause is running."""

    admitted: list[Ticket] = field(default_factory=list)
    expired: list[tuple[Ticket, str]] = field(default_factory=list)
    rejected: list[tuple[Ticket, str]] = field(default_factory=list)
    transitions: list[Transition] = field(default_factory=list)
    waited_s: dict[str, float] = field(default_factory=dict)  # request id -> seconds queued
    next_wakeup_s: float | None = None


@dataclass(frozen=True, slots=True)
class ScopeStats:
    in_flight: int = 0
    queued: int = 0
    requests_in_window: int = 0  # counted only where a per-minute limit is set
    tokens_in_window: int = 0
    paused_for_s: float = 0.0
