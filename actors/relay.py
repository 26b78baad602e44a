"""RelayActor: carries attempts to drivers on other nodes of a cluster, and their outcomes back.

Lanes stay local to a node. An attempt for a driver this node does not run (it lacks the
capabilities the driver requires) goes from the fallback stage to this node's relay (lane
`relay`), which sends it, as a Thespian message, to the relay of a node that runs the driver.
That relay hands it to the driver's lane as its own call (`reply_to` = `relay`), so everything the
driver sends for it comes to the relay — `Took`, chunks, the answer, the outcomes for the
fallback stage, the cache and the limiter — and goes back to the calling node's relay, which puts
each on the lane it was meant for there. Credit and cancels travel the other way. What crosses
between two nodes in one loop tick leaves as one message.

Relays find each other through the leader's `LeaseDesk`: each registers (node name, address,
capabilities) every couple of seconds and gets the table of all relays back. A node other than the
leader asks the leader's admin (at the configured leader address) where the desk is, every
`DESK_S`, so it finds a leader that starts after it or restarts, without waiting for Thespian's
convention to report it. A relay that has attempts on another node pings that node's relay; when no
answer has come for `NODE_LOST_S`, the node is taken for lost: an attempt its driver had not taken
yet goes to another node that runs the driver (or fails, retryably, when there is none), and one it
had taken fails with `DriverUnavailableError` — the service may have run it. The other way round, a
node that has attempts here pings while it waits for them; when it falls silent, its attempts are
cancelled here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from thespian.system.messages.status import Thespian_StatusReq, Thespian_SystemStatus
from thespian.system.transport.TCPTransport import TCPTransport

from nova import errors
from nova.actors.base import PARENT
from nova.actors.cluster import (
    DESK,
    DESK_S,
    LeaderHere,
    LeaseDesk,
    LeaseRequest,
    RelayHere,
    RelayTable,
)
from nova.actors.lane_actor import LaneActor
from nova.actors.protocol import (
    Answer,
    Cancel,
    Credit,
    DriverCall,
    DriverResult,
    Piece,
    Release,
    StageInit,
    Store,
    Took,
    driver_lane,
)
from nova.config import leader_address

__all__ = ["NODE_LOST_S", "RELAY", "RelayActor", "RelayBatch"]

RELAY = "relay"
PING_S = 0.25  # how often a node with attempts elsewhere asks those nodes whether they are there
NODE_LOST_S = 1.5  # no answer for this long: that node is lost
REGISTER_S = 2.0  # how often a relay tells the leader's desk where it is
_KEEP_S = 5.0  # how long a served call's route is kept after its result (outcomes still follow)
JOIN_S = 5.0  # after start, an attempt for a driver no known node runs waits this long for the table


@dataclass(frozen=True)
class RelayBatch:
    """Everything one relay sends another in one loop tick."""

    node: str  # the sender's node
    reply_to: Any  # the sender's address
    items: tuple[Any, ...]


@dataclass(frozen=True)
class _Ping:
    pass


@dataclass(frozen=True)
class _Pong:
    pass


@dataclass(frozen=True)
class _ToLane:
    """A message for the lane `lane` of the receiving node (the caller, fallback, cache, limiter)."""

    lane: str
    message: Any


@dataclass(frozen=True)
class _ForCall:
    """Credit or a cancel for a call this node serves."""

    request_id: str
    message: Any


@dataclass
class _Out:
    """An attempt this node sent to another node's driver."""

    call: DriverCall
    node: str
    took: bool = False


@dataclass
class _In:
    """An attempt this node's driver runs for another node."""

    origin: Any  # the calling relay's address
    node: str
    lane: str  # the driver lane that has it
    reply_to: str  # the caller's lane, on the calling node
    attempt: int


@dataclass
class _Peer:
    address: Any
    capabilities: dict[str, Any]
    last_heard: float = field(default_factory=time.monotonic)
    pinged: float | None = None  # an unanswered ping went out then


