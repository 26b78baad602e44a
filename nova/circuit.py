"""Circuit breakers: stop sending calls to a target that fails too often, then probe it back.

Each breaker keeps the outcomes of the target's last `window_size` calls (a count-based sliding
window, as resilience4j does) and opens on the failure *rate*, not on a run of failures:

    closed ──(≥ minimum_calls in the window and failure rate ≥ failure_rate_threshold %,
              checked after every counted outcome)──▶ open
    open ──(cooldown_s, or a longer Retry-After, elapsed; seen by allow())──▶ half_open
    half_open ──(a probe gets an answer)──▶ closed (with an empty window)
    half_open ──(a probe fails)──▶ open (a fresh cooldown)

Every call's outcome has one of three verdicts (`health_verdict`):

- "failure": the target is unhealthy — transport errors and timeouts, 5xx / overloaded, rate limits
  and exhausted quota, malformed answers and broken streams;
- "success": the target answered — an answer, or an error about the caller's request (invalid
  request, auth, not found, content filter), which still proves the service is up;
- "neutral": the call says nothing about the target and is not counted at all — a dead driver
  actor, this process's own overload (its connection pool was full), input that could not be
  encoded, a cancelled call, Nova's own limiter, a plugin, a skipped open circuit.

Breakers are plain objects driven by an injected clock; the owner (the FallbackActor) drains
`transitions` after each call into circuit.opened / half_open / closed events.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nova.errors import (
    APIError,
    NovaError,
    RateLimitError,
    ResponseError,
    ServerError,
    TransportError,
)
from nova.models import Target

__all__ = [
    "CircuitBoard",
    "CircuitBreaker",
    "CircuitSettings",
    "CircuitState",
    "HealthVerdict",
    "Transition",
    "health_verdict",
    "is_health_failure",
]

CircuitState = Literal["closed", "open", "half_open"]
HealthVerdict = Literal["failure", "success", "neutral"]
Clock = Callable[[], float]

_REMOVED_KEYS = {
    "failure_threshold": (
        "'failure_threshold' was removed: circuits now open on a failure rate over the last calls."
        " Use 'window_size' (calls kept, default 20), 'minimum_calls' (calls needed before a"
        " decision, default 10) and 'failure_rate_threshold' (percent, default 50)"
    ),
}


class CircuitSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    window_size: int = Field(default=20, ge=1)  # the last N calls whose outcomes are kept
    minimum_calls: int = Field(default=10, ge=1)  # no decision before this many calls in the window
    failure_rate_threshold: float = Field(default=50.0, gt=0, le=100)  # percent of the window
    cooldown_s: float = Field(default=30.0, ge=0)  # open this long (or the Retry-After) before a probe
    half_open_max_probes: int = Field(default=1, ge=1)
    # A probe whose outcome never arrives (the call was abandoned) frees its slot after this long,
    # so a lost probe cannot keep a target half-open for ever.
    probe_timeout_s: float = Field(default=120.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _no_removed_keys(cls, value: Any) -> Any:
        if isinstance(value, dict):
            removed = [_REMOVED_KEYS[k] for k in value if k in _REMOVED_KEYS]
            if removed:
                raise ValueError("; ".join(removed))
        return value

    @model_validator(mode="after")
    def _window_holds_minimum(self) -> CircuitSettings:
        if self.minimum_calls > self.window_size:
            raise ValueError(
                f"minimum_calls ({self.minimum_calls}) cannot exceed window_size ({self.window_size}):"
                " the window would never hold enough calls to decide"
            )
        return self


class Transition(BaseModel):
    """One change of state, for the circuit.* events."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    target: Target | None
    old: CircuitState
    new: CircuitState
    at: float  # the breaker's clock
    failures: int  # health failures in the window when it changed
    calls: int = 0  # calls in the window when it changed
    open_until: float | None = None  # when new == "open"
    last_error: str | None = None  # "ErrorClass: message" of the failure that opened it


_FAILURES = (TransportError, ServerError, RateLimitError, ResponseError)


def health_verdict(error: BaseException) -> HealthVerdict:
    """What an error says about the target's health; see the module docstring."""
    if isinstance(error, _FAILURES):
        return "failure"
    if isinstance(error, APIError):
        return "success"  # the service answered, about the caller's request
    if isinstance(error, NovaError) or isinstance(error, asyncio.CancelledError):
        return "neutral"  # Nova's own errors: the target was never asked, or its answer is unknown
    if isinstance(error, TimeoutError | ConnectionError):
        return "failure"
    return "neutral"


def is_health_failure(error: BaseException) -> bool:
    """Whether an error says the target is unhealthy (and so counts against its breaker)."""
    return health_verdict(error) == "failure"


