"""Lanes: the per-call hops between Nova's processes, on Unix-domain stream sockets.

Each process that takes part in calls owns one `LaneHub`: an asyncio loop on a thread of its own and
a listening socket named after its role (`router`, `fallback`, `driver-openai`…) in a directory that
only the user can open; a connection from a process of another user (SO_PEERCRED) is closed before
anything on it is read, should the directory's mode ever let one in. Messages to a peer go on one
outgoing connection, opened on first use; everything queued for a peer during one loop tick is
written as one frame (a 4-byte length and a pickled list). A connection carries messages one way
only, so each side learns at once, by end-of-file, that the other has gone: `on_lost(peer, since)`.
Messages that could not be handed to a peer (it is not running, or a message does not pickle) come
back through `on_undelivered(peer, messages, reason)`, so that whoever holds those calls answers
them.

A restarted actor binds the same path; the next message to it opens a new connection, so a
restart needs no re-wiring. Every callback runs on the hub's loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["LaneHub", "lane_path"]

log = logging.getLogger("nova.lanes")
_HEADER = struct.Struct("!I")
_PICKLE = pickle.HIGHEST_PROTOCOL
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid

OnMessage = Callable[[str, Any], None]
OnLost = Callable[[str, float], None]  # (peer, time.monotonic() its first connection ended)
OnUndelivered = Callable[[str, list[Any], str], None]


def lane_path(directory: str, name: str) -> str:
    return os.path.join(directory, f"{name}.sock")


def _peer(transport: asyncio.BaseTransport) -> tuple[int, int | None]:
    """(pid, uid) of the process at the other end of a Unix socket (SO_PEERCRED, Linux); (0, None)
    where they cannot be read."""
    sock = transport.get_extra_info("socket")
    option = getattr(socket, "SO_PEERCRED", None)
    if sock is None or option is None:
        return 0, None
    try:
        pid, uid, _gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, option, _PEERCRED.size))
    except OSError:
        return 0, None
    return int(pid), int(uid)


class _Outgoing(asyncio.Protocol):
    """One connection to a peer; it never carries anything back, so any end of it means the
    peer has gone."""

    def __init__(self, hub: LaneHub, peer: str) -> None:
        self.hub, self.peer = hub, peer
        self.transport: asyncio.WriteTransport | None = None
        self.pid = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.pid, _uid = _peer(transport)
        self.hub._opened(self.peer, self.pid, self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.hub._outgoing_lost(self.peer, self)


class _Incoming(asyncio.Protocol):
    """One peer's connection to us: a hello frame naming the peer, then frames of messages."""

    def __init__(self, hub: LaneHub) -> None:
        self.hub = hub
        self.peer: str | None = None
        self.buffer = bytearray()
        self.transport: asyncio.BaseTransport | None = None
        self.pid = 0
        self.refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.pid, uid = _peer(transport)
        if uid is not None and uid != os.getuid():
            # what arrives is unpickled: close before a byte of it is read
            log.warning("lane connection from uid %d refused", uid)
            self.refused = True
            transport.close()

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        buffer = self.buffer
        buffer += data
        start = 0
        while len(buffer) - start >= 4:
            (size,) = _HEADER.unpack_from(buffer, start)
            if len(buffer) - start - 4 < size:
                break
            payload = bytes(buffer[start + 4 : start + 4 + size])
            start += 4 + size
            if self.peer is None:
                self.peer = payload.decode()
                self.hub._incoming[self.peer] = self
                self.hub._opened(self.peer, self.pid, self)
                continue
            try:
                messages = pickle.loads(payload)
            except Exception:  # a class this process cannot load: drop the frame, keep the lane
                log.exception("lane frame from %s could not be read", self.peer)
                continue
            for message in messages:
                self.hub._deliver(self.peer, message)
        del buffer[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            if self.hub._incoming.get(self.peer) is self:
                del self.hub._incoming[self.peer]
            self.hub._closed(self.peer, self.pid, self)


class _Peer:
    __slots__ = ("protocol", "queue", "connecting", "written", "watched")

    def __init__(self) -> None:
        self.protocol: _Outgoing | None = None
        self.queue: list[Any] = []
        self.connecting = True
        self.written: list[Callable[[], None]] = []  # to run once the queue is written
        self.watched = False  # opened by `watch`: a peer that is not running counts as lost


class LaneHub:
    def __init__(
        self,
        directory: str,
        name: str,
        on_message: OnMessage,
        on_lost: OnLost | None = None,
        on_undelivered: OnUndelivered | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        """`loop`: run on that (running) loop instead of a thread of its own — an asyncio caller's
        lane then needs no hand-off between threads."""
        self.directory = directory
        self.name = name
        self.path = lane_path(directory, name)
        self.on_message = on_message
        self.on_lost = on_lost or (lambda peer, since: None)
        self.on_undelivered = on_undelivered or (lambda peer, messages, reason: None)
        self.loop = loop or asyncio.new_event_loop()
        self._own_loop = loop is None
        self._loop_thread: int | None = None  # the id of the thread that runs the loop
        self._peers: dict[str, _Peer] = {}
        self._incoming: dict[str, _Incoming] = {}
        self._connections: dict[tuple[str, int], set[object]] = {}  # open, by peer name and pid
        self._ending: dict[tuple[str, int], float] = {}  # peers with a connection ended: since when
        self._dirty: set[str] = set()
        self._flush_scheduled = False
        self._later_scheduled = False
        self._server: asyncio.AbstractServer | None = None
        self._closing = False
        self._thread: threading.Thread | None = None

    # -- life -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind (so peers can connect as soon as this returns) and serve: on a thread of its own,
        or, for a hub given a loop, on that loop (call this from it)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a dead predecessor's socket
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.path)
        os.chmod(self.path, 0o600)
        sock.listen(1024)
        sock.setblocking(False)
        if not self._own_loop:
            self._loop_thread = threading.get_ident()
            self.loop.create_task(self._serve(sock))
            return
        ready = threading.Event()

        def run() -> None:
            self._loop_thread = threading.get_ident()
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self._serve(sock))
            ready.set()
            self.loop.run_forever()

        self._thread = threading.Thread(target=run, name=f"nova-lane-{self.name}", daemon=True)
        self._thread.start()
        ready.wait()

    async def _serve(self, sock: socket.socket) -> None:
        self._server = await self.loop.create_unix_server(lambda: _Incoming(self), sock=sock)

    def close(self, timeout: float = 1.0) -> None:
        """Close every connection, so that peers learn at once that this hub has gone, remove the
        socket, and end the hub's own loop. From any thread; twice is harmless; a hub whose
        borrowed loop has closed just lets go."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        if self._closing or self.loop.is_closed():
            return
        self._closing = True

        def stop() -> None:
            if self._server is not None:
                self._server.close()
            for peer in self._peers.values():
                if peer.protocol is not None and peer.protocol.transport is not None:
                    peer.protocol.transport.close()
            for incoming in self._incoming.values():
                if incoming.transport is not None:
                    incoming.transport.close()
            if self._own_loop:  # after the transports' own close callbacks have run
                self.loop.call_soon(self.loop.stop)

        if threading.get_ident() == self._loop_thread:
            stop()
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            self.loop.call_soon_threadsafe(stop)
        if self._thread is not None:
            self._thread.join(timeout)
            if not self._thread.is_alive():
                self.loop.close()

    # -- sending --------------------------------------------------------------------------------

    def send(self, peer: str, message: Any) -> None:
        """Queue `message` for `peer`; it leaves at the end of this loop tick. Loop thread only."""
        self._queue(peer, message)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def send_now(self, peer: str, messages: list[Any], then: Callable[[], None]) -> None:
        """Write `messages` to `peer` at once (not at the end of the tick), and only then run `then`:
        at once when the connection is open, else as soon as it is (or has failed). For messages
        the peer must have before anything else happens here. Loop thread only."""
        for message in messages:
            self._queue(peer, message)
        state = self._peers[peer]
        if state.connecting:
            state.written.append(then)
            return
        self._flush()
        then()

    def send_soon(self, peer: str, message: Any, delay: float) -> None:
        """Queue `message` for `peer` to leave within `delay` seconds, with whatever else goes to
        that peer by then: for messages nobody waits on (outcomes), so that they leave after the
        answers and several share one frame. Loop thread only."""
        self._queue(peer, message)
        if not self._later_scheduled:
            self._later_scheduled = True
            self.loop.call_later(delay, self._flush_later)

    def _queue(self, peer: str, message: Any) -> None:
        state = self._peers.get(peer)
        if state is None:
            state = self._peers[peer] = _Peer()
            self.loop.create_task(self._connect(peer, state))
        state.queue.append(message)
        self._dirty.add(peer)

    def watch(self, peer: str) -> None:
        """Open a connection to `peer` now, before anything is sent to it, so that its end is told
        (`on_lost`) even if nothing ever is; a peer that is not running is lost at once. Loop
        thread only."""
        if peer not in self._peers:
            state = self._peers[peer] = _Peer()
            state.watched = True
            self.loop.create_task(self._connect(peer, state))

    def _flush_later(self) -> None:
        self._later_scheduled = False
        self._flush()

    def post(self, peer: str, message: Any) -> None:
        """`send` from any thread."""
        if threading.get_ident() == self._loop_thread:
            self.send(peer, message)
        else:
            self.loop.call_soon_threadsafe(self.send, peer, message)

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run `fn(*args)` on the loop thread."""
        self.loop.call_soon_threadsafe(fn, *args)

    def _flush(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, set()
        for peer in dirty:
            state = self._peers.get(peer)
            if state is None or state.connecting or not state.queue:
                continue
            messages, state.queue = state.queue, []
            data = self._encode(peer, messages)
            if data and state.protocol is not None and state.protocol.transport is not None:
                state.protocol.transport.write(data)

    def _encode(self, peer: str, messages: list[Any]) -> bytes:
        try:
            data = pickle.dumps(messages, _PICKLE)
        except Exception:  # find the messages that cannot travel; the rest still go
            good, bad = [], []
            for message in messages:
                try:
                    pickle.dumps(message, _PICKLE)
                    good.append(message)
                except Exception as exc:
                    bad.append((message, f"{type(exc).__name__}: {exc}"))
            for message, reason in bad:
                self.on_undelivered(peer, [message], f"it cannot be sent between processes ({reason})")
            if not good:
                return b""
            data = pickle.dumps(good, _PICKLE)
        return _HEADER.pack(len(data)) + data

    async def _connect(self, peer: str, state: _Peer) -> None:
        try:
            _, protocol = await self.loop.create_unix_connection(
                lambda: _Outgoing(self, peer), lane_path(self.directory, peer)
            )
        except OSError:
            if self._peers.get(peer) is state:
                del self._peers[peer]
            messages, state.queue = state.queue, []
            if messages:
                self.on_undelivered(peer, messages, "it is not running")
            self._run_written(state)
            if state.watched:
                self._report_lost(peer, time.monotonic())
            return
        hello = self.name.encode()
        assert protocol.transport is not None
        protocol.transport.write(_HEADER.pack(len(hello)) + hello)
        state.protocol, state.connecting = protocol, False
        if state.queue:
            self._dirty.add(peer)
            self._flush()
        self._run_written(state)

    def _run_written(self, state: _Peer) -> None:
        callbacks, state.written = state.written, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("lane %s failed after a write", self.name)

    # -- receiving ------------------------------------------------------------------------------

    def _deliver(self, peer: str, message: Any) -> None:
        try:
            self.on_message(peer, message)
        except Exception:  # one bad message must not take the lane down
            log.exception("lane %s failed on %s from %s", self.name, type(message).__name__, peer)

    # A peer process is lost once every connection with it has closed: then everything it sent
    # has been delivered. Connections are told apart by the peer's pid (SO_PEERCRED), so that a
    # restarted peer's new connections are not part of its predecessor's loss, which is reported
    # once, with the moment its first connection ended.

    def _outgoing_lost(self, peer: str, protocol: _Outgoing) -> None:
        state = self._peers.get(peer)
        if state is not None and state.protocol is protocol:
            del self._peers[peer]
            if state.queue:  # queued for a peer that has gone: the sender decides (e.g. sends again)
                messages, state.queue = state.queue, []
                self.on_undelivered(peer, messages, "it is not running")
        self._closed(peer, protocol.pid, protocol)

    def _opened(self, peer: str, pid: int, connection: object) -> None:
        self._connections.setdefault((peer, pid), set()).add(connection)

    def _closed(self, peer: str, pid: int, connection: object) -> None:
        key = (peer, pid)
        open_ = self._connections.get(key)
        if open_ is None or connection not in open_:
            return
        open_.discard(connection)
        since = self._ending.setdefault(key, time.monotonic())
        if not open_:
            del self._connections[key], self._ending[key]
            self._report_lost(peer, since)

    def _report_lost(self, peer: str, since: float) -> None:
        try:
            self.on_lost(peer, since)
        except Exception:
            log.exception("lane %s failed handling the loss of %s", self.name, peer)
