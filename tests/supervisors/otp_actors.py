"""Small actors for the OTP semantics tests: they run in their own processes, so they live in a
module the actor system can import by name."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from thespian.actors import ActorExitRequest

from nova.actors.base import NovaActor
from nova.supervisors.spec import ChildSpec, Decision, Restart, SupervisorPolicy
from nova.supervisors.supervisor import Supervisor

__all__ = ["Finish", "Observed", "RecordingPolicy", "Start", "Strange", "TransientParent", "Worker"]


@dataclass(frozen=True)
class Finish:
    """Worker: your work is done, stop (a normal exit)."""


@dataclass(frozen=True)
class Start:
    """TransientParent: start one transient `Worker` named "worker"."""


@dataclass(frozen=True)
class Strange:
    """A message no Nova actor takes."""


@dataclass(frozen=True)
class Observed:
    """What TransientParent tells whoever asks: its children, and each exit with its decision."""

    children: dict[str, Any]
    exits: list[tuple[str, bool, str]]  # (child, abnormal, the decision's class name)


class Worker(NovaActor):
    def handlers(self) -> dict[type, Any]:
        return {Finish: self.on_finish}

    def on_finish(self, message: Finish, sender: Any) -> None:
        self.send(self.myAddress, ActorExitRequest())


@dataclass
class RecordingPolicy(SupervisorPolicy):
    exits: list[tuple[str, bool, str]] = field(default_factory=list)

    def on_exit(self, name: str, abnormal: bool) -> Decision:
        decision = super().on_exit(name, abnormal)
        self.exits.append((name, abnormal, type(decision).__name__))
        return decision


class TransientParent(Supervisor):
    def handlers(self) -> dict[type, Any]:
        return {Start: self.on_start, Observed: self.on_observe}

    def on_start(self, message: Start, sender: Any) -> None:
        self.start_children(RecordingPolicy([ChildSpec("worker", Worker, restart=Restart.TRANSIENT)]))

    def on_observe(self, message: Observed, sender: Any) -> None:
        assert isinstance(self.policy, RecordingPolicy)
        self.send(sender, Observed(dict(self.children), list(self.policy.exits)))
