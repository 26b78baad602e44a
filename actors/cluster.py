"""Between the nodes of a cluster: the lease messages, and the desk that finds the leader.

Each node's RateLimitActor admits against leases (nova/ratelimit/lease.py) that the leader's
RateLimitActor grants. The leader's relay creates the `LeaseDesk` by its global name; every
other node's relay asks the leader's admin, at the configured leader address, for its global
actors, and so learns where the desk is now (again after the leader restarts). The desk
forwards each request to the leader's RateLimitActor (which registers itself there), and the
answer goes straight back. Relays register there too, and learn of each other from it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from nova.actors.base import NovaActor
from nova.ratelimit import Charged, Grant, Return, Want

__all__ = [
    "DESK",
    "DESK_S",
    "LEADER_CAPABILITY",
    "NODE_CAPABILITY",
    "LeaderHere",
    "LeaseDesk",
    "LeaseReply",
    "LeaseRequest",
]

DESK = "nova-leases"  # the desk's global name, in the leader's system
DESK_S = 1.0  # how often a node asks the leader's admin where the desk is (it moves on a restart)
LEADER_CAPABILITY = "Nova Leader"
NODE_CAPABILITY = "Nova Node"  # "host:port" of a node's admin


@dataclass(frozen=True)
class LeaseRequest:
    node: str
    reply_to: Any
    wants: tuple[Want, ...]
    returns: tuple[Return, ...]
    charged: tuple[Charged, ...] = ()  # what it holds from a leader that may have restarted


@dataclass(frozen=True)
class LeaseReply:
    grants: tuple[Grant, ...]


@dataclass(frozen=True)
class LeaderHere:
    """The leader's RateLimitActor, at its (re)start."""

    address: Any


@dataclass(frozen=True)
class RelayHere:
    """A node's relay, registering (again) with the desk."""

    node: str
    address: Any
    capabilities: dict[str, Any]


@dataclass(frozen=True)
class RelayTable:
    """The relays the desk knows: (node, address, capabilities) each."""

    relays: tuple[tuple[str, Any, dict[str, Any]], ...]


RELAY_FORGET_S = 6.0  # a relay that has not registered again for this long is left out of the table


class LeaseDesk(NovaActor):
    @staticmethod
    def actorSystemCapabilityCheck(capabilities: dict[str, Any], requirements: dict[str, Any]) -> bool:  # noqa: N802
        return bool(capabilities.get(LEADER_CAPABILITY))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.leader: Any = None
        self.relays: dict[str, tuple[RelayHere, float]] = {}

    def handlers(self) -> dict[type, Any]:
        return {LeaderHere: self.on_leader, LeaseRequest: self.on_request, RelayHere: self.on_relay}

    def sender_name(self) -> str:
        return "lease-desk"

    def on_leader(self, message: LeaderHere, sender: Any) -> None:
        self.leader = message.address

    def on_request(self, message: LeaseRequest, sender: Any) -> None:
        # Before the leader's limiter is up a request is dropped: the node asks again shortly.
        if self.leader is not None:
            self.send(self.leader, message)

    def on_relay(self, message: RelayHere, sender: Any) -> None:
        now = time.monotonic()
        known = self.relays.get(message.node)
        self.relays[message.node] = (message, now)
        for node, (_, seen) in list(self.relays.items()):
            if now - seen > RELAY_FORGET_S:
                del self.relays[node]
        table = RelayTable(tuple((r.node, r.address, r.capabilities) for r, _ in self.relays.values()))
        changed = known is None or known[0].address != message.address
        for relay, _ in self.relays.values():  # a new relay: everyone learns of it at once
            if changed or relay.node == message.node:
                self.send(relay.address, table)
