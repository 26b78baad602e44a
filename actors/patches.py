"""Patches for Thespian 4.0.1 (multiprocTCPBase), applied by `apply()`.

`entitled_exit` drops an `ActorExitRequest` (or a `ChildActorExited`) to one of Nova's actors from a
sender that is not entitled to it (see `_handle_one_message`): Thespian acts on both itself, so an
actor cannot refuse them. `owner_only` closes every accepted connection that does not come from a
process of this process's own user, before a byte of it is read: Thespian unpickles what it
receives, and any local user can reach a loopback port. The peer of a loopback TCP connection is
looked up in /proc/net/tcp (Linux), by its address and port; a peer that cannot be found there
(another host, or a process that already closed) is refused too. Where /proc/net/tcp does not exist
the check is skipped, with a warning when the patch is applied. In a cluster (`allow_peers`), a
connection from an address that is neither a configured peer nor the node's own is closed first,
unread; a configured peer on another host, whose uid cannot be known, is let in.

Each Thespian message costs a few system calls on every side of every hop; the two other patches
remove some of them without changing what is delivered, to whom, or in which order:

- `first_read`: an incoming message used to be read in two `recv` calls, first 20 bytes (enough
  for the `<length>>` header) and then exactly the rest. Now the first read takes up to
  `FIRST_READ` bytes, so a message smaller than that arrives in one call. Bytes read past the end
  of a message (a sender never writes them before the ACK of the previous one, but the framing
  must not depend on it) are delivered as the socket's next message(s), exactly as the idle
  socket would have read them on the loop's next pass.
- `poll_selector`: the select loop (`_runWithExpiry`) made a new epoll selector on every pass:
  epoll_create, one epoll_ctl per socket, close. Now each thread keeps one `selectors.PollSelector`
  and only (un)registers the sockets that changed since its previous pass. poll keeps no state in
  the kernel, so a socket closed and a new one given the same fd number cannot leave a stale
  registration behind (a kept epoll set could). A registration that epoll would have refused
  fails the same way: EBADF for a closed fd, EPERM for a regular file or directory. One case is
  not caught: a number kept from an earlier pass is not checked again (that would cost a system
  call per socket per pass), so if its socket is closed and a regular file opened under the same
  number and watched (`ThespianWatch`), poll reports it always readable where epoll refused it.

`admin_life` is about life and death, not speed:

- Thespian's admin daemonizes (setsid, then forks again), so it outlives the process that started
  it, and so does everything under it. Now the admin watches its starter (`nova run`, or the
  program that embeds a system) through a pidfd and, when it has gone, removes what the system
  left on disk (`leave_behind`: its lane directory, its discovery file) and SIGKILLs its own
  process group: itself, the logger and every actor.
- The logger asks the kernel for SIGKILL when the admin dies (PR_SET_PDEATHSIG), as actors do.
- When the logger dies, the admin starts another; Thespian's code for that crashed the admin
  (it reads `admin.logDefs`, which nothing sets), so the admin is given it.

multiprocTCPBase forks its admin and actors, so patches applied in the starting process before
the system starts reach every actor. Each patch names the Thespian version it was written for;
on another version `apply()` logs a warning and leaves Thespian as it is.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import logging
import os
import select
import selectors
import shutil
import signal
import socket
import stat
import sys
import threading
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any

from thespian.actors import ActorExitRequest, ChildActorExited
from thespian.system import multiprocCommon as mpc
from thespian.system.actorManager import ActorManager
from thespian.system.transport import TCPTransport as tcp
from thespian.system.transport.errmgmt import err_recv_inprogress
from thespian.system.utilis import thesplog

__all__ = [
    "FIRST_READ",
    "WRITTEN_FOR",
    "alive",
    "allow_peers",
    "applied",
    "apply",
    "leave_behind",
    "listening_inode",
    "peer_uid",
    "restore",
]

log = logging.getLogger("nova.patches")

FIRST_READ = 256 * 1024
# patch name -> the Thespian version whose code it replaces
WRITTEN_FOR: Mapping[str, str] = {
    "first_read": "4.0.1",
    "poll_selector": "4.0.1",
    "owner_only": "4.0.1",
    "entitled_exit": "4.0.1",
    "admin_life": "4.0.1",
}

_applied: dict[str, str] = {}
_originals: dict[str, Any] = {}
_lock = threading.Lock()


def _installed_thespian() -> str:
    return metadata.version("thespian")


def apply() -> dict[str, str]:
    """Apply every patch written for the installed Thespian that is not applied yet; safe to call
    again. Returns the applied patches, each with the Thespian version it was written for."""
    with _lock:
        installed = _installed_thespian()
        for name, install in _INSTALLERS.items():
            if name in _applied:
                continue
            if installed != WRITTEN_FOR[name]:
                log.warning(
                    "Thespian %s is installed; the %s patch was written for %s and is not applied",
                    installed,
                    name,
                    WRITTEN_FOR[name],
                )
                continue
            install()
            _applied[name] = WRITTEN_FOR[name]
        return dict(_applied)


def applied() -> dict[str, str]:
    """The patches in effect in this process, each with the Thespian version it was written for."""
    with _lock:
        return dict(_applied)


def restore() -> None:
    """Put Thespian's own code back (for comparisons; actors already forked keep what they had)."""
    with _lock:
        if _applied.pop("first_read", None):
            tcp.TCPTransport._handleReadableIncoming = _originals.pop("first_read")
        if _applied.pop("poll_selector", None):
            tcp.selectors = _originals.pop("poll_selector")
        if _applied.pop("owner_only", None):
            tcp.TCPTransport._acceptNewIncoming = _originals.pop("owner_only")
        if _applied.pop("entitled_exit", None):
            ActorManager._handleOneMessage = _originals.pop("entitled_exit")
        if _applied.pop("admin_life", None):
            mpc.startAdmin, mpc._startLogger, mpc.startupASLogger = _originals.pop("admin_life")


