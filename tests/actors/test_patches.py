"""nova.actors.patches: Thespian's TCP transport, patched, delivers exactly what it delivered before.

The transport tests run against Thespian's own code and against the patched code: the same bytes
must give the same messages, in the same order, each acknowledged once. The last tests start a
real multiprocTCPBase system after `apply()` and relay messages through its actors.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from thespian.actors import Actor, ActorAddress, ActorSystem  # type: ignore[import-untyped]
from thespian.system.transport import ExternalInterfaceTransportInit, ReceiveEnvelope  # type: ignore[import-untyped]
from thespian.system.transport import TCPTransport as tcp
from thespian.system.transport.IPBase import TCPv4ActorAddress  # type: ignore[import-untyped]
from thespian.system.transport.streamBuffer import ackMsg, toSendBuffer  # type: ignore[import-untyped]

from bench.floor import Hop, Relay
from nova.actors import patches
from nova.supervisors.system import bind_to
from tests.integration_helpers import next_port, session_of, session_pids
from tests.waiting import wait_until

ORIGINAL_READ = tcp.TCPTransport._handleReadableIncoming
ORIGINAL_ACCEPT = tcp.TCPTransport._acceptNewIncoming
ALL_PATCHES = {
    "first_read": "4.0.1",
    "poll_selector": "4.0.1",
    "owner_only": "4.0.1",
    "entitled_exit": "4.0.1",
    "admin_life": "4.0.1",
}
SENDER = ("127.0.0.1", 19698)  # an address the frames claim to come from; nothing listens there


@pytest.fixture
def patched() -> Iterator[None]:
    """Patches applied for the test; this process is left as the test found it."""
    before = patches.applied()
    patches.apply()
    yield
    if not before:
        patches.restore()


@pytest.fixture
def unpatched() -> Iterator[None]:
    before = patches.applied()
    patches.restore()
    yield
    if before:
        patches.apply()


@pytest.fixture(params=["thespian", "patched"])
def variant(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each transport test runs on Thespian's own code and on the patched code."""
    fixture = "unpatched" if request.param == "thespian" else "patched"
    request.getfixturevalue(fixture)
    yield request.param


# -- apply ----------------------------------------------------------------------------------------


def test_apply_applies_each_patch_once_and_names_the_thespian_version(unpatched: None) -> None:
    try:
        assert patches.apply() == ALL_PATCHES
        assert tcp.TCPTransport._handleReadableIncoming is not ORIGINAL_READ
        assert tcp.selectors is not selectors
        assert tcp.TCPTransport._acceptNewIncoming is not ORIGINAL_ACCEPT
        read, selector_module = tcp.TCPTransport._handleReadableIncoming, tcp.selectors
        assert patches.apply() == patches.applied() == ALL_PATCHES
        assert tcp.TCPTransport._handleReadableIncoming is read and tcp.selectors is selector_module
    finally:
        patches.restore()
    # applying twice did not wrap the patch around itself: restoring gives Thespian's own code back
    assert tcp.TCPTransport._handleReadableIncoming is ORIGINAL_READ
    assert tcp.TCPTransport._acceptNewIncoming is ORIGINAL_ACCEPT
    assert tcp.selectors is selectors
    assert patches.applied() == {}


