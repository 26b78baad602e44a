"""LaneHub: the Unix-socket lanes between Nova's processes, seen from the hubs at either end.

Hubs in this process talk to each other, to a raw socket that reads the wire format, and to a
hub in a child process (so that a peer can really die and come back at the same path).
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nova.actors.lanes import LaneHub, lane_path
from tests.waiting import wait_until

ROOT = str(Path(__file__).resolve().parents[2])

# A peer in a process of its own: it echoes every message back to its sender, and on ("burst", n)
# sends n numbered messages back at once and prints SENT when they have all left its buffers.
PEER = r"""
import sys, time
from nova.actors.lanes import LaneHub

directory, name = sys.argv[1], sys.argv[2]
hub = None

def on_message(peer, message):
    if isinstance(message, tuple) and message[0] == "burst":
        for i in range(message[1]):
            hub.send(peer, ("n", i, "x" * 200))
        hub.loop.call_soon(wait_sent, peer)
    else:
        hub.send(peer, ("echo", name, message))

def wait_sent(peer):
    transport = hub._peers[peer].protocol.transport
    if transport.get_write_buffer_size():
        hub.loop.call_later(0.01, wait_sent, peer)
    else:
        print("SENT", flush=True)

hub = LaneHub(directory, name, on_message)
hub.start()
print("READY", flush=True)
sys.stdin.read()  # until the test closes our stdin (or kills us)
"""


class Ends:
    """What one hub's callbacks saw, in order (they run on the hub's loop thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[tuple[str, Any]] = []
        self.lost: list[tuple[str, int]] = []  # (peer, messages delivered when it was reported)
        self.undelivered: list[tuple[str, list[Any], str]] = []

    def on_message(self, peer: str, message: Any) -> None:
        with self.lock:
            self.messages.append((peer, message))

    def on_lost(self, peer: str, since: float) -> None:
        with self.lock:
            self.lost.append((peer, len(self.messages)))

    def on_undelivered(self, peer: str, messages: list[Any], reason: str) -> None:
        with self.lock:
            self.undelivered.append((peer, messages, reason))

    def from_(self, peer: str) -> list[Any]:
        with self.lock:
            return [m for p, m in self.messages if p == peer]


@pytest.fixture
def lane_dir() -> Iterator[str]:
    # Short: a Unix socket's path must fit in 108 bytes, which pytest's tmp_path may not.
    directory = tempfile.mkdtemp(prefix="lanes-")
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def hubs(lane_dir: str) -> Iterator[Any]:
    made: list[LaneHub] = []

    def make(name: str) -> tuple[LaneHub, Ends]:
        ends = Ends()
        hub = LaneHub(lane_dir, name, ends.on_message, ends.on_lost, ends.on_undelivered)
        hub.start()
        made.append(hub)
        return hub, ends

    yield make
    for hub in made:
        if hub._thread is not None and hub._thread.is_alive():  # not closed by the test itself
            hub.close()


class Peer:
    """A LaneHub in a child process."""

    def __init__(self, directory: str, name: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PEER, directory, name],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "READY"

    def line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def peers(lane_dir: str) -> Iterator[Any]:
    made: list[Peer] = []

    def make(name: str) -> Peer:
        made.append(Peer(lane_dir, name))
        return made[-1]

    yield make
    for peer in made:
        peer.kill()


def _in_loop(hub: LaneHub, fn: Any) -> None:
    """Run `fn` on the hub's loop thread and wait until it has run: one loop tick."""
    done = threading.Event()

    def run() -> None:
        try:
            fn()
        finally:
            done.set()

    hub.call(run)
    assert done.wait(5)


# -- order and frames -----------------------------------------------------------------------------


def test_messages_arrive_in_the_order_they_were_sent(hubs: Any) -> None:
    a, _ = hubs("a")
    _, b_ends = hubs("b")
    sent = [("m", i) for i in range(2000)]
    for message in sent[:1000]:  # from another thread, one at a time
        a.post("b", message)
    _in_loop(a, lambda: [a.send("b", m) for m in sent[1000:]])  # and many in one tick
    assert wait_until(lambda: len(b_ends.from_("a")) >= len(sent))
    assert b_ends.from_("a") == sent
    assert b_ends.lost == [] and b_ends.undelivered == []


def _frames(conn: socket.socket, frames: list[bytes], stop: threading.Event) -> None:
    buffer = b""
    conn.settimeout(0.05)
    while not stop.is_set():
        try:
            data = conn.recv(65536)
        except TimeoutError:
            continue
        if not data:
            return
        buffer += data
        while len(buffer) >= 4 and len(buffer) >= 4 + struct.unpack_from("!I", buffer)[0]:
            size = struct.unpack_from("!I", buffer)[0]
            frames.append(buffer[4 : 4 + size])
            buffer = buffer[4 + size :]


