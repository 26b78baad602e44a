"""Starts, finds and stops Nova's actor system (Thespian multiprocTCPBase).

- Every Thespian socket binds to the configured host (default 127.0.0.1): Thespian itself binds
  0.0.0.0 and its messages are pickles, so anyone who reached a port could run code.
- The admin daemon inherits the starter's stdout/stderr; a starter whose output is a pipe (CI,
  `| tee`) would hang until shutdown, so the system is started with both pointed at /dev/null and
  actors log to a file instead.
- `Heart` is the root's supervisor: Thespian never restarts a top-level actor, so `nova run`
  pings the root and, when it stops answering, shuts everything down and exits non-zero.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nova.config import NovaConfig
from nova.errors import ConfigurationError, DriverUnavailableError

__all__ = ["NovaSystem", "bind_to", "name_messages_by_type", "port_in_use", "preflight"]

log = logging.getLogger("nova.system")
BASE = "multiprocTCPBase"
_patched_host: str | None = None


def bind_to(host: str) -> None:
    """Make every Thespian socket of this process, and of processes it forks, bind to `host`."""
    global _patched_host
    from thespian.system.transport import IPBase

    os.environ["THESPIAN_BASE_IPADDR"] = host
    if _patched_host is None:
        original = IPBase.IPActorAddress.__init__

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            if self.bindname and self.bindname[0] == "" and _patched_host:
                self.bindname = (_patched_host, self.bindname[1])

        IPBase.IPActorAddress.__init__ = __init__
    _patched_host = host


def name_messages_by_type() -> None:
    """Make Thespian describe a message in its logs by type and address only, never by `str(message)`.

    Thespian formats `str(message)` for each of its DEBUG log calls, whether or not they are
    logged: three times per message hop, 10-80 us each for Nova's messages (more for long
    prompts), about a tenth of the pipeline's CPU per call. Its WARNING/ERROR lines (a transmit
    that timed out or became a poison message) would also copy prompts, answers or a driver's
    options (its API key) into thespian.log and nova.log. Forked actor processes inherit this.
    """
    from thespian.system.transport import ReceiveEnvelope, TransmitIntent

    def intent(self: Any) -> str:
        return f"TransmitIntent(to {self.targetAddr}, {type(self.message).__name__}, result {self.result})"

    def envelope(self: Any) -> str:
        return f"ReceiveEnvelope(from {self.sender}, {type(self.message).__name__})"

    TransmitIntent.identify = intent
    ReceiveEnvelope.identify = envelope


def preflight(config: NovaConfig) -> None:
    """`nova.config.preflight` with the lanes this system will bind (their socket paths' length)."""
    from nova.actors.protocol import driver_lane
    from nova.config import preflight as check

    names = [driver_lane(name, d.processes - 1) for name, d in config.drivers.items()]
    check(config, lane_names=[*names, "caller-4194304-99999"])  # a bridge's lane at Linux's largest pid


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


@contextlib.contextmanager
def _quiet_stdio() -> Iterator[None]:
    """Point fds 1 and 2 at /dev/null while the admin daemon forks, then restore them."""
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def _log_defs(config: NovaConfig) -> dict[str, Any]:
    state = Path(config.system.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    file = config.system.log_file or str(state / "nova.log")
    return {
        "version": 1,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "filename": file,
                "formatter": "plain",
                "level": config.system.log_level,
            }
        },
        "root": {"handlers": ["file"], "level": config.system.log_level},
    }