# -- admin_life -----------------------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1
_leftovers: list[str] = []  # what the next admin forked from here removes when its starter dies
_heart: list[int] = []  # in an admin: the pid of its starter, until the watch begins
_admin: list[int] = []  # in a logger: the pid of its admin


def leave_behind(paths: list[str]) -> None:
    """Name the files and directories that the admin about to be started removes if its starter
    dies without stopping it (set before `ActorSystem(...)` forks the admin)."""
    _leftovers[:] = paths


def _install_admin_life() -> None:
    _originals["admin_life"] = (mpc.startAdmin, mpc._startLogger, mpc.startupASLogger)
    mpc.startAdmin = _start_admin
    mpc._startLogger = _start_logger
    mpc.startupASLogger = _startup_logger


def _start_admin(*args: Any, **kwargs: Any) -> Any:
    """Thespian's `startAdmin`, first noting the starter: multiprocessing forked us from it."""
    _heart[:] = [os.getppid()]
    return _originals["admin_life"][0](*args, **kwargs)


def _start_logger(
    transport_class: Any, transport: Any, admin: Any, capabilities: Any, log_defs: Any, context: Any
) -> Any:
    """Thespian's `_startLogger`; its first call is in the daemonized admin, where the watch of
    the starter begins (a thread: the logger forked next does not inherit it)."""
    admin.logDefs = log_defs  # what Thespian's restart of a dead logger reads
    _admin[:] = [os.getpid()]  # the logger's parent
    if _heart:
        heart = _heart.pop()
        threading.Thread(
            target=_watch_starter, args=(heart, list(_leftovers)), name="nova-heart", daemon=True
        ).start()
    return _originals["admin_life"][1](transport_class, transport, admin, capabilities, log_defs, context)


def _watch_starter(heart: int, leftovers: list[str]) -> None:
    try:
        fd = os.pidfd_open(heart)
    except ProcessLookupError:
        fd = None  # gone already
    except OSError:  # no pidfds here: ask every tenth of a second
        while alive(heart):
            select.select([], [], [], 0.1)
        fd = None
    if fd is not None:
        select.select([fd], [], [])  # readable once the process has exited
    thesplog("the starter (pid %s) has gone: the system stops with it", heart, level=logging.WARNING)
    for path in leftovers:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)
    os.killpg(os.getpgrp(), signal.SIGKILL)


def alive(pid: int) -> bool:
    """Whether process `pid` exists (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _startup_logger(*args: Any, **kwargs: Any) -> Any:
    """Thespian's `startupASLogger`, in a logger that the kernel kills when the admin dies."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if _admin and os.getppid() != _admin[0]:  # the admin died before the kernel was asked
        os._exit(0)
    return _originals["admin_life"][2](*args, **kwargs)