def test_apply_leaves_another_thespian_version_unpatched(
    unpatched: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(patches, "_installed_thespian", lambda: "4.0.2")
    with caplog.at_level(logging.WARNING, logger="nova.patches"):
        assert patches.apply() == {}
    assert tcp.TCPTransport._handleReadableIncoming is ORIGINAL_READ
    assert tcp.TCPTransport._acceptNewIncoming is ORIGINAL_ACCEPT
    assert tcp.selectors is selectors
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == len(ALL_PATCHES) and all("4.0.2" in w and "4.0.1" in w for w in warned), warned


# -- the transport, fed raw bytes -----------------------------------------------------------------


def frame(message: Any) -> bytes:
    """A message as a Thespian actor at SENDER puts it on the wire."""
    sender = ActorAddress(TCPv4ActorAddress(*SENDER, external=True))
    return toSendBuffer((sender, message), pickle.dumps)  # type: ignore[no-any-return]


def frame_of_length(length: int, tag: str) -> tuple[bytes, Any]:
    """A frame of exactly `length` bytes (a message carrying a bytes payload), and its message."""
    size = length
    for _ in range(10):
        message = (tag, b"x" * size)
        data = frame(message)
        if len(data) == length:
            return data, message
        size += length - len(data)
    raise AssertionError(f"no frame of exactly {length} bytes")


class Peer:
    """A raw TCP connection to a transport, speaking Thespian's framing."""

    def __init__(self, transport: Any) -> None:
        self.sock = socket.create_connection(transport.socket.getsockname(), timeout=10)
        self.acks = b""
        self._writer: threading.Thread | None = None

    def send(self, data: bytes) -> None:
        """Writes from a thread: a write larger than the socket buffers waits for the reader."""
        self.wait_sent()
        self._writer = threading.Thread(target=self.sock.sendall, args=(data,), daemon=True)
        self._writer.start()

    def wait_sent(self) -> None:
        if self._writer is not None:
            self._writer.join(timeout=30)
            assert not self._writer.is_alive(), "the transport stopped reading"

    def read_acks(self, count: int) -> None:
        while len(self.acks) < count * len(ackMsg):
            chunk = self.sock.recv(65536)
            assert chunk, "the transport closed the connection"
            self.acks += chunk
        assert self.acks == ackMsg * count, self.acks[:200]

    def close(self) -> None:
        self.wait_sent()
        self.sock.close()


@pytest.fixture
def transport(variant: str) -> Iterator[Any]:
    bind_to("127.0.0.1")
    t = tcp.TCPTransport(ExternalInterfaceTransportInit(), {"Admin Port": 19699}, {"version": 1}, None)
    yield t
    t.close()


def receive(transport: Any, count: int, timeout: float = 30.0) -> list[Any]:
    """The next `count` messages the transport delivers, within `timeout`."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        result = transport.run(None, timedelta(seconds=0.2))
        if isinstance(result, ReceiveEnvelope):
            got.append(result.message)
    assert len(got) == count, f"{len(got)} of {count} messages arrived"
    return got


def nothing_more(transport: Any) -> bool:
    result = transport.run(None, timedelta(seconds=0.1))
    return not isinstance(result, ReceiveEnvelope)


def held_bytes(transport: Any) -> int:
    """How many bytes of an unfinished message the transport has read so far."""
    held = 0
    for incoming in transport._incomingSockets.values():
        buffer = incoming._rData
        header = len(str(buffer._size)) + 1 if buffer._size is not None else 0
        held += header + len(buffer._buf)
    return held


def test_messages_written_together_arrive_each_once_in_order(transport: Any) -> None:
    messages = [("small", 1), ("text", "é" * 3000), ("small", 2), ("bytes", b"\0" * 70_000)]
    peer = Peer(transport)
    try:
        peer.send(b"".join(frame(m) for m in messages))
        assert receive(transport, len(messages)) == messages
        peer.read_acks(len(messages))
        assert nothing_more(transport)
    finally:
        peer.close()


@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_a_message_ending_at_the_first_read_boundary_and_the_next_both_arrive(
    transport: Any, delta: int
) -> None:
    data, message = frame_of_length(patches.FIRST_READ + delta, "edge")
    peer = Peer(transport)
    try:
        peer.send(data + frame(("after", delta)) + frame(("last", delta)))
        assert receive(transport, 3) == [message, ("after", delta), ("last", delta)]
        peer.read_acks(3)
    finally:
        peer.close()


def test_messages_larger_than_the_first_read_arrive_whole(transport: Any) -> None:
    messages = [("big", os.urandom(3 * 1024 * 1024 + 7)), ("small", 3), ("big", b"y" * 600_000)]
    peer = Peer(transport)
    try:
        for message in messages:  # one at a time, each after the previous ACK, as Thespian sends
            peer.send(frame(message))
            assert receive(transport, 1) == [message]
        peer.read_acks(len(messages))
    finally:
        peer.close()


def read_first_part(transport: Any, size: int) -> bool:
    return nothing_more(transport) and held_bytes(transport) == size


def test_a_message_split_anywhere_near_its_header_arrives_once(transport: Any) -> None:
    """The header ("<length>>") and Thespian's 20-byte first read: split each message there."""
    peer = Peer(transport)
    try:
        for split in range(1, 41):
            message = ("split", split)
            data = frame(message)
            peer.send(data[:split])
            peer.wait_sent()
            # wait until the transport has read the first part, so the rest is a separate read
            assert wait_until(partial(read_first_part, transport, split)), (
                f"the transport did not read the first {split} bytes"
            )
            peer.send(data[split:])
            assert receive(transport, 1) == [message]
            peer.read_acks(split)
        assert nothing_more(transport)
    finally:
        peer.close()


def test_a_message_cut_short_by_its_sender_is_dropped_and_the_connection_closed(transport: Any) -> None:
    peer = Peer(transport)
    try:
        data = frame(("cut", b"z" * 5000))
        peer.send(data[:3000])
        peer.wait_sent()
        peer.sock.shutdown(socket.SHUT_WR)
        assert wait_until(lambda: nothing_more(transport) and not transport._incomingSockets)
        assert peer.sock.recv(100) == b""  # closed, and no ACK for the incomplete message
    finally:
        peer.close()


# -- the kept selector, against a new epoll selector per pass -------------------------------------


@dataclass
class Case:
    """File descriptors to register for one pass: (fd, events) pairs, made from live objects."""

    name: str
    make: Callable[[contextlib.ExitStack, Path], list[tuple[int, int]]]


def _pair(stack: contextlib.ExitStack, readable: bool) -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    stack.callback(a.close)
    stack.callback(b.close)
    if readable:
        b.send(b"!")
    return a, b


def _closed_fd(stack: contextlib.ExitStack) -> int:
    """A number that named a socket and is closed now; high, so that no new fd (such as the
    epoll selector's own) takes it during the test."""
    a, _ = _pair(stack, readable=False)
    fd = os.dup2(a.fileno(), 900)
    os.close(fd)
    return fd


def _regular_file(stack: contextlib.ExitStack, tmp: Path) -> int:
    """A regular file under a number no socket of an earlier test had (see actors.patches)."""
    opened = os.open(tmp / "file", os.O_RDWR | os.O_CREAT)
    fd = os.dup2(opened, 901)
    os.close(opened)
    stack.callback(os.close, fd)
    return fd


R, W = selectors.EVENT_READ, selectors.EVENT_WRITE
CASES = [
    Case("readable", lambda s, t: [(_pair(s, True)[0].fileno(), R)]),
    Case("idle", lambda s, t: [(_pair(s, False)[0].fileno(), R)]),
    Case("writable", lambda s, t: [(_pair(s, False)[0].fileno(), W)]),
    Case("read and write", lambda s, t: [(_pair(s, True)[0].fileno(), R | W)]),
    Case("several", lambda s, t: [(_pair(s, r)[0].fileno(), R) for r in (True, False, True)]),
    Case("closed fd", lambda s, t: [(_pair(s, True)[0].fileno(), R), (_closed_fd(s), R)]),
    Case("regular file", lambda s, t: [(_regular_file(s, t), R)]),
    Case("negative fd", lambda s, t: [(-1, R)]),
    Case("twice", lambda s, t: [(fd, R) for fd in [_pair(s, True)[0].fileno()] * 2]),
    Case(
        "read and write apart", lambda s, t: [(fd, e) for fd in [_pair(s, True)[0].fileno()] for e in (R, W)]
    ),
]


def one_pass(make_selector: Callable[[], Any], wanted: list[tuple[int, int]]) -> Any:
    """What one pass of the transport's loop sees: ready (fd, events), or the error it gets."""
    selector = make_selector()
    try:
        for fd, events in wanted:
            selector.register(fd, events)
        return sorted((key.fd, events) for key, events in selector.select(0))
    except (OSError, ValueError, KeyError) as exc:
        return type(exc), getattr(exc, "errno", None)
    finally:
        selector.close()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_the_kept_selector_sees_what_a_new_epoll_selector_sees(
    patched: None, case: Case, tmp_path: Path
) -> None:
    kept = tcp.selectors.DefaultSelector
    with contextlib.ExitStack() as stack:
        wanted = case.make(stack, tmp_path)
        expected = one_pass(selectors.EpollSelector, wanted)
        assert one_pass(kept, wanted) == expected
        assert one_pass(kept, wanted) == expected  # the second pass keeps the registrations


def test_a_reused_fd_number_is_watched_as_its_new_socket(patched: None) -> None:
    kept = tcp.selectors.DefaultSelector
    with contextlib.ExitStack() as stack:
        old, _ = _pair(stack, readable=False)
        fd = old.fileno()
        assert one_pass(kept, [(fd, R)]) == []
        new, writer = _pair(stack, readable=False)
        os.dup2(new.fileno(), fd)  # the old socket's number now names the new one
        writer.send(b"!")
        assert one_pass(kept, [(fd, R)]) == [(fd, R)]


def test_threads_each_run_their_own_passes(patched: None) -> None:
    kept = tcp.selectors.DefaultSelector
    failures: list[BaseException] = []
    with contextlib.ExitStack() as stack:
        pairs = [_pair(stack, readable=True) for _ in range(2)]

        def passes(fd: int) -> None:
            try:
                for _ in range(300):
                    assert one_pass(kept, [(fd, R)]) == [(fd, R)]
            except BaseException as exc:  # noqa: BLE001 - reported by the test thread
                failures.append(exc)

        threads = [threading.Thread(target=passes, args=(a.fileno(),)) for a, _ in pairs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    assert not failures, failures


# -- a real system ----------------------------------------------------------------------------------


class Inspect(Actor):  # type: ignore[misc]
    """Answers with the patches in effect in its own (forked) process."""

    def receiveMessage(self, message: Any, sender: Any) -> None:  # noqa: N802 - Thespian's name
        if message == "patches?":
            self.send(sender, (os.getpid(), patches.applied()))


@pytest.fixture(scope="module")
def system() -> Iterator[Any]:
    before = patches.applied()
    patches.apply()
    bind_to("127.0.0.1")
    port = next_port()
    asys = ActorSystem("multiprocTCPBase", {"Admin Port": port}, logDefs={"version": 1}, transientUnique=True)
    sid = session_of(port)
    try:
        assert sid is not None, "no admin listens on the system's port"
        yield asys
    finally:
        asys.shutdown()
        if not before:
            patches.restore()
        if sid is not None:
            gone = wait_until(lambda: not session_pids(sid), timeout=10.0)
            left = [] if gone else session_pids(sid)
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            assert not left, f"processes of the stopped system still alive: {left}"


@pytest.fixture(scope="module")
def relays(system: Any) -> tuple[Any, Any]:
    return system.createActor(Relay), system.createActor(Relay)


def relayed(system: Any, relays: tuple[Any, Any], payloads: list[Any], timeout: float = 60.0) -> list[Any]:
    """Sends each payload caller -> relay -> relay -> caller, all at once; the payloads that came
    back, in arrival order."""
    first, second = relays
    got: list[Any] = []
    with system.private() as ctx:
        for payload in payloads:
            ctx.tell(first, Hop((second,), None, payload))
        deadline = time.monotonic() + timeout
        while len(got) < len(payloads) and (left := deadline - time.monotonic()) > 0:
            reply = ctx.listen(left)
            if reply is not None:
                got.append(reply)
    return got


@pytest.mark.integration
def test_actors_of_a_system_started_after_apply_run_patched(system: Any) -> None:
    actor = system.createActor(Inspect)
    pid, in_actor = system.ask(actor, "patches?", 10)
    assert pid != os.getpid()
    assert in_actor == ALL_PATCHES


@pytest.mark.integration
def test_messages_around_the_header_size_are_relayed_intact(system: Any, relays: tuple[Any, Any]) -> None:
    payloads = [b"h" * n for n in range(0, 41)]
    assert relayed(system, relays, payloads) == payloads


@pytest.mark.integration
def test_messages_larger_than_the_first_read_are_relayed_intact(system: Any, relays: tuple[Any, Any]) -> None:
    payloads = [os.urandom(patches.FIRST_READ + d) for d in (-1, 0, 1)] + [os.urandom(3 * 1024 * 1024 + 7)]
    got = relayed(system, relays, payloads)
    assert sorted(map(len, got)) == sorted(map(len, payloads))
    assert set(got) == set(payloads)


@pytest.mark.integration
def test_a_burst_of_2000_messages_is_relayed_each_once_in_order(system: Any, relays: tuple[Any, Any]) -> None:
    payloads = list(range(2000))
    assert relayed(system, relays, payloads, timeout=120) == payloads
