"""Nova's supervision tree and the wiring that keeps it connected across restarts.

    RootSupervisor (globalName "nova", one_for_one)
    ├── EventBusActor
    ├── DriverSupervisor (one_for_one)      one DriverActor per configured driver
    ├── PipelineSupervisor (one_for_one)    CacheActor, RateLimitActor, FallbackActor, RouterActor
    └── GatewayActor                        the HTTP front door, when [server] is enabled

Calls travel on lanes, whose names are fixed (`router`, `fallback`, `driver-openai-0`…), so a
restarted actor needs no re-wiring of addresses. The tree still tells who is up: the driver
supervisor reports its drivers (and, at once, a driver's death) and the root passes them to the
pipeline's fallback stage, which holds calls for a driver that is restarting; the pipeline tells
its router when a stage died, and reports the router, which the root gives to callers
(`WhereIsRouter`), and tells the gateway whether the router and every driver are up (its
readiness). The root has no supervisor of its own: `nova run` is its heart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from thespian.actors import WakeupMessage

from nova.actors.base import PARENT, STARTER, Ping, Pong, SetEventBus
from nova.actors.cache import CacheActor
from nova.actors.driver import DriverActor
from nova.actors.eventbus import EventBusActor, TelemetryInit
from nova.actors.fallback import FallbackActor
from nova.actors.gateway import GatewayActor, GatewayInit, TreeReady
from nova.actors.protocol import DriverInit, DriversChanged, StageDown, StageInit
from nova.actors.ratelimit import RateLimitActor
from nova.actors.relay import RelayActor
from nova.actors.router import RouterActor
from nova.messages import GetStatus, RouterAddress, StatusReply, WhereIsRouter
from nova.supervisors.spec import ChildSpec, Strategy, SupervisorPolicy
from nova.supervisors.supervisor import Supervisor

__all__ = ["DriverSupervisor", "PipelineSupervisor", "RootSupervisor", "Start"]


@dataclass(frozen=True)
class Start:
    config: Any  # NovaConfig
    identity: tuple[str, str] | None = None  # (name, configuration hash), told to attaching programs


@dataclass(frozen=True)
class _SupInit:
    config: Any
    drivers: DriversChanged | None


@dataclass(frozen=True)
class _RouterReady:
    router: Any


_STATUS_TIMEOUT = "nova:status-timeout"
_STAGES: dict[str, type] = {"cache": CacheActor, "ratelimit": RateLimitActor, "fallback": FallbackActor}


def _pool_member(driver: str, index: int, processes: int) -> str:
    """A driver actor's child name: the driver's name, and its place in a pool of several."""
    return driver if processes == 1 else f"{driver}#{index}"


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
        if self.refused(message, sender):
            return self.watch()
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

    def entitled(self) -> dict[type, str]:
        return {**super().entitled(), _SupInit: PARENT}

    def sender_name(self) -> str:
        return "supervisor:drivers"

    def on_init(self, message: _SupInit, sender: Any) -> None:
        self.parent = sender
        config = message.config
        specs = [
            ChildSpec(
                _pool_member(name, i, d.processes),
                DriverActor,
                DriverInit(name, d.kind, d.options, d.max_concurrency, config, i),
            )
            for name, d in config.drivers.items()
            if config.cluster.can_run(d)  # in a cluster, the others run on nodes that can
            for i in range(d.processes)
        ]
        self.start_children(_policy(config, specs))
        self.send(self.parent, self._changed())

    def _changed(self, down: tuple[str, ...] = ()) -> DriversChanged:
        """The drivers with every process of their pool up."""
        up: dict[str, Any] = {}
        for child, address in self.children.items():
            up.setdefault(child.split("#")[0], address)
        return DriversChanged({n: a for n, a in up.items() if n not in down}, down)

    def child_started(self, name: str, address: Any) -> None:
        if getattr(self, "parent", None) is not None and self.policy is not None:
            self.send(self.parent, self._changed())

    def child_exited(self, name: str) -> None:
        self.send(self.parent, self._changed(down=(name.split("#")[0],)))


class PipelineSupervisor(_TreeSupervisor):
    def handlers(self) -> dict[type, Any]:
        return {_SupInit: self.on_init, DriversChanged: self.on_drivers}

    def entitled(self) -> dict[type, str]:
        return {**super().entitled(), _SupInit: PARENT, DriversChanged: PARENT}

    def sender_name(self) -> str:
        return "supervisor:pipeline"

    def on_init(self, message: _SupInit, sender: Any) -> None:
        from nova.features import pipeline_stages

        self.parent, self.config, self.drivers = sender, message.config, message.drivers
        stages = [(name, _STAGES[name]) for name in pipeline_stages(self.config)]
        if self.config.cluster.enabled:  # attempts for drivers on other nodes, and theirs here
            stages.append(("relay", RelayActor))
        stages.append(("router", RouterActor))
        self.start_children(_policy(self.config, [ChildSpec(n, cls, init=n) for n, cls in stages]))

    def init_for(self, spec: ChildSpec) -> Any:
        return StageInit(self.config)

    def child_started(self, name: str, address: Any) -> None:
        if name == "router":
            self.send(self.parent, _RouterReady(address))
        elif name == "fallback" and self.drivers is not None:
            self.send(address, self.drivers)

    def child_exited(self, name: str) -> None:
        router = self.children.get("router")
        # The calls inside that stage are lost (the relay's: its fallback stage knows them)
        if name not in ("router", "relay") and router is not None:
            self.send(router, StageDown(name))

    def on_drivers(self, message: DriversChanged, sender: Any) -> None:
        self.drivers = message
        if "fallback" in self.children:
            self.send(self.children["fallback"], message)


class RootSupervisor(_TreeSupervisor):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config: Any = None
        self.identity: tuple[str, str] | None = None
        self.router: Any = None
        self.drivers: DriversChanged | None = None
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

    def entitled(self) -> dict[type, str]:
        # Start: only `NovaSystem.start`; the rest only from the child that reports it
        return {
            **super().entitled(),
            Start: STARTER,
            DriversChanged: "its child drivers",
            _RouterReady: "its child pipeline",
        }

    def is_entitled(self, who: str, message: Any, sender: Any) -> bool:
        if who.startswith("its child "):
            child = self.children.get(who.removeprefix("its child "))
            return child is not None and bool(sender == child)
        return super().is_entitled(who, message, sender)

    def sender_name(self) -> str:
        return "supervisor:root"

    def on_start(self, message: Start, sender: Any) -> None:
        if self.config is not None:
            self._waiting.append(sender)
            self._answer_waiting()
            return
        self.config, self.identity = message.config, message.identity
        self._waiting.append(sender)
        specs = [
            ChildSpec("eventbus", EventBusActor, TelemetryInit(self.config)),
            ChildSpec("drivers", DriverSupervisor, "drivers"),
            ChildSpec("pipeline", PipelineSupervisor, "pipeline"),
        ]
        if self.config.server.enabled:
            specs.append(ChildSpec("gateway", GatewayActor, GatewayInit(self.config)))
        self.start_children(_policy(self.config, specs))

    def init_for(self, spec: ChildSpec) -> Any:
        if spec.name in ("drivers", "pipeline"):
            return _SupInit(self.config, self.drivers)
        return spec.init

    def child_started(self, name: str, address: Any) -> None:
        if name == "eventbus":
            self.event_bus = address
            for other, child in self.children.items():
                if other != "eventbus":
                    self.send(child, SetEventBus(address))
        elif name == "pipeline":
            self.router = None  # until the new pipeline reports its router
            self._tell_gateway()
        elif name == "gateway":
            self._tell_gateway()

    def child_exited(self, name: str) -> None:
        if name == "pipeline":
            self.router = None
            self._tell_gateway()

    def _tell_gateway(self) -> None:
        """The gateway is ready when the router and every driver (a process of its pool) are up."""
        gateway = self.children.get("gateway")
        if gateway is None or self.config is None:
            return
        up = self.drivers is not None and all(name in self.drivers.drivers for name in self.config.drivers)
        self.send(gateway, TreeReady(self.router is not None and up))

    def on_drivers(self, message: DriversChanged, sender: Any) -> None:
        self.drivers = message
        if "pipeline" in self.children:
            self.send(self.children["pipeline"], message)
        self._tell_gateway()

    def on_router(self, message: _RouterReady, sender: Any) -> None:
        self.router = message.router
        self._answer_waiting()
        self._tell_gateway()

    def on_where(self, message: WhereIsRouter, sender: Any) -> None:
        self._waiting.append(sender)
        self._answer_waiting()

    def _answer_waiting(self) -> None:
        if self.router is None:
            return
        reply = RouterAddress(
            router=self.router,
            event_bus=self.event_bus,
            lanes=self.config.system.lane_dir,
            identity=self.identity,
            pids=(os.getpid(), os.getppid()),  # the root's parent is the admin
        )
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