# -- entitled_exit --------------------------------------------------------------------------------


def _install_entitled_exit() -> None:
    _originals["entitled_exit"] = ActorManager._handleOneMessage
    ActorManager._handleOneMessage = _handle_one_message


def _handle_one_message(self: Any, envelope: Any) -> Any:
    """Thespian's `ActorManager._handleOneMessage`, which, for an actor that asks for it (Nova's
    own: `refuses_unentitled_exits`), first drops an `ActorExitRequest` from anyone but its
    parent, the admin or itself, and a `ChildActorExited` from anyone but itself or that child:
    Thespian acts on both before the actor can refuse them (it stops the actor; it forgets the
    child). A user's actor keeps Thespian's rules: whoever created it may stop it."""
    message, sender = envelope.message, envelope.sender
    me = self.transport.myAddress
    if not getattr(self.actorInst, "refuses_unentitled_exits", False):
        return _originals["entitled_exit"](self, envelope)
    if isinstance(message, ActorExitRequest):
        entitled = sender == me or sender == self._parentAddr or sender == self._adminAddr
    elif isinstance(message, ChildActorExited):
        entitled = sender == me or sender == message.childAddress
    else:
        return _originals["entitled_exit"](self, envelope)
    if not entitled:
        thesplog("dropped a %s from %s", type(message).__name__, sender, level=logging.WARNING)
        return True  # carry on
    return _originals["entitled_exit"](self, envelope)


# -- owner_only -----------------------------------------------------------------------------------

_TCP_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
_TCP_CHECKED = os.path.exists(_TCP_TABLES[0])


def _install_owner_only() -> None:
    if not os.path.exists(_TCP_TABLES[0]):
        log.warning("no /proc/net/tcp here: connections from other users cannot be refused")
    _originals["owner_only"] = tcp.TCPTransport._acceptNewIncoming
    tcp.TCPTransport._acceptNewIncoming = _accept_new_incoming


_peers: frozenset[str] | None = None  # in a cluster: the addresses connections may come from


def allow_peers(addresses: list[str] | None) -> None:
    """Hear TCP connections only from these addresses (IPs or host names, resolved now); None:
    from anywhere the uid check lets in (one node). Set before the system forks: its processes
    inherit it."""
    global _peers
    if addresses is None:
        _peers = None
        return
    resolved: set[str] = set()
    for address in addresses:
        try:
            infos = socket.getaddrinfo(address, None, proto=socket.IPPROTO_TCP)
        except OSError:
            log.warning("cluster peer %r does not resolve; connections from it are refused", address)
            continue
        resolved.update(_normal(str(info[4][0])) for info in infos)
    _peers = frozenset(resolved)