class CircuitBreaker:
    """One target's breaker. Not thread-safe: it belongs to one actor."""

    def __init__(
        self,
        settings: CircuitSettings | None = None,
        clock: Clock = time.monotonic,
        *,
        target: Target | None = None,
    ) -> None:
        self.settings = settings or CircuitSettings()
        self.target = target
        self.transitions: list[Transition] = []
        self._clock = clock
        self._state: CircuitState = "closed"
        self._window: deque[bool] = deque(maxlen=self.settings.window_size)  # True: a failure
        self._open_until = 0.0
        self._probes: list[float] = []  # start times of the probes in flight
        self._last_error: str | None = None

    @property
    def state(self) -> CircuitState:
        """The current state; an open circuit whose cooldown is over reads as half-open."""
        if self._state == "open" and self._clock() >= self._open_until:
            self._move("half_open")
        return self._state

    @property
    def failures(self) -> int:
        """Health failures among the calls in the window."""
        return sum(self._window)

    @property
    def calls(self) -> int:
        """Calls in the window (at most `window_size`)."""
        return len(self._window)

    @property
    def failure_rate(self) -> float | None:
        """Failures in the window, in percent; None before `minimum_calls` calls."""
        if len(self._window) < self.settings.minimum_calls:
            return None
        return 100.0 * self.failures / len(self._window)

    @property
    def last_error(self) -> str | None:
        """ "ErrorClass: message" of the last health failure recorded, if any."""
        return self._last_error

    @property
    def open_until(self) -> float | None:
        return self._open_until if self._state == "open" else None

    def allow(self) -> bool:
        """May a call go to this target now? In half-open this takes a probe slot."""
        if not self.settings.enabled:
            return True
        state = self.state
        if state == "closed":
            return True
        if state == "open":
            return False
        now = self._clock()
        self._probes = [t for t in self._probes if now - t < self.settings.probe_timeout_s]
        if len(self._probes) >= self.settings.half_open_max_probes:
            return False
        self._probes.append(now)
        return True

    def release(self) -> None:
        """Give back a slot taken by `allow()` whose call never ran or had no verdict on health."""
        if self._probes:
            self._probes.pop(0)

    def record_success(self) -> None:
        """The target answered. Closes a half-open circuit; a late answer while open is ignored
        (the call started before the circuit opened and says nothing about now)."""
        if not self.settings.enabled:
            return
        state = self.state
        if state == "closed":
            self._window.append(False)
            self._open_if_over_threshold(self.settings.cooldown_s)  # as resilience4j: every outcome
        elif state == "half_open":
            self._probes.clear()
            self._window.clear()
            self._move("closed")

    def record_failure(
        self, retry_after_s: float | None = None, *, error: BaseException | None = None
    ) -> None:
        """Count a health failure; a Retry-After longer than the cooldown keeps the circuit open longer."""
        if not self.settings.enabled:
            return
        if error is not None:
            message = error.message if isinstance(error, NovaError) else str(error)
            self._last_error = f"{type(error).__name__}: {message[:200]}" if message else type(error).__name__
        now = self._clock()
        wait = max(self.settings.cooldown_s, retry_after_s or 0.0)
        state = self.state
        if state == "half_open":
            self._probes.clear()
            self._open(now + wait)
        elif state == "closed":
            self._window.append(True)
            self._open_if_over_threshold(wait)
        elif now + wait > self._open_until and retry_after_s:
            self._open_until = now + wait  # a late failure's Retry-After still lengthens the pause

    def drain(self) -> list[Transition]:
        """The transitions since the last drain, oldest first."""
        out, self.transitions = self.transitions, []
        return out

    def _open_if_over_threshold(self, wait: float) -> None:
        rate = self.failure_rate
        if rate is not None and rate >= self.settings.failure_rate_threshold:
            self._open(self._clock() + wait)

    def _open(self, until: float) -> None:
        self._open_until = until
        self._move("open")

    def _move(self, new: CircuitState) -> None:
        old, self._state = self._state, new
        self.transitions.append(
            Transition(
                target=self.target,
                old=old,
                new=new,
                at=self._clock(),
                failures=self.failures,
                calls=self.calls,
                open_until=self._open_until if new == "open" else None,
                last_error=self._last_error if new == "open" else None,
            )
        )

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker(target={self.target!s}, state={self._state!r},"
            f" failures={self.failures}/{self.calls})"
        )


class CircuitBoard:
    """The breakers of every target, created on first use with the same settings and clock."""

    def __init__(
        self,
        settings: CircuitSettings | None = None,
        clock: Clock = time.monotonic,
        *,
        settings_for: Callable[[Target], CircuitSettings | None] | None = None,
    ) -> None:
        self.settings = settings or CircuitSettings()
        self._clock = clock
        self._settings_for = settings_for  # per driver / model settings from config, if any
        self._breakers: dict[Target, CircuitBreaker] = {}

    def breaker(self, target: Target) -> CircuitBreaker:
        breaker = self._breakers.get(target)
        if breaker is None:
            settings = (self._settings_for(target) if self._settings_for else None) or self.settings
            breaker = self._breakers[target] = CircuitBreaker(settings, self._clock, target=target)
        return breaker

    __getitem__ = breaker

    def __iter__(self) -> Iterator[CircuitBreaker]:
        return iter(list(self._breakers.values()))

    def __len__(self) -> int:
        return len(self._breakers)

    def states(self) -> dict[Target, CircuitState]:
        return {target: b.state for target, b in self._breakers.items()}

    def drain_transitions(self) -> list[Transition]:
        """Every breaker's transitions since the last drain, in the order they happened."""
        out = [t for b in self._breakers.values() for t in b.drain()]
        return sorted(out, key=lambda t: t.at)
