"""The last step of every call, wherever it ends: price and stamp the answer, describe the event.

A call ends in the process that answers it: a driver (success), the fallback stage (the final
error), the cache (a hit), the rate limiter (a refusal) or the router (calls it finishes itself).
Each uses these two functions, so an answer looks the same whoever gave it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from nova.costs import total_cost
from nova.errors import NovaError
from nova.types import Response, Usage

__all__ = ["Price", "failed", "succeeded"]

Price = Callable[[str, str, Usage], "float | None"]
Event = tuple[str, dict[str, Any]]


def succeeded(
    response: Response,
    *,
    request_id: str,
    driver: str,
    requested_model: str,
    started: float,
    from_cache: bool = False,
    price: Price | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[Response, Event]:
    """The answer as the caller gets it (cost, latency, the driver that answered) and its
    `request.completed` event. `started` is the `time.time()` the call was taken."""
    latency = max(0.0, time.time() - started)
    cached = from_cache or response.cached
    cost = 0.0 if cached else _cost(response, driver, requested_model, price)
    answered_by = next((a.driver for a in reversed(response.attempts) if a.ok), "")
    if not answered_by:  # a cache hit keeps the driver that answered first (a fallback target, say)
        answered_by = response.driver if cached and response.driver else driver
    response = response.model_copy(
        update={"cost_usd": cost, "latency_s": latency, "driver": answered_by, "cached": cached}
    )
    fields = {
        "request_id": request_id,
        "driver": driver,
        "model": response.model or requested_model or None,
        "duration_s": latency,
        "usage": response.usage,
        "cost_usd": cost,
        "data": {
            "cached": cached,
            "attempts": len(response.attempts),
            "finish_reason": response.finish_reason,
            "response_id": response.id,
            "response_model": response.model,
            **(extra or {}),
        },
    }
    return response, ("request.completed", fields)


def failed(error: NovaError, *, request_id: str, driver: str, model: str, started: float) -> Event:
    """The `request.failed` event of a call that ends with `error`."""
    return (
        "request.failed",
        {
            "request_id": request_id,
            "driver": driver,
            "model": model or None,
            "duration_s": max(0.0, time.time() - started),
            "error_type": type(error).__name__,
            "error_message": error.message,
        },
    )


def _cost(response: Response, driver: str, requested_model: str, price: Price | None) -> float | None:
    """The sum of the attempts' costs, each priced by the driver that made it; an answer without
    attempts (a plugin's) is priced as its own driver's."""
    if response.attempts:
        return total_cost(response.attempts)
    if price is None:
        return None
    return price(response.driver or driver, response.model or requested_model, response.usage)