def _normal(host: str) -> str:
    ip = ipaddress.ip_address(host.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def _heard(connection: socket.socket) -> tuple[bool, Any]:
    """Whether an accepted connection may be read, and what names its peer in the log."""
    try:
        host = _normal(str(connection.getpeername()[0]))
    except (OSError, ValueError):
        return False, "an unknown address"
    if _peers is not None and host not in _peers:
        return False, f"{host} (not a cluster peer)"
    if not _TCP_CHECKED:
        return True, host
    uid = peer_uid(connection)
    if uid is None and _peers is not None and not ipaddress.ip_address(host).is_loopback:
        return True, host  # a configured peer on another host
    return uid == os.getuid(), f"{host} (uid {uid})"


def _accept_new_incoming(self: Any) -> None:
    """Thespian's `TCPTransport._acceptNewIncoming`, which closes a connection from another user
    as soon as it is accepted. (Not by failing the accept: Thespian's path for a failed accept
    queues a marker that its admin's loop crashes on.)"""
    accepted = False
    try:
        lsock, rmt_tx_addr = self.new_socket(self.socket.accept)
        accepted = True
    except OSError as ex:
        thesplog("Error accepting incoming: %s", ex)
    if accepted:
        heard, who = _heard(lsock)
        if not heard:
            lsock.close()
            thesplog("refused a connection from %s", who, level=logging.WARNING)
            self._check_indicators()
            return
    # from here on, Thespian's own code
    self._check_indicators()
    if not accepted or rmt_tx_addr == self.myAddress:
        self._incomingEnvelopes.append(tcp.Thespian__UpdateWork())
    if not accepted:
        return
    lsock.setblocking(0)
    try:  # Nagle off: headers and ACKs leave at once
        lsock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as e:
        if e.errno != errno.EINVAL:  # some systems refuse it on a socket being set up or torn down
            raise
    incoming = tcp.TCPIncomingPersistent if hasattr(self, "_openSockets") else tcp.TCPIncoming
    self._incomingSockets[lsock.fileno()] = incoming(tcp.ActorAddress(None), lsock)


def _proc_hex(address: Any, v6_table: bool) -> str | None:
    """`address` (host, port) as /proc/net/tcp{,6} writes it: the address's 32-bit words each in
    host byte order (little-endian here), in hex, then the port. None: not in that table."""
    ip = ipaddress.ip_address(str(address[0]).split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv4Address):
        packed = ipaddress.IPv6Address(f"::ffff:{ip}").packed if v6_table else ip.packed
    elif v6_table:
        packed = ip.packed
    else:
        return None
    words = "".join(packed[i : i + 4][::-1].hex() for i in range(0, len(packed), 4))
    return f"{words.upper()}:{int(address[1]):04X}"


def peer_uid(connection: socket.socket) -> int | None:
    """The uid of the local process at the other end of an accepted TCP connection, from
    /proc/net/tcp{,6}: the row whose local end is the peer and remote end is us. None when there
    is no such row (not a local peer, or it has closed)."""
    try:
        ours, theirs = connection.getsockname(), connection.getpeername()
    except OSError:
        return None
    for table in _TCP_TABLES:
        local, remote = _proc_hex(theirs, table.endswith("6")), _proc_hex(ours, table.endswith("6"))
        if local is None or remote is None:
            continue
        try:
            with open(table) as rows:
                for row in rows:
                    fields = row.split()
                    if len(fields) > 7 and fields[1] == local and fields[2] == remote:
                        return int(fields[7])
        except (OSError, ValueError):
            continue
    return None


def listening_inode(address: tuple[str, int]) -> str | None:
    """The inode of the socket listening on `address` (host, port), from /proc/net/tcp{,6}; None
    when nothing listens there. A socket listening on every address counts."""
    for table in _TCP_TABLES:
        v6 = table.endswith("6")
        exact = _proc_hex(address, v6)
        if exact is None:
            continue
        anywhere = _proc_hex(("::" if v6 else "0.0.0.0", address[1]), v6)
        try:
            with open(table) as rows:
                for row in rows:
                    fields = row.split()
                    if len(fields) > 9 and fields[3] == "0A" and fields[1] in (exact, anywhere):
                        return fields[9]
        except OSError:
            continue
    return None


# -- first_read -----------------------------------------------------------------------------------


def _install_first_read() -> None:
    _originals["first_read"] = tcp.TCPTransport._handleReadableIncoming
    tcp.TCPTransport._handleReadableIncoming = _handle_readable_incoming


def _handle_readable_incoming(self: Any, inc: Any, has_exclusive_flag: bool = False) -> Any:
    """Thespian's `TCPTransport._handleReadableIncoming` with a larger first read."""
    header_read = inc._rData._size is not None
    try:
        rdata = inc.socket.recv(min(1024000, inc.remainingSize()) if header_read else FIRST_READ)
        inc.failCount = 0
    except OSError as e:
        inc.failCount = getattr(inc, "failCount", 0) + 1
        if err_recv_inprogress(e.errno) and inc.failCount < tcp.MAX_CONSECUTIVE_READ_FAILURES:
            inc.backoffPause(True)
            return inc
        inc.close()
        return None
    if not rdata:
        # readable but empty: the remote closed before the message was complete
        inc.close()
        return None
    try:
        inc.addData(rdata)
    except Exception:
        thesplog("corrupted incoming data; closing socket", level=logging.WARNING)
        inc.close()
        return None
    return _deliver(self, inc, has_exclusive_flag)


def _deliver(transport: Any, inc: Any, has_exclusive_flag: bool) -> Any:
    """Hand each complete message to Thespian's `_addedDataToIncoming` one at a time, as if the
    bytes after it had been read on a later pass (its own handling of such bytes drops them)."""
    while True:
        buffer = inc._rData
        following = buffer._extra
        if following:
            buffer.removeExtra()
        pending = transport._addedDataToIncoming(inc, has_exclusive_flag=has_exclusive_flag)
        if not following or not isinstance(inc, tcp.TCPIncomingPersistent) or inc.socket is None:
            # nothing after it, or the socket is closed now (as it is after a one-message
            # connection's message, or bad data) and the bytes after it go with it
            return pending
        # The socket went back to the idle sockets; take it out again, as the loop does when an
        # idle socket turns readable, and carry on with the bytes already read.
        idle = getattr(transport, "_openSockets", {})
        key = tcp.opsKey(inc.fromAddress)
        if key in idle and idle[key].socket is inc.socket:
            del idle[key]
        inc = tcp.TCPIncomingPersistent(inc.fromAddress, inc.socket)
        try:
            inc.addData(following)
        except Exception:
            thesplog("corrupted incoming data; closing socket", level=logging.WARNING)
            inc.close()
            return None


# -- poll_selector --------------------------------------------------------------------------------


def _install_poll_selector() -> None:
    _originals["poll_selector"] = tcp.selectors
    tcp.selectors = _SelectorsForTransport()


class _SelectorsForTransport:
    """What the name `selectors` means inside Thespian's TCPTransport module once patched."""

    EVENT_READ = selectors.EVENT_READ
    EVENT_WRITE = selectors.EVENT_WRITE

    def DefaultSelector(self) -> _PassSelector:  # noqa: N802 - the name the transport calls
        return _PassSelector()


class _Poll:
    """A poll object that raises EBADF for a registered fd that is not open (POLLNVAL), as a new
    epoll selector would have when registering it."""

    def __init__(self) -> None:
        self._poll = select.poll()

    def register(self, fd: int, mask: int) -> None:
        self._poll.register(fd, mask)

    def modify(self, fd: int, mask: int) -> None:
        self._poll.modify(fd, mask)

    def unregister(self, fd: int) -> None:
        self._poll.unregister(fd)

    def poll(self, timeout: int | None = None) -> list[tuple[int, int]]:
        ready = self._poll.poll(timeout)
        for fd, event in ready:
            if event & select.POLLNVAL:
                raise OSError(errno.EBADF, f"fd {fd} is not open")
        return ready


class _CheckedPollSelector(selectors.PollSelector):
    _selector_cls = _Poll


_kept = threading.local()


def _kept_selector() -> _CheckedPollSelector:
    """This thread's selector (a poll object refuses to be polled from two threads at once)."""
    selector: _CheckedPollSelector | None = getattr(_kept, "selector", None)
    if selector is None:
        selector = _kept.selector = _CheckedPollSelector()
    return selector


def _check_like_epoll(fd: int) -> None:
    """Raise what registering `fd` with epoll would: EBADF when closed, EPERM for a regular file
    or directory (poll would report those ready forever)."""
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))


