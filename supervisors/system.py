"""Starts, finds and stops Nova's actor system (Thespian multiprocTCPBase).

- Every Thespian socket binds to the configured host (default 127.0.0.1): Thespian itself binds
  0.0.0.0 and its messages are pickles, so anyone who reached a port could run code.
- The admin daemon inherits the starter's stdout/stderr; a starter whose output is a pipe (CI,
  `| tee`) would hang until shutdown, so the system is started with both pointed at /dev/null and
  actors log to a file instead.
- `Heart` is the root's supervisor: Thespian never restarts a top-level actor, so `nova run`
  watches the root and the admin and, when either dies, shuts everything down and exits non-zero.
- The system dies with its starter: the admin watches it (actors/patches.py, admin_life)
  and takes the whole tree, its lane directory and its discovery file with it.
- A system has an identity, a name and a hash of its configuration; a program attaches only to a
  system of its own identity. `nova run` writes a discovery file (`discovery_path`) that says where
  it runs; an embedded system takes a free admin port unless one is configured.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nova.config import NovaConfig
from nova.errors import ConfigurationError, DriverUnavailableError, SystemMismatchError

__all__ = [
    "NovaSystem",
    "bind_to",
    "discovery_path",
    "identity",
    "name_messages_by_type",
    "port_in_use",
    "preflight",
    "read_discovery",
]

log = logging.getLogger("nova.supervisors.system")
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


def identity(config: NovaConfig) -> tuple[str, str]:
    """(name, hash): what a system is, apart from where it runs. The hash covers the resolved
    configuration except its addresses (admin port, lane directory); a secret counts by its
    own hash, so the identity shows no key."""
    from nova.secrets import Secret

    def plain(value: Any) -> Any:
        if isinstance(value, Secret):
            return "secret:" + hashlib.sha256(value.reveal().encode()).hexdigest()
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)

    data = plain(config.model_dump(mode="python"))
    for key in ("admin_port", "lane_dir"):
        data["system"].pop(key, None)
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
    return config.system.name, digest


def discovery_path(config: NovaConfig) -> Path:
    """Where `nova run` says where it runs: `<state_dir>/run-<name>.json` (mode 0600)."""
    return Path(config.system.state_dir) / f"run-{config.system.name}.json"


def read_discovery(config: NovaConfig) -> dict[str, Any] | None:
    """The discovery file of a `nova run` that is still running, else None."""
    try:
        found = json.loads(discovery_path(config).read_text())
        os.kill(int(found["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return found if isinstance(found, dict) else None


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def preflight(config: NovaConfig) -> None:
    """`nova.config.preflight` with the lanes this system will bind (their socket paths' length)."""
    from nova.actors.protocol import driver_lane
    from nova.config import preflight as check

    names = [driver_lane(name, d.processes - 1) for name, d in config.drivers.items()]
    check(config, lane_names=[*names, "caller-4194304-99999"])  # a bridge's lane at Linux's largest pid


def port_in_use(host: str, port: int) -> bool:
    """Whether something listens on host:port (IPv4 or IPv6, a name or an address)."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:  # refused, unreachable, or a name that does not resolve
        return False


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
        *,
        identity: tuple[str, str] | None = None,
        pids: tuple[int, int] = (0, 0),
        discovery: Path | None = None,
    ) -> None:
        self.config = config
        self.asys = asys
        self.root = root
        self.router = router
        self.event_bus = event_bus
        self.owned = owned  # this process started it and stops it
        self.lanes = lanes or config.system.lane_dir or ""  # the directory of the lanes' sockets
        self.identity = identity or ("", "")
        self.root_pid, self.admin_pid = pids  # 0: not known
        self.discovery = discovery  # the discovery file this process wrote
        self.sid: int | None = None
        self._stop_lock = threading.Lock()
        self._stopped = False
        with contextlib.suppress(OSError):
            self.sid = os.getsid(self.admin_pid) if self.admin_pid else None

    @property
    def where(self) -> str:
        return f"{self.config.system.host}:{self.config.system.admin_port}"

    @classmethod
    def start(
        cls, config: NovaConfig, *, timeout: float = 30.0, free_port: bool = False, discovery: bool = False
    ) -> NovaSystem:
        """Start a system. `free_port`: on a free admin port, not the configured one (an embedded
        system). `discovery`: write the discovery file (`nova run`)."""
        from thespian.actors import ActorSystem

        from nova.supervisors.tree import RootSupervisor, Start

        # What would fail inside an actor (a driver option, a plugin, an unwritable file) fails
        # here, naming the key: an actor that dies at start would fail every call instead.
        preflight(config)
        me = identity(config)
        host = _host(config)
        if free_port:
            free = config.system.model_copy(update={"admin_port": _free_port(host)})
            config = config.model_copy(update={"system": free})
        port = config.system.admin_port
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
        from nova.actors.patches import allow_peers, leave_behind
        from nova.actors.patches import apply as apply_thespian_patches

        bind_to(host)
        name_messages_by_type()
        apply_thespian_patches()  # before the admin forks: every actor process inherits them
        allow_peers(_allowed_peers(config))
        os.environ[STARTER_PID] = str(os.getpid())  # whom the root and router take Start and Drain from
        if config.system.lane_dir is None:  # a directory only this user can open (mode 0700)
            system = config.system.model_copy(update={"lane_dir": tempfile.mkdtemp(prefix=f"nova-{port}-")})
            config = config.model_copy(update={"system": system})
        else:
            Path(config.system.lane_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        found = discovery_path(config) if discovery else None
        leave_behind([os.path.abspath(p) for p in (config.system.lane_dir, found) if p])
        capabilities: dict[str, Any] = {
            "Admin Port": port,
            "Nova Host": host,
            **_cluster_capabilities(config),
        }
        with _quiet_stdio():
            asys = ActorSystem(BASE, capabilities, logDefs=_log_defs(config), transientUnique=True)
        try:
            root = asys.createActor(RootSupervisor, globalName="nova")
            reply = asys.ask(root, Start(config, me), timeout)
            if reply is None or not hasattr(reply, "router"):
                raise DriverUnavailableError(f"Nova's actor tree did not start within {timeout}s")
        except BaseException:
            asys.shutdown()
            raise
        started = cls(
            config,
            asys,
            root,
            reply.router,
            reply.event_bus,
            owned=True,
            identity=me,
            pids=reply.pids,
            discovery=found,
        )
        if found is not None:
            _write_discovery(found, started)
        return started

    @classmethod
    def attach(cls, config: NovaConfig, *, timeout: float = 10.0) -> NovaSystem | None:
        """The system that `nova run`'s discovery file names, else the one on the admin port if
        the configuration sets one; None when nothing runs there. A system of another identity
        (name or configuration) is refused with `SystemMismatchError`, which names both."""
        from thespian.actors import ActorSystem

        from nova.messages import WhereIsRouter
        from nova.supervisors.tree import RootSupervisor

        found = read_discovery(config)
        if found is not None:
            system = config.system.model_copy(
                update={"host": str(found["host"]), "admin_port": int(found["admin_port"])}
            )
            config = config.model_copy(update={"system": system})
        elif "admin_port" not in config.system.model_fields_set:
            return None  # no `nova run` says where it is, and no port was configured to look at
        host, port = _host(config), config.system.admin_port
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
        expected, got = identity(config), tuple(getattr(reply, "identity", None) or ("?", "?"))
        if got != expected:
            raise SystemMismatchError(
                f"the system at {host}:{port} is {got[0]!r} (configuration {got[1]}), but this "
                f"program's is {expected[0]!r} (configuration {expected[1]}): not attaching",
                expected=expected,
                found=got,
            )
        return cls(
            config,
            asys,
            root,
            reply.router,
            reply.event_bus,
            owned=False,
            lanes=reply.lanes,
            identity=expected,
            pids=reply.pids,
        )

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
        from nova.actors.patches import alive

        with self._stop_lock:
            if not self.owned or self._stopped:
                return
            self._stopped = True
        pids = _session_members(self.sid) if self.sid else _session_pids(self.config.system.admin_port)
        try:
            if not self.admin_pid or alive(self.admin_pid):  # a dead admin would not answer
                self.asys.shutdown()
        finally:
            if self.lanes:
                shutil.rmtree(self.lanes, ignore_errors=True)
            if self.discovery is not None and (read_discovery(self.config) or {}).get("pid") == os.getpid():
                with contextlib.suppress(OSError):  # ours, not that of a `nova run` started since
                    self.discovery.unlink()
            for pid in pids:  # a process that missed the shutdown (an orphan) is ended here
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)


def _host(config: NovaConfig) -> str:
    """The interface every socket binds to: the cluster's `bind` when in a cluster."""
    return config.cluster.bind if config.cluster.enabled else config.system.host


def _allowed_peers(config: NovaConfig) -> list[str] | None:
    """Whom a cluster node hears: its peers, its leader and itself; None for one node."""
    from nova.config import leader_address

    cluster = config.cluster
    if cluster.leader is None:
        return None
    itself = [cluster.bind]
    with contextlib.suppress(ValueError):  # a host name: resolved with the peers
        if ipaddress.ip_address(cluster.bind).is_loopback:
            # the kernel sends from 127.0.0.1 (::1) to any loopback address: the node's own processes
            itself.append("::1" if ":" in cluster.bind else "127.0.0.1")
    return [*cluster.peers, leader_address(cluster.leader)[0], *itself]


def _cluster_capabilities(config: NovaConfig) -> dict[str, Any]:
    """A node's capabilities: the user's table, its name, and where the convention's leader is
    (Thespian's 'Convention Address.IPv4'; the leader names itself)."""
    from nova.actors.cluster import LEADER_CAPABILITY, NODE_CAPABILITY
    from nova.config import leader_address

    cluster = config.cluster
    if cluster.leader is None:
        return {}
    node = f"{cluster.bind}:{config.system.admin_port}"
    capabilities: dict[str, Any] = {**cluster.capabilities, NODE_CAPABILITY: node}
    capabilities["Convention Address.IPv4"] = leader_address(cluster.leader)
    if node == cluster.leader:
        capabilities[LEADER_CAPABILITY] = True
    return capabilities


def _write_discovery(path: Path, system: NovaSystem) -> None:
    """Write the discovery file whole or not at all, readable by this user only."""
    body = {
        "name": system.identity[0],
        "hash": system.identity[1],
        "host": system.config.system.host,
        "admin_port": system.config.system.admin_port,
        "pid": os.getpid(),
        "admin_pid": system.admin_pid,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(body, f)
    os.replace(partial, path)


def _session_members(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if os.getsid(int(entry.name)) == sid:
                    pids.append(int(entry.name))
    return pids


def _session_pids(admin_port: int) -> list[int]:
    """Processes of the admin's session: the admin setsid()s, and every actor is its descendant."""
    admin = _listening_pid(admin_port)
    if admin is None:
        return []
    try:
        sid = os.getsid(admin)
    except ProcessLookupError:
        return []
    return _session_members(sid)


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