class NovaSystem:
    """A handle on a running Nova actor system: `start` a new one or `attach` to a running one."""

    def __init__(
        self,
        config: NovaConfig,
        asys: Any,
        root: Any,
        router: Any,
        event_bus: Any,
        owned: bool,
        lanes: str | None = None,
    ) -> None:
        self.config = config
        self.asys = asys
        self.root = root
        self.router = router
        self.event_bus = event_bus
        self.owned = owned  # this process started it and stops it
        self.lanes = lanes or config.system.lane_dir or ""  # the directory of the lanes' sockets

    @classmethod
    def start(cls, config: NovaConfig, *, timeout: float = 30.0) -> NovaSystem:
        from thespian.actors import ActorSystem

        from nova.supervisors.tree import RootSupervisor, Start

        # What would fail inside an actor (a driver option, a plugin, an unwritable file) fails
        # here, naming the key: an actor that dies at start would fail every call instead.
        preflight(config)
        host, port = config.system.host, config.system.admin_port
        if port_in_use(host, port):
            raise ConfigurationError(
                f"{config.source}: system.admin_port {port} is already in use "
                "(a running `nova run`? use attach, or pick another port)"
            )
        if config.server.enabled and port_in_use(config.server.host, config.server.port):
            raise ConfigurationError(
                f"{config.source}: server.port {config.server.port} on {config.server.host} is already in use"
            )
        from nova.actors.base import STARTER_PID
        from nova.actors.patches import apply as apply_thespian_patches

        bind_to(host)
        name_messages_by_type()
        apply_thespian_patches()  # before the admin forks: every actor process inherits them
        os.environ[STARTER_PID] = str(os.getpid())  # whom the root and router take Start and Drain from
        if config.system.lane_dir is None:  # a directory only this user can open (mode 0700)
            system = config.system.model_copy(update={"lane_dir": tempfile.mkdtemp(prefix=f"nova-{port}-")})
            config = config.model_copy(update={"system": system})
        else:
            Path(config.system.lane_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        capabilities = {"Admin Port": port, "Nova Host": host}
        with _quiet_stdio():
            asys = ActorSystem(BASE, capabilities, logDefs=_log_defs(config), transientUnique=True)
        try:
            root = asys.createActor(RootSupervisor, globalName="nova")
            reply = asys.ask(root, Start(config), timeout)
            if reply is None or not hasattr(reply, "router"):
                raise DriverUnavailableError(f"Nova's actor tree did not start within {timeout}s")
        except BaseException:
            asys.shutdown()
            raise
        return cls(config, asys, root, reply.router, reply.event_bus, owned=True)

    @classmethod
    def attach(cls, config: NovaConfig, *, timeout: float = 10.0) -> NovaSystem | None:
        """The system running on the configured admin port, or None when nothing runs there."""
        from thespian.actors import ActorSystem

        from nova.messages import WhereIsRouter
        from nova.supervisors.tree import RootSupervisor

        host, port = config.system.host, config.system.admin_port
        if not port_in_use(host, port):
            return None
        bind_to(host)
        name_messages_by_type()
        # transientUnique: without it Thespian hands back this process's first ActorSystem, still
        # bound to whatever admin it was made for (a stopped system, another port).
        asys = ActorSystem(BASE, {"Admin Port": port}, transientUnique=True)
        root = asys.createActor(RootSupervisor, globalName="nova")
        reply = asys.ask(root, WhereIsRouter(), timeout)
        if reply is None or not hasattr(reply, "router"):
            raise DriverUnavailableError(
                f"a Thespian system runs on port {port} but Nova's root does not answer"
            )
        return cls(config, asys, root, reply.router, reply.event_bus, owned=False, lanes=reply.lanes)

    def ping(self, timeout: float = 1.0) -> bool:
        from nova.actors.base import Ping, Pong

        with self.asys.private() as ctx:
            reply = ctx.ask(self.root, Ping(), timeout)
        return isinstance(reply, Pong)

    def ask(self, address: Any, message: Any, timeout: float) -> Any:
        with self.asys.private() as ctx:
            return ctx.ask(address, message, timeout)

    def stop(self) -> None:
        """Shut the whole system down and make sure no process of it is left."""
        if not self.owned:
            return
        pids = _session_pids(self.config.system.admin_port)
        try:
            self.asys.shutdown()
        finally:
            if self.lanes:
                shutil.rmtree(self.lanes, ignore_errors=True)
            for pid in pids:  # a process that missed the shutdown (an orphan) is ended here
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)


def _session_pids(admin_port: int) -> list[int]:
    """Processes of the admin's session: the admin setsid()s, and every actor is its descendant."""
    admin = _listening_pid(admin_port)
    if admin is None:
        return []
    try:
        sid = os.getsid(admin)
    except ProcessLookupError:
        return []
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if os.getsid(int(entry.name)) == sid:
                    pids.append(int(entry.name))
    return pids


def _listening_pid(port: int) -> int | None:
    """The pid listening on a TCP port, from /proc (Linux)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                link = os.readlink(fd)
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    return int(proc.name)
    return None
