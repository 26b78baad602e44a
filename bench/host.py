"""Runs Nova for a benchmark as production does (`nova run`) and watches its processes.

`nova_system` starts `nova run` from a small interpreter (so the actor processes do not inherit the
benchmark's imports), attaches to it, and afterwards stops it and kills any process of the admin's
session that is left. `process_names`, `CpuMeter` and `RSSSampler` say which process is which and
what each costs in CPU and memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "CpuMeter",
    "RSSSampler",
    "admin_session",
    "leftover_pids",
    "nova_system",
    "process_names",
    "session_pids",
    "stop_nova",
    "to_toml",
]


def to_toml(raw: dict[str, Any]) -> str:
    """TOML for a config of tables holding scalars and lists of them (and one level of sub-tables,
    like [drivers.x])."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(item) for item in v) + "]"
        return json.dumps(str(v))  # a JSON string is a valid TOML basic string

    lines: list[str] = []
    for section, table in raw.items():
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        lines += [f"[{section}]", *(f"{k} = {value(v)}" for k, v in scalars.items()), ""]
        for name, sub in table.items():
            if isinstance(sub, dict):
                lines += [f"[{section}.{name}]", *(f"{k} = {value(v)}" for k, v in sub.items()), ""]
    return "\n".join(lines)


def admin_session(admin_port: int) -> int | None:
    """The session id of the admin listening on `admin_port` (every Nova process shares it)."""
    import psutil  # type: ignore[import-untyped]

    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == admin_port and conn.pid:
            with contextlib.suppress(ProcessLookupError):
                return os.getsid(conn.pid)
    return None


def session_pids(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            with contextlib.suppress(OSError):
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
    return pids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def leftover_pids(sid: int | None, wait_s: float = 5.0) -> list[int]:
    """Live processes of the session, after waiting up to `wait_s` for them to end."""
    deadline = time.monotonic() + wait_s
    while True:
        pids = [] if sid is None else [p for p in session_pids(sid) if _alive(p)]
        if not pids or time.monotonic() >= deadline:
            return pids
        time.sleep(0.05)


@contextlib.contextmanager
def nova_system(
    raw: dict[str, Any], start_timeout: float = 30.0, report: dict[str, Any] | None = None
) -> Iterator[tuple[Any, Any, int | None]]:
    """(NovaSystem, Bridge, session id) of a Nova running under `nova run` for the raw config.

    The system runs as in production: a `nova run` process started from a small interpreter (so
    the actor processes do not inherit this benchmark's imports), which this process attaches to.
    Afterwards `nova run` is stopped with SIGTERM (it drains, then stops the tree) and any process
    of the session that is still alive is killed and reported (`report["left"]`, when given).
    """
    from nova.actors.bridge import Bridge
    from nova.config import parse_config
    from nova.supervisors.system import NovaSystem

    config = parse_config(raw, source="<bench>")
    state = Path(config.system.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    (state / "config.toml").write_text(to_toml(raw))
    log = open(state / "nova-run.out", "w")  # not a pipe: the admin daemon would inherit it
    proc = subprocess.Popen(
        [sys.executable, "-m", "nova.cli", "--config", str(state / "config.toml"), "run"],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=str(Path(__file__).resolve().parent.parent),
    )
    sid: int | None = None
    try:
        deadline = time.monotonic() + start_timeout
        system = None
        while system is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nova run did not start: {(state / 'nova-run.out').read_text()[-2000:]}")
            if "nova: running" in (state / "nova-run.out").read_text():
                system = NovaSystem.attach(config)
            else:
                time.sleep(0.05)
        sid = admin_session(config.system.admin_port)
        bridge = Bridge(system.lanes)
        try:
            yield system, bridge, sid
        finally:
            bridge.close()
    finally:
        left = stop_nova(proc, sid)
        if report is not None:
            report["left"] = left
        log.close()


def stop_nova(proc: subprocess.Popen[Any], sid: int | None) -> list[int]:
    """Stop a `nova run` with SIGTERM (it drains, then stops the tree) and kill what is left of its
    session (`sid`, the admin's session id); the pids that had to be killed."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    left = leftover_pids(sid)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
    if left:
        print(
            f"warning: killed {len(left)} Nova processes left after `nova run` stopped: {left}",
            file=sys.stderr,
        )
    return left


def process_names(system: Any) -> dict[int, str]:
    """pid -> actor name for every actor of a running Nova (from `nova status`'s GetStatus)."""
    from nova.messages import GetStatus

    names: dict[int, str] = {}
    reply = system.ask(system.root, GetStatus(), 5)

    def walk(node: dict[str, Any]) -> None:
        if node.get("pid"):
            names[node["pid"]] = node["name"]
        for child in node.get("children", []):
            walk(child)

    if reply is not None:
        walk(reply.tree)
    return names


class CpuMeter:
    """CPU seconds (user + system) used by given processes between `start()` and `stop()`."""

    def __init__(self, names: dict[int, str]) -> None:
        import psutil  # type: ignore[import-untyped]

        self.names = names
        self._procs = {pid: psutil.Process(pid) for pid in names}
        self._start: dict[int, float] = {}

    def _now(self) -> dict[int, float]:
        import psutil  # type: ignore[import-untyped]

        out = {}
        for pid, proc in self._procs.items():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                out[pid] = times.user + times.system
        return out

    def start(self) -> None:
        self._start = self._now()

    def stop(self, calls: int) -> dict[str, float]:
        """Milliseconds of CPU per call, by process name (summed over processes of one name)."""
        end, per = self._now(), dict[str, float]()
        for pid, t in end.items():
            name = self.names[pid]
            per[name] = per.get(name, 0.0) + (t - self._start.get(pid, t)) * 1e3 / max(calls, 1)
        return dict(sorted(per.items(), key=lambda kv: -kv[1]))


class RSSSampler:
    """Samples the summed RSS (and PSS, which counts shared pages once) of a session's processes.

    Forked actor processes share most of their pages with the admin they were forked from, so the
    RSS sum counts those pages once per process; PSS splits each shared page among its sharers.
    """

    def __init__(self, sid: int | None, interval_s: float = 0.1) -> None:
        self.sid = sid
        self.interval_s = interval_s
        self.peak_bytes = 0  # summed RSS
        self.peak_pss_bytes = 0
        self.last_pss_bytes = 0
        self.peak_by_pid: dict[int, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._procs: dict[int, Any] = {}

    def __enter__(self) -> RSSSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()

    def sample(self) -> int:
        """Take one sample; the summed RSS in bytes."""
        import psutil  # type: ignore[import-untyped]

        if self.sid is None:
            return 0
        by_pid, pss = {}, 0
        for pid in session_pids(self.sid):
            with contextlib.suppress(psutil.Error):
                proc = self._procs.get(pid) or self._procs.setdefault(pid, psutil.Process(pid))
                mem = proc.memory_full_info()
                by_pid[pid] = mem.rss
                pss += mem.pss
        total = sum(by_pid.values())
        self.samples += 1
        self.last_pss_bytes = pss
        self.peak_pss_bytes = max(self.peak_pss_bytes, pss)
        if total > self.peak_bytes:
            self.peak_bytes, self.peak_by_pid = total, by_pid
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()
