"""SIGKILL a process of a Nova system with calls in flight, and look at what is left afterwards.

- `Program` runs a user program (tests/life_program.py: nova.llm, embedded or attached) or
  `nova run` in a subprocess and reads the JSON lines it prints, each with a deadline.
- `kill_and_wait(pid)` (from integration_helpers) sends SIGKILL and waits for the pid to go.
- `leftovers(sid, port, lanes)` says what of a system is still there: processes of its session,
  a listener on its admin port, its lane directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from nova.supervisors.system import port_in_use
from tests.integration_helpers import kill_and_wait, pid_alive, session_pids, wait_until

__all__ = ["Program", "kill_and_wait", "leftovers", "pid_alive", "wait_until", "write_config"]

ROOT = Path(__file__).resolve().parents[1]


def write_config(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


class Program:
    """A subprocess whose stdout is JSON lines (anything else is kept as {"text": line})."""

    def __init__(self, args: list[str], config: Path, cwd: Path) -> None:
        env = {**os.environ, "NOVA_CONFIG": str(config), "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self.stderr: list[str] = []
        self.sids: set[int] = set()  # sessions of the systems it reported: reaped on close
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    @classmethod
    def user(cls, config: Path, cwd: Path, calls: int, model: str = "slow:60") -> Program:
        return cls(["-m", "tests.life_program", str(calls), model], config, cwd)

    @classmethod
    def nova_run(cls, config: Path, cwd: Path) -> Program:
        return cls(["-m", "nova", "run"], config, cwd)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                try:
                    self.lines.put(json.loads(line))
                except ValueError:
                    self.lines.put({"text": line.rstrip("\n")})

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        with self.proc.stderr:
            for line in self.proc.stderr:
                self.stderr.append(line)

    def expect(self, event: str, timeout: float = 30.0) -> dict[str, Any]:
        """The next line naming `event` (lines before it are skipped), within `timeout` seconds."""
        seen = []
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(
                    f"no {event!r} within {timeout}s; saw {seen}; stderr: {''.join(self.stderr)[-2000:]}"
                ) from None
            if "sid" in line and line["sid"]:
                self.sids.add(int(line["sid"]))
            if line.get("event") == event or (event == "text" and "text" in line):
                return line
            seen.append(line)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def exited(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        """Kill the program, and whatever a failed test left of the systems it reported."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for sid in self.sids:
            for pid in session_pids(sid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self.proc.stdin is not None:  # the readers' threads close stdout and stderr at their end
            with contextlib.suppress(OSError):
                self.proc.stdin.close()


def leftovers(sid: int | None, port: int, lanes: str | None = None) -> list[str]:
    """What of a system is still there; [] when nothing is."""
    left = []
    if sid is not None and session_pids(sid):
        left.append(f"processes {session_pids(sid)}")
    if port_in_use("127.0.0.1", port):
        left.append(f"a listener on admin port {port}")
    if lanes and os.path.exists(lanes) and any(Path(lanes).glob("*.sock")):
        left.append(f"lane sockets in {lanes}")
    return left