def test_messages_sent_in_one_loop_tick_share_one_frame(hubs: Any, lane_dir: str) -> None:
    # The far end is a plain socket, so the test reads exactly what goes on the wire.
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(lane_path(lane_dir, "raw"))
    listener.listen(1)
    a, a_ends = hubs("a")
    frames: list[bytes] = []
    stop = threading.Event()
    a.post("raw", "first")
    conn, _ = listener.accept()
    reader = threading.Thread(target=_frames, args=(conn, frames, stop), daemon=True)
    reader.start()
    try:
        assert wait_until(lambda: len(frames) >= 2)
        assert frames[0] == b"a"  # the hello names the sender
        assert pickle.loads(frames[1]) == ["first"]
        _in_loop(a, lambda: [a.send("raw", m) for m in ("x", "y", "z")])
        assert wait_until(lambda: len(frames) >= 3)
        assert pickle.loads(frames[2]) == ["x", "y", "z"]
        assert len(frames) == 3
        assert a_ends.undelivered == []
    finally:
        stop.set()
        reader.join(5)
        conn.close()
        listener.close()


# -- what comes back undelivered ------------------------------------------------------------------


def test_a_message_to_a_peer_that_is_not_running_comes_back(hubs: Any) -> None:
    a, a_ends = hubs("a")
    a.post("ghost", ("call", 1))
    a.post("ghost", ("call", 2))
    assert wait_until(lambda: sum(len(ms) for _, ms, _ in a_ends.undelivered) >= 2)
    assert {peer for peer, _, _ in a_ends.undelivered} == {"ghost"}
    assert [m for _, ms, _ in a_ends.undelivered for m in ms] == [("call", 1), ("call", 2)]
    assert all("not running" in reason for _, _, reason in a_ends.undelivered)
    assert a_ends.lost == []


def test_a_message_that_cannot_be_pickled_comes_back_and_the_rest_of_its_batch_arrives(hubs: Any) -> None:
    a, a_ends = hubs("a")
    _, b_ends = hubs("b")
    a.post("b", "warm-up")  # the connection is up: the batch below is one flush
    assert wait_until(lambda: b_ends.from_("a") == ["warm-up"])
    unpicklable = ("call", lambda: None)
    _in_loop(a, lambda: [a.send("b", m) for m in ("before", unpicklable, "after")])
    assert wait_until(lambda: len(b_ends.from_("a")) >= 3)
    assert b_ends.from_("a") == ["warm-up", "before", "after"]
    assert len(a_ends.undelivered) == 1
    peer, messages, reason = a_ends.undelivered[0]
    assert (peer, messages) == ("b", [unpicklable])
    assert "cannot be sent" in reason


# -- a peer's end ---------------------------------------------------------------------------------


def test_a_peer_that_dies_is_lost_once_after_everything_it_sent_arrived(hubs: Any, peers: Any) -> None:
    a, a_ends = hubs("a")
    peer = peers("p")
    a.post("p", "hello")  # the peer answers on a connection of its own: two connections to close
    assert wait_until(lambda: a_ends.from_("p") == [("echo", "p", "hello")])
    a.post("p", ("burst", 5000))
    assert peer.line() == "SENT"  # in the kernel's buffers, perhaps not yet read by `a`
    peer.kill()
    assert wait_until(lambda: a_ends.lost, timeout=10)
    assert wait_until(lambda: len(a_ends.from_("p")) >= 5001)  # nothing more is coming
    assert a_ends.lost == [("p", 5001)], "lost reported before everything sent had arrived, or twice"
    assert [m[1] for m in a_ends.from_("p")[1:]] == list(range(5000))


def test_a_peer_that_restarts_at_the_same_path_is_reached_by_the_next_send(
    hubs: Any, peers: Any, lane_dir: str
) -> None:
    a, a_ends = hubs("a")
    first = peers("p")
    a.post("p", "one")
    assert wait_until(lambda: ("echo", "p", "one") in a_ends.from_("p"))
    first.kill()
    assert wait_until(lambda: a_ends.lost)
    peers("p")
    a.post("p", "two")
    assert wait_until(lambda: ("echo", "p", "two") in a_ends.from_("p"))
    assert a_ends.undelivered == []
    assert [peer for peer, _ in a_ends.lost] == ["p"]


def test_a_hub_that_closes_in_a_live_process_is_lost_to_its_peers(hubs: Any) -> None:
    a, a_ends = hubs("a")
    b, b_ends = hubs("b")
    a.post("b", "to b")
    b.post("a", "to a")
    assert wait_until(lambda: b_ends.from_("a") and a_ends.from_("b"))
    a.close()
    assert wait_until(lambda: b_ends.lost, timeout=3), "b never heard that a closed"


# -- who may connect ------------------------------------------------------------------------------


def test_the_socket_is_only_the_users_even_under_a_permissive_umask(lane_dir: str) -> None:
    old = os.umask(0)
    try:
        hub = LaneHub(lane_dir, "private", lambda peer, message: None)
        hub.start()
    finally:
        os.umask(old)
    try:
        assert os.stat(hub.path).st_mode & 0o777 == 0o600
    finally:
        hub.close()
    assert not os.path.exists(hub.path)  # closed: the socket is gone
