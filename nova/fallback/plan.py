"""The per-call fallback state machine: `FallbackPlan` and the `Try` / `GiveUp` steps it returns.

The rules it applies are listed in the `nova.fallback` package docstring.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from nova import models
from nova.circuit import CircuitBoard, CircuitBreaker, health_verdict
from nova.errors import (
    AllTargetsFailedError,
    AuthenticationError,
    CancelledError,
    CircuitOpenError,
    ContentFilterError,
    ContextLengthExceededError,
    DriverUnavailableError,
    InvalidInputError,
    InvalidRequestError,
    NotFoundError,
    NovaError,
    PermissionDeniedError,
    PluginError,
    QuotaExhaustedError,
    RequestTimeoutError,
)
from nova.fallback.settings import FallbackSettings, backoff_delay
from nova.models import Target
from nova.types import Attempt, Response, Usage

__all__ = ["FallbackPlan", "GiveUp", "Price", "Step", "Try"]

_SHARED_RNG = random.Random()

# (configured driver name, model, usage) -> USD, None when unpriced; see nova.costs.pricer.
Price = Callable[[str, str, Usage], float | None]

# Errors about the call itself: retrying or another target cannot fix them.
_CALLER_ERRORS = (
    AuthenticationError,
    PermissionDeniedError,
    NotFoundError,
    InvalidRequestError,
    ContentFilterError,
    InvalidInputError,
    PluginError,
    CancelledError,
)


@dataclass(frozen=True, slots=True)
class Try:
    """Wait `delay_s`, then call `target`, with at most `timeout_s` for the attempt."""

    target: Target
    delay_s: float = 0.0
    attempt: int = 1  # 1-based position in the call's attempts (skips included)
    timeout_s: float | None = None
    reason: Literal["first", "retry", "next_target"] = "first"


@dataclass(frozen=True, slots=True)
class GiveUp:
    """The call is over: answer the caller with `error`."""

    error: NovaError


Step = Try | GiveUp


class FallbackPlan:
    """The fallback state machine of one call; see the module docstring for the rules."""

    def __init__(
        self,
        targets: Sequence[Target | str],
        settings: FallbackSettings | None = None,
        board: CircuitBoard | None = None,
        *,
        context_window: Callable[[Target], int | None] = models.context_window,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        deadline: float | None = None,
        price: Price | None = None,
    ) -> None:
        self._targets = list(dict.fromkeys(Target.parse(t) for t in targets))
        if not self._targets:
            raise InvalidInputError("a fallback plan needs at least one target", field="targets")
        self.settings = settings or FallbackSettings()
        self._retry = self.settings.retry
        self._board = board if board is not None else CircuitBoard(self.settings.circuit, clock)
        self._use_circuit = self.settings.circuit.enabled
        self._window = context_window
        self._price = price
        self._rng = rng or _SHARED_RNG  # one per plan would cost ~2.5 KB and a seeding each
        self._clock = clock
        total = self._retry.total_timeout_s
        self.deadline = deadline if deadline is not None else (clock() + total if total else None)
        self._index = -1
        self._on_target = 0  # attempts run on the current target
        self._current: Target | None = None  # the target of the Try handed out, not yet reported
        self._probe: CircuitBreaker | None = None  # a breaker whose allow() slot this plan holds
        self._attempts: list[Attempt] = []
        self._errors: list[NovaError] = []
        self._too_small: list[Target] = []  # skipped: context window too small
        self._done = False

    @property
    def targets(self) -> list[Target]:
        return list(self._targets)

    @property
    def attempts(self) -> list[Attempt]:
        return list(self._attempts)

    @property
    def errors(self) -> list[NovaError]:
        return list(self._errors)

    @property
    def done(self) -> bool:
        return self._done

    def start(self) -> Step:
        if self._index != -1 or self._done:
            raise RuntimeError("FallbackPlan.start() was already called")
        return self._next_target("first")

    def on_success(self, response: Response, latency_s: float) -> Response:
        """Record the successful attempt; the response comes back with `attempts` filled."""
        target = self._take_current()
        model = target.model or response.model
        self._attempts.append(
            Attempt(
                driver=target.driver,
                model=model,
                ok=True,
                latency_s=latency_s,
                usage=response.usage,
                cost_usd=self._cost(target.driver, response.model or model, response.usage),
            )
        )
        if self._use_circuit:
            self._board.breaker(target).record_success()
        self._probe, self._done = None, True
        return response.model_copy(update={"attempts": tuple(self._attempts)})

    def on_failure(
        self,
        error: NovaError,
        latency_s: float,
        usage: Usage | None = None,
        *,
        after_first_chunk: bool = False,
    ) -> Step:
        """Record the failed attempt and say what to do next."""
        target = self._take_current()
        self._record(target, error, latency_s, usage)
        if self._use_circuit:
            breaker = self._board.breaker(target)
            verdict = health_verdict(error)
            if verdict == "failure":
                breaker.record_failure(error.retry_after, error=error)
            elif verdict == "success":  # the service answered, about the caller's request
                breaker.record_success()
            elif self._probe is breaker:
                breaker.release()  # the probe said nothing about health: let another one go
        self._probe = None
        if after_first_chunk:  # the caller has seen part of an answer: a fallback would splice two
            return self._give_up(error)
        if isinstance(error, ContextLengthExceededError):
            return self._next_target("next_target", larger_than=self._window(target))
        if isinstance(error, _CALLER_ERRORS):
            return self._give_up(error)
        if isinstance(error, QuotaExhaustedError | DriverUnavailableError) or not error.retryable:
            # A driver that died mid-call may have run it, and a request that killed its driver
            # would kill the restarted one too: never the same target again (the caller may retry).
            return self._next_target("next_target")
        if self._on_target >= self._retry.max_attempts_per_target:
            return self._next_target("next_target")
        retry_after = error.retry_after
        if retry_after is not None and retry_after > self._retry.retry_after_cap_s:
            return self._next_target("next_target")
        if retry_after is not None and retry_after > 0:
            delay = retry_after
        else:
            delay = backoff_delay(self._on_target - 1, self._retry, self._rng)
        if self.deadline is not None and self._clock() + delay >= self.deadline:
            # No time to wait here; another target may still answer in time.
            return self._next_target("next_target", out_of_time=True)
        if not self._admit(target):
            return self._next_target("next_target")
        self._on_target += 1
        return self._try(target, delay, "retry")

    def abandon(self) -> None:
        """The call ended elsewhere (cancelled, caller gone): free any probe slot this plan holds."""
        if self._probe is not None:
            self._probe.release()
        self._probe, self._current, self._done = None, None, True

    # -- internals

    def _next_target(
        self,
        reason: Literal["first", "next_target"],
        larger_than: int | None = None,
        out_of_time: bool = False,
    ) -> Step:
        while self._index + 1 < len(self._targets):
            if self.deadline is not None and self._clock() >= self.deadline:
                return self._give_up(self._timeout())
            self._index += 1
            target = self._targets[self._index]
            if larger_than is not None:
                window = self._window(target)
                if window is not None and window <= larger_than:
                    self._too_small.append(target)
                    continue  # would overflow the same way; unknown windows get their chance
            if not self._admit(target):
                continue
            self._on_target = 1
            return self._try(target, 0.0, reason)
        if out_of_time or self.deadline is not None and self._clock() >= self.deadline:
            return self._give_up(self._timeout())
        return self._give_up(self._exhausted())

    def _admit(self, target: Target) -> bool:
        """Ask the target's breaker; an open circuit is recorded as a skipped attempt."""
        if not self._use_circuit:
            return True
        breaker = self._board.breaker(target)
        if breaker.allow():
            self._probe = breaker if breaker.state == "half_open" else None
            return True
        last = breaker.last_error
        error = CircuitOpenError(
            f"circuit open: {breaker.failures} of the last {breaker.calls} calls failed"
            + (f"; last failure: {last}" if last else "")
            + "; target skipped",
            driver=target.driver,
            model=target.model,
            retry_after=None if breaker.open_until is None else max(0.0, breaker.open_until - self._clock()),
            failures=breaker.failures,
            calls=breaker.calls,
            last_error=last,
        )
        self._record(target, error, 0.0, None)
        return False

    def _try(self, target: Target, delay: float, reason: Literal["first", "retry", "next_target"]) -> Try:
        self._current = target
        timeout = self._retry.attempt_timeout_s
        if self.deadline is not None:
            left = self.deadline - (self._clock() + delay)
            timeout = left if timeout is None else min(timeout, left)
        return Try(
            target=target, delay_s=delay, attempt=len(self._attempts) + 1, timeout_s=timeout, reason=reason
        )

    def _take_current(self) -> Target:
        if self._current is None or self._done:
            raise RuntimeError("no attempt of this FallbackPlan is waiting for an outcome")
        target, self._current = self._current, None
        return target

    def _record(self, target: Target, error: NovaError, latency_s: float, usage: Usage | None) -> None:
        self._errors.append(error)
        usage = usage or Usage()
        model = target.model or error.model or ""
        self._attempts.append(
            Attempt(
                driver=target.driver,
                model=model,
                ok=False,
                error_type=type(error).__name__,
                error_message=error.message,
                latency_s=latency_s,
                usage=usage,
                # Nothing used, nothing billed; a failed stream's partial usage is priced.
                cost_usd=self._cost(target.driver, model, usage) if _used(usage) else 0.0,
            )
        )

    def _cost(self, driver: str, model: str, usage: Usage) -> float | None:
        if self._price is None or not model:
            return None
        return self._price(driver, model, usage)

    def _give_up(self, error: NovaError) -> GiveUp:
        self._done, self._current = True, None
        return GiveUp(error)

    def _timeout(self) -> RequestTimeoutError:
        last = self._errors[-1] if self._errors else None
        return RequestTimeoutError(
            f"the call's deadline passed after {len(self._attempts)} attempt(s)"
            + (f"; last error: {type(last).__name__}: {last.message}" if last else ""),
            driver=last.driver if last else None,
            model=last.model if last else None,
            retryable=False,
            errors=list(self._errors),
        )

    def _exhausted(self) -> NovaError:
        if len(self._targets) == 1 and self._errors:
            # A circuit this call's own failure opened must not hide that failure.
            real = [e for e in self._errors if not isinstance(e, CircuitOpenError)]
            return (real or self._errors)[-1]
        return AllTargetsFailedError(self._summary(), errors=list(self._errors), attempts=len(self._attempts))

    def _summary(self) -> str:
        """E.g. "all 2 targets failed: openai/gpt-4o: ServerError x2, RateLimitError (last: …); …", or
        "2 targets: 1 failed, 1 skipped (circuit open): …" when some were never tried."""
        kinds: dict[str, list[list[Any]]] = {}  # target -> [[error class, count], ...] in order
        last: dict[str, str] = {}
        tried: set[str] = set()
        for attempt, error in zip(self._attempts, self._errors, strict=True):
            key = str(Target(attempt.driver, attempt.model))
            runs = kinds.setdefault(key, [])
            name = type(error).__name__
            if runs and runs[-1][0] == name:
                runs[-1][1] += 1
            else:
                runs.append([name, 1])
            last[key] = error.message
            if not isinstance(error, CircuitOpenError):
                tried.add(key)
        parts = [
            ", ".join(f"{name}{f' x{n}' if n > 1 else ''}" for name, n in runs)
            + f" (last: {last[key][:120]})"
            for key, runs in kinds.items()
        ]
        text = "; ".join(f"{key}: {part}" for key, part in zip(kinds, parts, strict=True))
        reasons = {
            "circuit open": len(kinds) - len(tried),
            "context window too small": len(dict.fromkeys(self._too_small)),
        }
        skipped = sum(reasons.values())
        total = len(self._targets)
        if not skipped:
            return f"all {total} targets failed: {text}"
        named = [(reason, n) for reason, n in reasons.items() if n]
        why = named[0][0] if len(named) == 1 else ", ".join(f"{n} {reason}" for reason, n in named)
        head = f"{total} targets: {len(tried)} failed, {skipped} skipped ({why})"
        return f"{head}: {text}" if text else head


def _used(usage: Usage) -> bool:
    return bool(usage.input_tokens or usage.output_tokens or usage.total_tokens)
