"""Circuit breakers: stop sending calls to a target that keeps failing, then probe it back.

    closed ──(failure_threshold consecutive failures)──▶ open
    open ──(cooldown_s, or a longer Retry-After, elapsed; seen by allow())──▶ half_open
    half_open ──(the single probe succeeds)──▶ closed
    half_open ──(the probe fails)──▶ open (a fresh cooldown)

Only failures that say the *target* is unhealthy count (`is_health_failure`): transport errors and
timeouts, 5xx / overloaded, rate limits and exhausted quota, malformed answers, a dead driver actor.
An error caused by the caller's input (invalid request, auth, content filter, a plugin) says nothing
about the target and leaves the breaker as it was.

Breakers are plain objects driven by an injected clock; the owner (the FallbackActor) drains
`transitions` after each call into circuit.opened / half_open / closed events.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Literal

from pydantic import BaseModel, ConfigDict

from nova.errors import (
    DriverUnavailableError,
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
    "Transition",
    "is_health_failure",
]

CircuitState = Literal["closed", "open", "half_open"]
Clock = Callable[[], float]


class CircuitSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    failure_threshold: int = 5  # consecutive health failures that open the circuit
    cooldown_s: float = 30.0  # open this long (or the Retry-After, if longer) before a probe
    half_open_max_probes: int = 1
    # A probe whose outcome never arrives (the call was abandoned) frees its slot after this long,
    # so a lost probe cannot keep a target half-open for ever.
    probe_timeout_s: float = 120.0


class Transition(BaseModel):
    """One change of state, for the circuit.* events."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    target: Target | None
    old: CircuitState
    new: CircuitState
    at: float  # the breaker's clock
    failures: int  # consecutive failures when it changed
    open_until: float | None = None  # when new == "open"


_HEALTH_ERRORS = (TransportError, ServerError, RateLimitError, ResponseError, DriverUnavailableError)


def is_health_failure(error: BaseException) -> bool:
    """Whether an error says the target is unhealthy (and so counts against its breaker)."""
    return isinstance(error, _HEALTH_ERRORS) or (
        isinstance(error, TimeoutError | ConnectionError) and not isinstance(error, NovaError)
    )


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
        self._failures = 0
        self._open_until = 0.0
        self._probes: list[float] = []  # start times of the probes in flight

    @property
    def state(self) -> CircuitState:
        """The current state; an open circuit whose cooldown is over reads as half-open."""
        if self._state == "open" and self._clock() >= self._open_until:
            self._move("half_open")
        return self._state

    @property
    def failures(self) -> int:
        return self._failures

    @property
    def open_until(self) -> float | None:
        return self._open_until if self._state == "open" else None

    def allow(self) -> bool:
        """May a call go to this target now? In half-open this takes the single probe slot."""
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
        self._failures = 0
        self._probes.clear()
        if self._state != "closed":
            self._move("closed")

    def record_failure(self, retry_after_s: float | None = None) -> None:
        """Count a health failure; a Retry-After longer than the cooldown keeps the circuit open longer."""
        if not self.settings.enabled:
            return
        self._failures += 1
        now = self._clock()
        wait = max(self.settings.cooldown_s, retry_after_s or 0.0)
        state = self.state
        if state == "half_open":
            self._probes.clear()
            self._open(now + wait)
        elif state == "closed" and self._failures >= self.settings.failure_threshold:
            self._open(now + wait)
        elif state == "open" and now + wait > self._open_until and retry_after_s:
            self._open_until = now + wait  # a late failure's Retry-After still lengthens the pause

    def drain(self) -> list[Transition]:
        """The transitions since the last drain, oldest first."""
        out, self.transitions = self.transitions, []
        return out

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
                failures=self._failures,
                open_until=self._open_until if new == "open" else None,
            )
        )

    def __repr__(self) -> str:
        return f"CircuitBreaker(target={self.target!s}, state={self._state!r}, failures={self._failures})"


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
