"""How long a service's own answer says to stop sending: from Retry-After or rate-limit headers."""

from __future__ import annotations

from collections.abc import Mapping

from nova.errors import NovaError, QuotaExhaustedError, RateLimitError

__all__ = ["pause_from_error", "pause_from_snapshot", "pauses_target"]

# The resources a rate-limit header snapshot may report (nova.drivers._headers.parse_rate_limits).
_RESOURCES = ("requests", "tokens", "input_tokens", "output_tokens")


def pause_from_snapshot(rate_limits: Mapping[str, float]) -> float | None:
    """Seconds until the latest reset among the resources whose `*_remaining` is at zero, or None.

    `{"tokens_remaining": 0, "tokens_reset_s": 12.5, "requests_remaining": 40}` -> 12.5."""
    pauses = [
        float(rate_limits[f"{r}_reset_s"])
        for r in _RESOURCES
        if rate_limits.get(f"{r}_remaining", 1) <= 0 and f"{r}_reset_s" in rate_limits
    ]
    longest = max(pauses, default=0.0)
    return longest if longest > 0 else None


def pause_from_error(error: NovaError) -> float | None:
    """Seconds the failed call's target should rest: `retry_after`, else the header snapshot.

    None when the error says nothing, and for an exhausted quota (waiting does not refill a
    billing quota; fallback skips that target instead)."""
    if isinstance(error, QuotaExhaustedError):
        return None
    if error.retry_after is not None and error.retry_after > 0:
        return float(error.retry_after)
    return pause_from_snapshot(error.rate_limits)


def pauses_target(error: NovaError) -> bool:
    """True for an error that should pause its target in the rate limiter: the service's own
    rate-limit error (429), on any attempt of a call, not only its last. An exhausted quota does
    not: waiting does not refill it (fallback skips that target instead)."""
    return isinstance(error, RateLimitError) and not isinstance(error, QuotaExhaustedError)
