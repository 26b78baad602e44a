"""Fallback policy: which target to try next, after how long, and when to give up (one call).

A `FallbackPlan` is the per-call state machine the FallbackActor drives: `start()` gives the first
`Try`; each outcome goes to `on_failure()` or `on_success()`; the next `Step` is a `Try` (wait
`delay_s`, then call `target`) or a `GiveUp` (answer the caller with `error`). The plan never sleeps
and never does I/O; time comes from an injected clock, randomness from an injected `Random`.

Rules, in the order they are checked after a failure:

1. A stream that already sent a chunk never falls back: give up with the original error.
2. ContextLengthExceededError: the next target whose context window is larger than the failed
   one's (unknown windows are tried; if the failed window is unknown, any next target).
3. Caller errors (auth, permission, not found, invalid request, content filter, invalid input,
   plugin, cancelled) are never retried and never moved on: another target would fail the same
   way or hide a configuration error. Give up with the original error.
4. QuotaExhaustedError: the next target at once.
5. Retryable (`error.retryable`, which already reflects `x-should-retry`): the same target again,
   up to `max_attempts_per_target`, after Retry-After (if at most `retry_after_cap_s`) or jittered
   exponential backoff. A Retry-After above the cap, or a wait that would pass the deadline, moves
   to the next target instead of waiting.
6. Anything else: the next target.

A target whose circuit is open is skipped and recorded as a `CircuitOpenError` attempt (its
message and details give the window's failures and the last failure). With no target left: a
plan of one target gives up with that target's last real error as it was (a caller of one driver
wants the real error, also when its own failure has just opened the circuit), a plan of several
with `AllTargetsFailedError` carrying every attempt's error; its message counts the targets tried
apart from those skipped ("3 targets: 1 failed, 2 skipped (circuit open): …"). A deadline (the
call's `timeout=`, else `total_timeout_s`) that leaves no room for the next try gives up with
`RequestTimeoutError`.

Every `Attempt` names the model it used (a target without one has its driver's default, from
`resolve_targets(..., default_models)`) and, when the plan has a `price` function, its
`cost_usd`, priced by the driver that made that attempt.
"""

from __future__ import annotations

from nova.circuit import (
    CircuitBoard,
    CircuitBreaker,
    CircuitSettings,
    Transition,
    health_verdict,
    is_health_failure,
)
from nova.fallback.plan import FallbackPlan, GiveUp, Price, Step, Try
from nova.fallback.settings import (
    FallbackSettings,
    RetrySettings,
    backoff_delay,
    default_models,
    resolve_targets,
)
from nova.models import Target

__all__ = [
    "CircuitBoard",
    "CircuitBreaker",
    "CircuitSettings",
    "FallbackPlan",
    "FallbackSettings",
    "GiveUp",
    "Price",
    "RetrySettings",
    "Step",
    "Target",
    "Transition",
    "Try",
    "backoff_delay",
    "default_models",
    "health_verdict",
    "is_health_failure",
    "resolve_targets",
]
