"""LaneActor: a Nova actor whose per-call work runs on its lane's asyncio thread.

Thespian stays the control plane: creation, supervision, configuration and events arrive as
Thespian messages on the actor's thread, and the actor hands what the call path needs to the
lane thread (`to_lane`). Calls, chunks and outcomes arrive on the lane (`on_lane`) and are
handled there, so a call never waits for the Thespian thread. What the lane thread must send
through Thespian (events, replies to a user's actor) goes into an outbox; a byte on a
socketpair wakes the actor through `ThespianWatch`, and every Thespian `send` happens on the
actor's own thread.

Events are batched on the lane thread: the first event of a quiet period arms one timer, and
the batch leaves when it fires (or when it is `EVENT_BATCH_MAX` long), so an idle actor costs
nothing.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import os
import socket
import time
from dataclasses import dataclass, replace
from typing import Any

from thespian.actors import ThespianWatch, WatchMessage

from nova import answers, errors
from nova.actors.base import EVENT_BATCH_MAX, EVENT_FLUSH_S, SELF, EventBatch, NovaActor
from nova.actors.lanes import LaneHub, lane_path
from nova.actors.protocol import DRIVERS, PROBE_WAIT_S, Answer, Cancel, Holding, Job, Probe
from nova.events import Event, checked
from nova.types import Response

__all__ = ["LaneActor"]

SEND_SLICE = 64  # outbox messages sent per handler run before the mailbox gets a turn
RETRY_S = 0.02  # how soon a job for a stage that is (re)starting is sent again


@dataclass(frozen=True)
class _Drain:
    """To itself: go on sending the outbox after the mailbox had a turn."""


class LaneActor(NovaActor):
    burst_messages = (WatchMessage, _Drain)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hub: LaneHub | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._outbox: collections.deque[tuple[Any, Any, bool]] = collections.deque()
        self._drain_pending = False
        self._lane_events: list[Event] = []
        self.resending: dict[str, Job] = {}  # jobs for a (re)starting peer, about to go again
        self._probes_sent: dict[str, list[tuple[float, Probe]]] = {}  # by peer: lately, and when

    def handlers(self) -> dict[type, Any]:
        return {WatchMessage: self._on_wake, _Drain: self._on_wake}

    def entitled(self) -> dict[type, str]:
        return {**super().entitled(), WatchMessage: SELF, _Drain: SELF}

    def watch(self) -> Any:
        return ThespianWatch([self._wake_r.fileno()])

    # -- the lane -------------------------------------------------------------------------------

    def open_lane(self, directory: str, name: str) -> LaneHub:
        self.hub = LaneHub(directory, name, self._on_lane, self._on_lost, self.on_undelivered)
        self.hub.start()
        return self.hub

    def _on_lane(self, peer: str, message: Any) -> None:
        if isinstance(message, Probe):
            assert self.hub is not None
            # next tick: a job that reached this process before the probe has been read by then
            self.hub.loop.call_soon(self._on_probe, message)
            return
        if isinstance(message, Cancel):
            self.resending.pop(message.request_id, None)
        self.on_lane(peer, message)

    def on_lane(self, peer: str, message: Any) -> None:
        """A message from the lane of `peer` (lane thread)."""

    def holds(self, request_id: str) -> bool:
        """Whether this actor holds the call (lane thread): it will pass it on or answer it."""
        return False

    def _on_probe(self, probe: Probe) -> None:
        assert self.hub is not None
        held = tuple(r for r in probe.request_ids if r in self.resending or self.holds(r))
        asked = self.pass_probe(self.route_probe(probe))
        self._tell(probe.caller, Holding(probe.token, self.hub.name, held, asked))

    def _tell(self, caller: str, holding: Holding) -> None:
        assert self.hub is not None
        if caller == self.hub.name:  # this actor's own probe (the router's)
            self.on_lane(caller, holding)
        else:
            self.hub.send(caller, holding)

    def route_probe(self, probe: Probe) -> Probe:
        """A probe as it leaves here (the router gives a caller's its way)."""
        return probe

    def pass_probe(self, probe: Probe) -> tuple[str, ...]:
        """Send `probe` on to the next of its slip, after the jobs sent there before it; the
        lanes it went to."""
        assert self.hub is not None
        if not probe.slip:
            return ()
        head, rest = probe.slip[0], probe.slip[1:]
        if head != DRIVERS:
            self._send_probe(head, replace(probe, slip=rest))
            return (head,)
        lanes = tuple(
            sorted(
                os.path.basename(path)[: -len(".sock")]
                for pattern in ("driver-*", "relay")
                for path in glob.glob(lane_path(glob.escape(self.hub.directory), pattern))
            )
        )
        for lane in lanes:
            self._send_probe(lane, replace(probe, slip=()))
        return lanes

    def _send_probe(self, peer: str, probe: Probe) -> None:
        """Send, and remember for a while: a probe written to a peer that dies before it has read
        it is answered for the peer once its loss is known (`_on_lost`)."""
        assert self.hub is not None
        now = time.monotonic()
        for lane in list(self._probes_sent):
            recent = [(at, p) for at, p in self._probes_sent[lane] if now - at < PROBE_WAIT_S]
            if recent:
                self._probes_sent[lane] = recent
            else:
                del self._probes_sent[lane]
        self._probes_sent.setdefault(peer, []).append((now, probe))
        self.hub.send(peer, probe)

    def _answer_for(self, peer: str, probe: Probe) -> None:
        """Answer a probe for a peer it did not reach (holding nothing) and pass it on past it."""
        self._tell(probe.caller, Holding(probe.token, peer, (), self.pass_probe(probe)))

    def _on_lost(self, peer: str, since: float) -> None:
        for _at, probe in self._probes_sent.pop(peer, []):
            self._answer_for(peer, probe)
        self.on_lost(peer, since)

    def on_lost(self, peer: str, since: float) -> None:
        """`peer`'s process has gone (lane thread)."""

    def on_undelivered(self, peer: str, messages: list[Any], reason: str) -> None:
        """Messages that never reached `peer` (lane thread). A job for a stage that is starting or
        restarting is sent again shortly, until the call's deadline; then its caller is answered."""
        assert self.hub is not None
        for message in messages:
            if isinstance(message, Probe):  # answered here, not again when its loss is told
                sent = self._probes_sent.get(peer, [])
                self._probes_sent[peer] = [(at, p) for at, p in sent if p is not message]
                self._answer_for(peer, message)
                continue
            if not isinstance(message, Job):
                continue
            if "not running" in reason and time.time() + RETRY_S < message.deadline:
                self.resending[message.request_id] = message
                self.hub.loop.call_later(RETRY_S, self._resend, peer, message)
                continue
            error = (
                errors.InvalidInputError(f"the call {reason}")
                if "cannot be sent" in reason
                else errors.DriverUnavailableError(f"Nova's {peer} stage {reason}", retryable=True)
            )
            self.end_call(message, error=error)

    def _resend(self, peer: str, job: Job) -> None:
        if self.resending.get(job.request_id) is job:  # not cancelled meanwhile
            del self.resending[job.request_id]
            assert self.hub is not None
            self.hub.send(peer, job)

    def end_call(
        self,
        job: Job,
        response: Response | None = None,
        error: errors.NovaError | None = None,
        *,
        chunks: int = 0,
        from_cache: bool = False,
        price: answers.Price | None = None,
    ) -> None:
        """Answer a call here (lane thread): to its caller's lane, priced and stamped, with its
        `request.completed` / `request.failed` event — or to the router, which finishes the calls
        it needs back and describes them itself."""
        assert self.hub is not None
        if not job.via_router:
            if response is not None:
                response, (name, fields) = answers.succeeded(
                    response,
                    request_id=job.request_id,
                    driver=job.driver,
                    requested_model=job.request.model,
                    started=job.started,
                    from_cache=from_cache,
                    price=price,
                )
            else:
                assert error is not None
                name, fields = answers.failed(
                    error,
                    request_id=job.request_id,
                    driver=job.driver,
                    model=job.request.model,
                    started=job.started,
                )
            self.emit(name, **fields)
        self.hub.send(job.reply_to, Answer(job.request_id, response, error, chunks, from_cache))

    def to_lane(self, fn: Any, *args: Any) -> None:
        """Run `fn(*args)` on the lane thread (from the actor's thread)."""
        assert self.hub is not None
        self.hub.call(fn, *args)

    # -- from the lane thread back to Thespian --------------------------------------------------

    def to_thespian(self, address: Any, message: Any, batch: bool = True) -> None:
        """Send through Thespian, from the lane thread (`batch=False`: the receiver cannot unpack
        a `Batch`, e.g. a user's actor)."""
        self._outbox.append((address, message, batch))
        with contextlib.suppress(BlockingIOError):  # full of wake-ups already: the actor will drain
            self._wake_w.send(b"\0")

    def _on_wake(self, message: Any, sender: Any) -> None:
        self._drain_pending = False
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass
        for _ in range(SEND_SLICE):
            if not self._outbox:
                break
            address, item, batch = self._outbox.popleft()
            self.send(address, item, batch=batch)
        if self._outbox and not self._drain_pending:
            self._drain_pending = True
            self.send(self.myAddress, _Drain())  # continue after the mailbox had a turn

    # -- events, batched on the lane thread -----------------------------------------------------

    def emit(self, name: str, **fields: Any) -> None:
        if self.event_bus is None or not checked(name):
            return
        if self.hub is None:
            super().emit(name, **fields)
            return
        events = self._lane_events
        if not events:
            self.hub.loop.call_soon_threadsafe(
                self.hub.loop.call_later, EVENT_FLUSH_S, self._flush_lane_events
            )
        events.append(Event(name=name, sender=self.sender_name(), **fields))
        if len(events) == EVENT_BATCH_MAX:  # a burst: do not hold thousands for the timer
            self.hub.loop.call_soon_threadsafe(self._flush_lane_events)

    def _flush_lane_events(self) -> None:
        events, self._lane_events = self._lane_events, []
        if events and self.event_bus is not None:
            self.to_thespian(self.event_bus, EventBatch(events))

    def on_exit(self) -> None:
        self._flush_lane_events()
        if self._outbox:
            self._on_wake(None, None)
        super().on_exit()
        if self.hub is not None:
            self.hub.close()
