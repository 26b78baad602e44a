"""Event subscribers are isolated from each other: a stalled, raising or dead one costs the others
nothing but its own queue; a stalled one is told how many events it lost; a dead one is dropped."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from thespian.actors import Actor, ActorExitRequest  # type: ignore[import-untyped]

from nova.actors.base import EventBatch
from nova.events import Event
from nova.messages import EventMessage, GetMetrics, MetricsReply, Subscribe, Unsubscribe
from nova.supervisors.system import NovaSystem
from tests.integration_helpers import config_for, find_node, kill_and_wait, running, status, wait_until

pytestmark = pytest.mark.integration

EVENTS = 1500


@dataclass(frozen=True)
class Watch:
    """Subscribe to `bus`; `hold` (a file): on the first event, block until that file exists;
    `fail`: raise on every event."""

    bus: Any
    queue_size: int | None = None
    hold: str | None = None
    fail: bool = False


@dataclass(frozen=True)
class Seen:
    pid: int
    seqs: list[int]
    gaps: list[int]  # `dropped` of each gap notice, in arrival order


class Subscriber(Actor):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.watch: Watch | None = None
        self.seqs: list[int] = []
        self.gaps: list[int] = []

    def receiveMessage(self, message: Any, sender: Any) -> None:  # noqa: N802 - Thespian's name
        if isinstance(message, Watch):
            self.watch = message
            extra = {} if message.queue_size is None else {"queue_size": message.queue_size}
            self.send(message.bus, Subscribe(topics=("cache.", "subscriber."), **extra))
            self.send(sender, "watching")
        elif isinstance(message, EventMessage):
            assert self.watch is not None
            if self.watch.fail:
                raise RuntimeError("a subscriber with a bug")
            if self.watch.hold:
                deadline = time.monotonic() + 60  # the scenario: a subscriber that stops reading
                while not os.path.exists(self.watch.hold) and time.monotonic() < deadline:
                    time.sleep(0.01)  # the behaviour under test: a subscriber stuck in its handler
            if message.event.name == "subscriber.gap":
                self.gaps.append(message.dropped)
            else:
                self.seqs.append(message.event.seq)
        elif isinstance(message, ActorExitRequest) and self.watch is not None:
            self.send(self.watch.bus, Unsubscribe())
        elif message == "seen?":
            self.send(sender, Seen(os.getpid(), list(self.seqs), list(self.gaps)))


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NovaSystem]:
    with running(config_for(tmp_path_factory.mktemp("subscribers"))) as system:
        yield system


def subscriber(system: NovaSystem, **watch: Any) -> Any:
    address = system.asys.createActor(Subscriber)
    assert system.asys.ask(address, Watch(system.event_bus, **watch), 10) == "watching"
    return address


def seen(system: NovaSystem, address: Any) -> Seen:
    reply = system.asys.ask(address, "seen?", 10)
    assert isinstance(reply, Seen), reply
    return reply


def subscribers(system: NovaSystem) -> int:
    return int(find_node(status(system), "eventbus").get("subscribers", -1))


def publish(system: NovaSystem, count: int, batch: int = 50) -> None:
    """`count` events sent to the bus the way actors send theirs: in batches."""
    with system.asys.private() as ctx:
        for start in range(0, count, batch):
            events = [
                Event(name="cache.miss", sender="cache", request_id=f"r{i}")
                for i in range(start, min(count, start + batch))
            ]
            ctx.tell(system.event_bus, EventBatch(events))


def stop(system: NovaSystem, *addresses: Any) -> None:
    for address in addresses:
        system.asys.tell(address, ActorExitRequest())
    assert wait_until(lambda: subscribers(system) == 0, timeout=30), "subscribers left on the bus"


def test_a_stalled_subscriber_costs_the_others_nothing_and_is_told_what_it_lost(
    system: NovaSystem, tmp_path: Path
) -> None:
    release = tmp_path / "release"
    stalled = subscriber(system, queue_size=100, hold=str(release))
    fast = subscriber(system)
    assert wait_until(lambda: subscribers(system) == 2, timeout=10)
    try:
        publish(system, EVENTS)
        got = wait_until(lambda: len(s := seen(system, fast).seqs) >= EVENTS and s, timeout=60)
        assert got, f"the fast subscriber got {len(seen(system, fast).seqs)} of {EVENTS} events"
        assert got == sorted(got) and len(set(got)) == EVENTS  # each once, in order
        reply = system.ask(system.event_bus, GetMetrics(), 5)  # while the other one still stalls
        assert isinstance(reply, MetricsReply)
        assert reply.snapshot["events"] >= EVENTS
    finally:
        release.touch()
    late = wait_until(lambda: (s := seen(system, stalled)).gaps and s, timeout=30)
    assert late, "the stalled subscriber got no gap notice"
    assert len(late.seqs) < EVENTS
    # every event either arrived or was counted as lost, once
    assert wait_until(lambda: len((s := seen(system, stalled)).seqs) + sum(s.gaps) == EVENTS, timeout=30), (
        seen(system, stalled)
    )
    stop(system, stalled, fast)


def test_dead_and_raising_subscribers_are_dropped_or_skipped_and_the_rest_get_everything(
    system: NovaSystem,
) -> None:
    fast = subscriber(system)
    dead = subscriber(system)
    raising = subscriber(system, fail=True)
    assert wait_until(lambda: subscribers(system) == 3, timeout=10)
    kill_and_wait(seen(system, dead).pid)
    publish(system, 300)
    assert wait_until(lambda: len(seen(system, fast).seqs) >= 300, timeout=60), seen(system, fast)
    assert wait_until(lambda: subscribers(system) == 2, timeout=60), "the dead subscriber was not dropped"
    reply = system.ask(system.event_bus, GetMetrics(), 5)
    assert isinstance(reply, MetricsReply)
    stop(system, fast, raising)