class _PassSelector:
    """Stands in for the new selector of one loop pass: collects the pass's registrations, then
    brings this thread's kept selector in line with them and polls it."""

    def __init__(self) -> None:
        self._wanted: dict[int, int] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> None:
        # the checks BaseSelector.register makes, in its order
        if not events or events & ~(selectors.EVENT_READ | selectors.EVENT_WRITE):
            raise ValueError(f"Invalid events: {events!r}")
        fd = fileobj if isinstance(fileobj, int) else int(fileobj.fileno())
        if fd < 0:
            raise ValueError(f"Invalid file descriptor: {fd}")
        if fd in self._wanted:
            raise KeyError(f"{fileobj!r} (FD {fd}) is already registered")
        self._wanted[fd] = events

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        kept = _kept_selector()
        registered = kept.get_map()
        for fd in [fd for fd in registered if fd not in self._wanted]:
            kept.unregister(fd)
        for fd, events in self._wanted.items():
            key = registered.get(fd)
            if key is None:
                _check_like_epoll(fd)
                kept.register(fd, events)
            elif key.events != events:
                kept.modify(fd, events)
        return kept.select(timeout)

    def close(self) -> None:
        self._wanted.clear()  # the kept selector stays for the thread's next pass


_INSTALLERS: dict[str, Callable[[], None]] = {
    "first_read": _install_first_read,
    "poll_selector": _install_poll_selector,
    "owner_only": _install_owner_only,
    "entitled_exit": _install_entitled_exit,
    "admin_life": _install_admin_life,
}
