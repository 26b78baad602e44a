"""The supervisor actor: starts its children from specs and applies its `SupervisorPolicy`.

Thespian tells a parent when a child exits (`ChildActorExited`) but restarts nothing. This actor
does what OTP's supervisor does: restarts per strategy after a backoff, re-sends each restarted
child its init message, reports exits and restarts as events, and, when restarts exceed the
intensity, exits itself so that its own supervisor decides (escalation). Subclasses re-wire the
rest of the tree in `child_started`.

An exit is normal when the child stopped itself: it says so (`ExitingNormally`) before Thespian's
`ChildActorExited`, which travels after it from the same process. A killed or crashed child says
nothing: its exit is abnormal. A transient child restarts only after an abnormal exit.
"""

from __future__ import annotations

import logging
from typing import Any

from thespian.actors import ActorExitRequest, ChildActorExited, WakeupMessage

from nova.actors.base import ExitingNormally, NovaActor, SetEventBus
from nova.supervisors.spec import ChildSpec, Escalate, RestartChildren, SupervisorPolicy

__all__ = ["Supervisor"]

log = logging.getLogger("nova.supervisors")
_RESTART = "nova:restart"
_EXITED_CHILD = "the child itself or Thespian"
_CHILD = "the child itself"


class Supervisor(NovaActor):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.policy: SupervisorPolicy | None = None
        self.children: dict[str, Any] = {}  # name -> address
        self.restarts: dict[str, int] = {}
        self._escalated = False
        self._stopping = False
        self._normal_exits: set[str] = set()  # children that said they stop by choice

    def start_children(self, policy: SupervisorPolicy) -> None:
        self.policy = policy
        for spec in policy.children:
            self._start(spec)

    def _start(self, spec: ChildSpec) -> None:
        address = self.createActor(spec.actor)
        self.children[spec.name] = address
        if self.event_bus is not None:
            self.send(address, SetEventBus(self.event_bus))
        if spec.init is not None:
            self.send(address, self.init_for(spec))
        self.child_started(spec.name, address)

    def init_for(self, spec: ChildSpec) -> Any:
        """The init message of a (re)started child; subclasses may refresh it with new wiring."""
        return spec.init

    def child_started(self, name: str, address: Any) -> None:
        """Called after every start and restart of a child."""

    def stop_child(self, name: str) -> None:
        """Stop a child on purpose: it is forgotten at once, so its exit restarts nothing."""
        address = self.children.pop(name, None)
        if address is not None:
            self.send(address, ActorExitRequest())

    def handle_supervision(self, message: Any) -> bool:
        """Handle ChildActorExited and restart wakeups; True when the message was one of those."""
        if isinstance(message, ChildActorExited):
            self._child_exited(message.childAddress)
            return True
        if (
            isinstance(message, WakeupMessage)
            and isinstance(message.payload, tuple)
            and message.payload[:1] == (_RESTART,)
        ):
            self._restart(message.payload[1])
            return True
        return False

    def entitled(self) -> dict[type, str]:
        return {**super().entitled(), ChildActorExited: _EXITED_CHILD, ExitingNormally: _CHILD}

    def exits_normally(self) -> bool:
        return not self._escalated

    def is_entitled(self, who: str, message: Any, sender: Any) -> bool:
        if who == _CHILD:
            return any(a == sender for a in self.children.values())
        if who == _EXITED_CHILD:  # Thespian on our behalf, or the child saying goodbye itself
            return bool(sender == self.myAddress) or (
                sender == message.childAddress and any(a == sender for a in self.children.values())
            )
        return super().is_entitled(who, message, sender)

    def receiveMessage(self, message: Any, sender: Any) -> Any:  # noqa: N802
        if self.refused(message, sender):
            return self.watch()
        if isinstance(message, ActorExitRequest):
            # Being stopped: the children's exits that follow are no crash, restart none of them
            # (restarting during a shutdown spawned processes and escalated while the system stopped).
            self._stopping = True
        if isinstance(message, ExitingNormally):
            self._normal_exits.update(n for n, a in self.children.items() if a == sender)
            return self.watch()
        if self.policy is not None and self.handle_supervision(message):
            return self.watch()
        return super().receiveMessage(message, sender)

    def _child_exited(self, address: Any) -> None:
        name = next((n for n, a in self.children.items() if a == address), None)
        if name is None or self.policy is None or self._escalated or self._stopping:
            return
        del self.children[name]
        abnormal = name not in self._normal_exits
        self._normal_exits.discard(name)
        self.emit(
            "supervisor.child_exited",
            data={
                "child": name,
                "supervisor": self.sender_name(),
                "reason": "abnormal" if abnormal else "normal",
            },
        )
        self.child_exited(name)
        decision = self.policy.on_exit(name, abnormal=abnormal)
        if isinstance(decision, Escalate):
            self._escalated = True
            log.error("%s escalates: %s", self.sender_name(), decision.reason)
            self.emit(
                "supervisor.escalated",
                data={"child": name, "reason": decision.reason, "supervisor": self.sender_name()},
            )
            self._flush_events()
            self.send(self.myAddress, ActorExitRequest())
        elif isinstance(decision, RestartChildren):
            for other in decision.names:
                if other != name:
                    self.stop_child(other)
            self.wakeupAfter(decision.delay_s, payload=(_RESTART, decision.names))

    def _restart(self, names: tuple[str, ...]) -> None:
        assert self.policy is not None
        if self._stopping:
            return
        for spec in self.policy.children:
            if spec.name in names and spec.name not in self.children:
                self.restarts[spec.name] = self.restarts.get(spec.name, 0) + 1
                self._start(spec)
                self.emit(
                    "supervisor.child_restarted",
                    data={
                        "child": spec.name,
                        "restarts": self.restarts[spec.name],
                        "supervisor": self.sender_name(),
                    },
                )

    def child_exited(self, name: str) -> None:
        """Called when a child exits, before any restart: fail what it held."""
