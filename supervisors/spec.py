"""OTP supervision in plain objects: child specs, strategies and restart intensity.

In OTP's words: a child is `PERMANENT` (always restarted), `TRANSIENT` (restarted only after an
abnormal exit) or `TEMPORARY` (never restarted). On a child's exit the strategy decides who
restarts: `ONE_FOR_ONE` that child, `REST_FOR_ONE` that child and the ones started after it,
`ONE_FOR_ALL` every child. More than `max_restarts` restarts within `max_seconds` and the
supervisor gives up and exits, escalating to its own supervisor. Restarts back off
exponentially (`backoff_initial_s` doubling to `backoff_max_s`) so a crash loop does not spin.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

__all__ = ["ChildSpec", "Escalate", "Ignore", "Restart", "RestartChildren", "Strategy", "SupervisorPolicy"]


class Restart(Enum):
    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"


class Strategy(Enum):
    ONE_FOR_ONE = "one_for_one"
    REST_FOR_ONE = "rest_for_one"
    ONE_FOR_ALL = "one_for_all"


@dataclass(frozen=True)
class ChildSpec:
    """`actor` is the actor class; `init` the message that configures a fresh instance."""

    name: str
    actor: type
    init: Any = None
    restart: Restart = Restart.PERMANENT


@dataclass(frozen=True)
class RestartChildren:
    names: tuple[str, ...]  # in start order
    delay_s: float


@dataclass(frozen=True)
class Escalate:
    reason: str


@dataclass(frozen=True)
class Ignore:
    pass


Decision = RestartChildren | Escalate | Ignore


@dataclass
class SupervisorPolicy:
    children: list[ChildSpec]
    strategy: Strategy = Strategy.ONE_FOR_ONE
    max_restarts: int = 3
    max_seconds: float = 5.0
    backoff_initial_s: float = 0.01
    backoff_max_s: float = 1.0
    clock: Callable[[], float] = time.monotonic
    _restarts: deque[float] = field(default_factory=deque)

    def on_exit(self, name: str, abnormal: bool) -> Decision:
        """What to do when child `name` exits (`abnormal`: not asked to stop)."""
        spec = next((c for c in self.children if c.name == name), None)
        if spec is None or spec.restart is Restart.TEMPORARY:
            return Ignore()
        if spec.restart is Restart.TRANSIENT and not abnormal:
            return Ignore()
        now = self.clock()
        while self._restarts and now - self._restarts[0] > self.max_seconds:
            self._restarts.popleft()
        if len(self._restarts) >= self.max_restarts:
            return Escalate(f"{len(self._restarts) + 1} restarts of {name!r} within {self.max_seconds}s")
        self._restarts.append(now)
        delay = min(self.backoff_initial_s * 2 ** (len(self._restarts) - 1), self.backoff_max_s)
        return RestartChildren(self._affected(name), delay)

    def _affected(self, name: str) -> tuple[str, ...]:
        names = [c.name for c in self.children]
        if self.strategy is Strategy.ONE_FOR_ONE:
            return (name,)
        if self.strategy is Strategy.REST_FOR_ONE:
            return tuple(names[names.index(name) :])
        return tuple(names)
