"""Rate limiting per driver and per model: requests/min, tokens/min, concurrency, service pauses.

Plain objects, no actors, no I/O: `RateLimiter` decides, the RateLimitActor waits (docs/ratelimit.md).

    limiter = RateLimiter(RateLimitSettings(limits={"openai/gpt-4o": Limits(tokens_per_minute=30_000)}))
    decision = limiter.submit(Ticket("r1", "openai", "gpt-4o", estimate_tokens(request)))
    ...                                   # Queued: poll() after next_wakeup_s admits or expires it
    limiter.release("r1", actual_tokens=response.usage.total_tokens)
"""

from nova.ratelimit.decisions import (
    LIMIT_NAMES,
    Admitted,
    Decision,
    PollResult,
    Queued,
    Rejected,
    ScopeStats,
    Ticket,
    Transition,
)
from nova.ratelimit.estimate import estimate_text_tokens, estimate_tokens
from nova.ratelimit.lease import Charged, Grant, LeaseHolder, LeaseServer, Return, Want
from nova.ratelimit.limiter import RateLimiter
from nova.ratelimit.pause import pause_from_error, pause_from_snapshot, pauses_target
from nova.ratelimit.settings import Limits, RateLimitSettings
from nova.ratelimit.window import SlidingWindow

__all__ = [
    "LIMIT_NAMES",
    "Admitted",
    "Charged",
    "Decision",
    "Grant",
    "LeaseHolder",
    "LeaseServer",
    "Limits",
    "PollResult",
    "Queued",
    "RateLimitSettings",
    "RateLimiter",
    "Rejected",
    "Return",
    "ScopeStats",
    "SlidingWindow",
    "Ticket",
    "Transition",
    "Want",
    "estimate_text_tokens",
    "estimate_tokens",
    "pause_from_error",
    "pause_from_snapshot",
    "pauses_target",
]