class RelayActor(LaneActor):
    init_message = StageInit

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config: Any = None
        self.node = ""
        self.desk: Any = None
        self.peers: dict[str, _Peer] = {}  # node -> its relay
        self.lost: dict[str, tuple[Any, float]] = {}  # node -> (its relay's address, when it was lost)
        self._registered = 0.0
        self.leader_admin: Any = None  # the leader's admin, asked for the desk (not on the leader)
        self._asked_desk = float("-inf")
        self._started = time.monotonic()
        self._joining: list[DriverCall] = []  # attempts waiting for the first tables
        self.out: dict[str, _Out] = {}  # by request id
        self.served: dict[str, _In] = {}  # by request id
        self.heard_from: dict[str, float] = {}  # node -> when a message from it last came
        self.load: dict[str, int] = {}  # attempts in flight by driver lane (served here)
        self._bound: dict[str, list[Any]] = {}  # node -> items for it this tick
        self._flush_scheduled = False

    def handlers(self) -> dict[type, Any]:
        return {
            **super().handlers(),
            StageInit: self.on_init,
            RelayTable: lambda m, s: self.to_lane(self.on_table, m),
            RelayBatch: lambda m, s: self.to_lane(self.on_batch, m),
            Thespian_SystemStatus: self.on_leader_status,
        }

    def entitled(self) -> dict[type, str]:
        return {**super().entitled(), StageInit: PARENT}

    def sender_name(self) -> str:
        return RELAY

    def status_info(self) -> dict[str, Any]:
        return {"out": len(self.out), "served": len(self.served), "nodes": sorted(self.peers)}

    def on_init(self, message: StageInit, sender: Any) -> None:
        self.config = message.config
        self.node = f"{self.config.cluster.bind}:{self.config.system.admin_port}"
        if self.node == self.config.cluster.leader:
            self._find_desk()
        else:
            host, port = leader_address(self.config.cluster.leader)
            self.leader_admin = TCPTransport.getAddressFromString((host, port))
        hub = self.open_lane(self.config.system.lane_dir, RELAY)
        hub.loop.call_soon_threadsafe(self._tick)

    def _find_desk(self) -> None:
        """The leader's desk, by its global name (see actors/cluster.py), and register there. The
        relay is the one actor of a node that creates it: Thespian cannot resolve two creations of
        one global name from one system in flight at once (the second stays pending for good)."""
        self.desk = self.createActor(LeaseDesk, globalName=DESK)
        self.send(self.desk, self._here())

    def on_leader_status(self, message: Thespian_SystemStatus, sender: Any) -> None:
        """The leader's admin answered: its global actors include the desk once the leader is up.
        Creating the desk by its global name from here would go through the convention, which
        keeps a creation it cannot place pending for good."""
        desk = getattr(message, "globalActors", {}).get(DESK)
        if desk is not None and desk != self.desk:
            self.desk = desk
            self.send(desk, self._here())  # register at once: the table follows
            self._registered = time.monotonic()

    def _here(self) -> RelayHere:
        return RelayHere(self.node, self.myAddress, dict(self.config.cluster.capabilities))

    # -- the table of relays (lane thread) -----------------------------------------------------

    def on_table(self, table: RelayTable) -> None:
        now = time.monotonic()
        for node, address, capabilities in table.relays:
            if node == self.node:
                continue
            lost = self.lost.get(node)
            if lost is not None and lost[0] == address and now - lost[1] < 3 * REGISTER_S:
                continue  # the table may still list it; a node that restarted has a new address
            peer = self.peers.get(node)
            if peer is None or peer.address != address:
                self.peers[node] = _Peer(address, dict(capabilities), now)
        joining, self._joining = self._joining, []
        for call in joining:
            self._send_out(call, set())

    def _runs(self, node: str, driver: str) -> bool:
        d = self.config.drivers.get(driver)
        peer = self.peers.get(node)
        return (
            d is not None
            and peer is not None
            and all(peer.capabilities.get(k) == v for k, v in d.requires.items())
        )

    def _pick_node(self, driver: str, avoid: set[str]) -> str | None:
        candidates = [n for n in self.peers if n not in avoid and self._runs(n, driver)]
        if not candidates:
            return None
        busy = {n: 0 for n in candidates}
        for out in self.out.values():
            if out.node in busy:
                busy[out.node] += 1
        return min(candidates, key=lambda n: busy[n])

    # -- from this node's lanes ------------------------------------------------------------------

    def holds(self, request_id: str) -> bool:
        return request_id in self.out or any(c.job.request_id == request_id for c in self._joining)

    def on_lane(self, peer: str, message: Any) -> None:
        if isinstance(message, (LeaseRequest, LeaderHere)):  # this node's limiter, to the desk
            if self.desk is not None:
                self.to_thespian(self.desk, message)
        elif isinstance(message, DriverCall) and peer != RELAY:
            self._send_out(message, set())
        elif isinstance(message, (Credit, Cancel)):
            out = self.out.get(message.request_id)
            if out is not None:
                self._to(out.node, _ForCall(message.request_id, message))
                if isinstance(message, Cancel):
                    self.out.pop(message.request_id, None)
        else:
            self._from_driver(message)

    def _send_out(self, call: DriverCall, avoid: set[str]) -> None:
        """Send an attempt to a node that runs its driver, or fail it back to the fallback stage."""
        assert self.hub is not None
        node = self._pick_node(call.target, avoid)
        if node is None and not avoid and time.monotonic() - self._started < JOIN_S:
            self._joining.append(call)  # the desk's table may not have come yet
            return
        if node is None:
            error = errors.DriverUnavailableError(
                f"no node of the cluster that runs the {call.target!r} driver answers",
                driver=call.target,
                model=call.request.model or None,
                retryable=True,
            )
            self.hub.send("fallback", DriverResult(call.job.request_id, call.attempt, error=error))
            return
        self.out[call.job.request_id] = _Out(call, node)
        self._to(node, call)

    def _from_driver(self, message: Any) -> None:
        """A driver here sent something for a call it serves for another node: send it back."""
        request_id = getattr(message, "request_id", None)
        served = self.served.get(request_id) if request_id is not None else None
        if served is None:
            return
        lane = {Took: "fallback", DriverResult: "fallback", Store: "cache", Release: "ratelimit"}.get(
            type(message)
        )
        if isinstance(message, (Answer, Piece)):
            lane = served.reply_to
            if isinstance(message, Piece):  # the caller sends credit and cancels to its relay
                message = Piece(message.request_id, message.index, message.chunk, RELAY)
        if isinstance(message, DriverResult):
            self.load[served.lane] = max(0, self.load.get(served.lane, 0) - 1)
            assert self.hub is not None
            self.hub.loop.call_later(_KEEP_S, lambda: self.served.pop(str(request_id), None))
        if lane is not None:
            self._to(served.node, _ToLane(lane, message), served.origin)

    # -- from other nodes ------------------------------------------------------------------------

    def on_batch(self, batch: RelayBatch) -> None:
        assert self.hub is not None
        peer = self.peers.get(batch.node)
        self.heard_from[batch.node] = time.monotonic()
        if peer is not None:
            peer.last_heard, peer.pinged = time.monotonic(), None
        for item in batch.items:
            if isinstance(item, DriverCall):
                self._serve(item, batch.node, batch.reply_to)
            elif isinstance(item, _ToLane):
                self._deliver(item)
            elif isinstance(item, _ForCall):
                served = self.served.get(item.request_id)
                if served is not None:
                    self.hub.send(served.lane, item.message)
            elif isinstance(item, _Ping):
                self._to(batch.node, _Pong(), batch.reply_to)

    def _serve(self, call: DriverCall, node: str, origin: Any) -> None:
        assert self.hub is not None
        processes = self.config.drivers[call.target].processes if call.target in self.config.drivers else 1
        lanes = [driver_lane(call.target, i) for i in range(processes)]
        lane = min(lanes, key=lambda name: self.load.get(name, 0))
        self.load[lane] = self.load.get(lane, 0) + 1
        self.served[call.job.request_id] = _In(origin, node, lane, call.job.reply_to, call.attempt)
        job = _replace_reply_to(call.job, RELAY)
        self.hub.send(
            lane, DriverCall(job, call.attempt, call.target, call.request, call.deadline, call.prior)
        )

    def _deliver(self, item: _ToLane) -> None:
        assert self.hub is not None
        message = item.message
        out = self.out.get(getattr(message, "request_id", ""))
        if isinstance(message, Took) and out is not None:
            out.took = True
        if isinstance(message, DriverResult):
            self.out.pop(message.request_id, None)
        self.hub.send(item.lane, message)

    def on_lost(self, peer: str, since: float) -> None:
        """A driver of this node died: the calls it served for others fail back to their nodes."""
        for request_id, served in list(self.served.items()):
            if served.lane != peer:
                continue
            error = errors.DriverUnavailableError(
                f"the driver actor serving this call on node {self.node} died mid-call",
                retryable=True,
            )
            result = DriverResult(request_id, served.attempt, error=error)
            self._to(served.node, _ToLane("fallback", result), served.origin)
            del self.served[request_id]

    # -- sending to other nodes, and watching them ----------------------------------------------

    def _to(self, node: str, item: Any, address: Any = None) -> None:
        assert self.hub is not None
        if address is None:
            peer = self.peers.get(node)
            if peer is None:
                return
            address = peer.address
        self._bound.setdefault(node, []).append((address, item))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.hub.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        bound, self._bound = self._bound, {}
        for items in bound.values():
            address = items[0][0]
            self.to_thespian(address, RelayBatch(self.node, self.myAddress, tuple(i for _, i in items)))

    def _tick(self) -> None:
        assert self.hub is not None
        now = time.monotonic()
        if self._joining and now - self._started >= JOIN_S:
            joining, self._joining = self._joining, []
            for call in joining:
                self._send_out(call, set())
        self._abandon_orphans(now)
        busy = {out.node for out in self.out.values()}
        for node in busy:
            peer = self.peers.get(node)
            if peer is None:
                continue
            if peer.pinged is not None and now - peer.last_heard > NODE_LOST_S:
                self._lost_node(node)
            elif peer.pinged is None or now - peer.pinged >= PING_S:
                peer.pinged = now
                self._to(node, _Ping())
        if self.leader_admin is not None and now - self._asked_desk >= DESK_S:
            self._asked_desk = now
            self.to_thespian(self.leader_admin, Thespian_StatusReq(), batch=False)  # an admin
        if now - self._registered >= REGISTER_S and self.desk is not None:
            self._registered = now
            self.to_thespian(self.desk, self._here())
        self.hub.loop.call_later(PING_S / 2, self._tick)

    def _abandon_orphans(self, now: float) -> None:
        """A node with calls here pings while it waits for them; when it falls silent it has gone,
        and nobody waits for those calls: the drivers stop them (no upstream call outlives its
        caller)."""
        assert self.hub is not None
        for request_id, served in list(self.served.items()):
            if now - self.heard_from.get(served.node, now) > NODE_LOST_S:
                del self.served[request_id]
                self.load[served.lane] = max(0, self.load.get(served.lane, 0) - 1)
                self.hub.send(served.lane, Cancel(request_id))

    def _lost_node(self, node: str) -> None:
        """No answer from `node`: what had not gone upstream there goes elsewhere; the rest fails."""
        assert self.hub is not None
        peer = self.peers.pop(node, None)
        if peer is not None:
            self.lost[node] = (peer.address, time.monotonic())
        for request_id, out in [(r, o) for r, o in self.out.items() if o.node == node]:
            del self.out[request_id]
            call = out.call
            if not out.took:
                self._send_out(call, {node})
                continue
            error = errors.DriverUnavailableError(
                f"node {node}, which ran this call's {call.target!r} driver, was lost mid-call;"
                " the service may have run it",
                driver=call.target,
                model=call.request.model or None,
                retryable=True,
            )
            self.hub.send("fallback", DriverResult(request_id, call.attempt, error=error))


def _replace_reply_to(job: Any, lane: str) -> Any:
    from dataclasses import replace

    return replace(job, reply_to=lane)
