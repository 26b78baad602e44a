"""Nova's supervision tree and the wiring that keeps it connected across restarts.

    RootSupervisor (globalName "nova", one_for_one)
    ├── EventBusActor
    ├── DriverSupervisor (one_for_one)      one DriverActor per configured driver
    └── PipelineSupervisor (one_for_one)    CacheActor, RateLimitActor, FallbackActor, RouterActor

The root is the hub of addresses: the driver supervisor reports its drivers (and, at once, a
driver's death) and the root passes them to the pipeline's fallback stage; the pipeline reports
its router, which the root gives to callers (`WhereIsRouter`). The root has no supervisor of its
own: `nova run` is its heart (see nova/system.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from thespian.actors import WakeupMessage

from actors.base import Ping, Pong, SetEventBus
from actors.cache import CacheActor
from actors.driver import DriverActor
from actors.eventbus import EventBusActor, TelemetryInit
from actors.fallback import FallbackActor
from actors.protocol import DriverInit, DriversChanged, StageInit
from actors.ratelimit import RateLimitActor
from actors.router import RouterActor, StageDown
from nova.messages import GetStatus, RouterAddress, StatusReply, WhereIsRouter
from supervisors.spec import ChildSpec, Strategy, SupervisorPolicy
from supervisors.supervisor import Supervisor

__all__ = ["DriverSupervisor", "PipelineSupervisor", "RootSupervisor", "Start"]


@dataclass(frozen=True)
class Start:
    config: Any  # NovaConfig


@dataclass(frozen=True)
class _SupInit:
    config: Any
    drivers: dict[str, Any]


@dataclass(frozen=True)
class _RouterReady:
    router: Any


_STATUS_TIMEOUT = "nova:status-timeout"


def _policy(
    config: Any, children: list[ChildSpec], strategy: Strategy = Strategy.ONE_FOR_ONE
) -> SupervisorPolicy:
    s = config.supervision
    return SupervisorPolicy(
        children, strategy, s.max_restarts, s.max_seconds, s.backoff_initial_s, s.backoff_max_s
    )


class _TreeSupervisor(Supervisor):
    """A supervisor that passes a new event bus down and answers pings about itself."""

    def receiveMessage(self, message: Any, sender: Any) -> Any:  # noqa: N802
        if isinstance(message, SetEventBus):
            for address in self.children.values():
                self.send(address, message)
        elif isinstance(message, Ping):
            self.send(
                sender,
                Pong(
                    message.token,
                    os.getpid(),
                    self.sender_name(),
                    dict(self.children),
                    dict(self.restarts),
                    {},
                ),
            )
            return self.watch()
        return super().receiveMessage(message, sender)


class DriverSupervisor(_TreeSupervisor):
    def handlers(self) -> dict[type, Any]:
        return {_SupInit: self.on_init}

    def sender_name(self) -> str:
        return "supervisor:drivers"

    def on_init(self, message: _SupInit, sender: Any) -> None:
        self.parent = sender
        specs = [
            ChildSpec(name, DriverActor, DriverInit(name, d.kind, d.options, d.max_concurrency))
            for name, d in message.config.drivers.items()
        ]
        self.start_children(_policy(message.config, specs))
        self.send(self.parent, DriversChanged(dict(self.children)))

    def child_started(self, name: str, address: Any) -> None:
        if getattr(self, "parent", None) is not None and self.policy is not None:
            self.send(self.parent, DriversChanged(dict(self.children)))

    def child_exited(self, name: str) -> None:
        self.send(self.parent, DriversChanged(dict(self.children), down=(name,)))


class PipelineSupervisor(_TreeSupervisor):
    def handlers(self) -> dict[type, Any]:
        return {_SupInit: self.on_init, DriversChanged: self.on_drivers}

    def sender_name(self) -> str:
        return "supervisor:pipeline"

    def on_init(self, message: _SupInit, sender: Any) -> None:
        from nova import features

        self.parent, self.config, self.drivers = sender, message.config, dict(message.drivers)
        stages: list[tuple[str, type]] = []
        if features.cache_enabled(self.config):
            stages.append(("cache", CacheActor))
        if features.ratelimit_enabled(self.config):
            stages.append(("ratelimit", RateLimitActor))
        stages += [("fallback", FallbackActor), ("router", RouterActor)]
        self.start_children(_policy(self.config, [ChildSpec(n, cls, init=n) for n, cls in stages]))

    def init_for(self, spec: ChildSpec) -> Any:
        wiring = {name: addr for name, addr in self.children.items() if name != "router"}
        return StageInit(self.config, {**wiring, "drivers": self.drivers})

    def child_started(self, name: str, address: Any) -> None:
        router = self.children.get("router")
        if name == "router":
            self.send(self.parent, _RouterReady(address))
        elif router is not None:
            self.send(router, StageDown(name, address))
        if name == "ratelimit" and "fallback" in self.children:  # it sends the limiter pauses
            self.send(self.children["fallback"], StageDown(name, address))

    def on_drivers(self, message: DriversChanged, sender: Any) -> None:
        self.drivers = dict(message.drivers)
        if "fallback" in self.children:
            self.send(self.children["fallback"], message)


class RootSupervisor(_TreeSupervisor):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config: Any = None
        self.router: Any = None
        self.drivers: dict[str, Any] = {}
        self._waiting: list[Any] = []  # askers of WhereIsRouter before the router is up
        self._status: dict[int, dict[str, Any]] = {}
        self._tokens = 0

    def handlers(self) -> dict[type, Any]:
        return {
            Start: self.on_start,
            WhereIsRouter: self.on_where,
            DriversChanged: self.on_drivers,
            _RouterReady: self.on_router,
            GetStatus: self.on_status,
            Pong: self.on_pong,
            WakeupMessage: self.on_status_timeout,
        }

    def sender_name(self) -> str:
        return "supervisor:root"

    def on_start(self, message: Start, sender: Any) -> None:
        if self.config is not None:
            self._waiting.append(sender)
            self._answer_waiting()
            return
        self.config = message.config
        self._waiting.append(sender)
        specs = [
            ChildSpec("eventbus", EventBusActor, TelemetryInit(self.config)),
            ChildSpec("drivers", DriverSupervisor, "drivers"),
            ChildSpec("pipeline", PipelineSupervisor, "pipeline"),
        ]
        self.start_children(_policy(self.config, specs))

    def init_for(self, spec: ChildSpec) -> Any:
        if spec.name in ("drivers", "pipeline"):
            return _SupInit(self.config, dict(self.drivers))
        return spec.init

    def child_started(self, name: str, address: Any) -> None:
        if name == "eventbus":
            self.event_bus = address
            for other, child in self.children.items():
                if other != "eventbus":
                    self.send(child, SetEventBus(address))
        elif name == "pipeline":
            self.router = None  # until the new pipeline reports its router

    def on_drivers(self, message: DriversChanged, sender: Any) -> None:
        self.drivers = dict(message.drivers)
        if "pipeline" in self.children:
            self.send(self.children["pipeline"], message)

    def on_router(self, message: _RouterReady, sender: Any) -> None:
        self.router = message.router
        self._answer_waiting()

    def on_where(self, message: WhereIsRouter, sender: Any) -> None:
        self._waiting.append(sender)
        self._answer_waiting()

    def _answer_waiting(self) -> None:
        if self.router is None:
            return
        reply = RouterAddress(router=self.router, event_bus=self.event_bus)
        for asker in self._waiting:
            self.send(asker, reply)
        self._waiting.clear()

    # -- status: ping every actor of the tree, answer with what came back within a second -------

    def on_status(self, message: GetStatus, sender: Any) -> None:
        self._tokens += 1
        token = self._tokens
        self._status[token] = {"asker": sender, "pongs": [], "expected": 0}
        self._ping(token, self.myAddress)
        self.wakeupAfter(1.0, payload=(_STATUS_TIMEOUT, token))

    def _ping(self, token: int, address: Any) -> None:
        self._status[token]["expected"] += 1
        self.send(address, Ping(token))

    def on_pong(self, pong: Pong, sender: Any) -> None:
        status = self._status.get(pong.token)
        if status is None:
            return
        status["pongs"].append((sender, pong))
        for child in pong.children.values():
            self._ping(pong.token, child)
        if len(status["pongs"]) >= status["expected"]:
            self._reply_status(pong.token)

    def on_status_timeout(self, message: WakeupMessage, sender: Any) -> None:
        if isinstance(message.payload, tuple) and message.payload[0] == _STATUS_TIMEOUT:
            self._reply_status(message.payload[1])

    def _reply_status(self, token: int) -> None:
        status = self._status.pop(token, None)
        if status is None:
            return
        # By ==, not str(): a child's address as its parent holds it prints as a local address
        # ("LocalAddr.N") while the same actor as a sender prints as "(T|:port)"; == knows both.
        pongs: list[tuple[Any, Pong]] = status["pongs"]

        def node(address: Any, name: str, restarts: int) -> dict[str, Any]:
            pong = next((p for a, p in pongs if a == address), None)
            if pong is None:
                return {"name": name, "pid": None, "alive": False, "restarts": restarts, "children": []}
            return {
                "name": name,
                "pid": pong.pid,
                "alive": True,
                "restarts": restarts,
                **pong.info,
                "children": [node(a, n, pong.restarts.get(n, 0)) for n, a in pong.children.items()],
            }

        self.send(status["asker"], StatusReply(tree=node(self.myAddress, "root", 0)))
