"""The `nova` command in real subprocesses: ask, run, status, metrics, events, SIGTERM drain, heart.

Output goes to files, never pipes: the actor system's daemons inherit the starter's stdout and a
pipe would keep the reader waiting until the system shuts down. Every process started here is ended.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from actors.bridge import Bridge
from nova.config import load_config
from nova.system import NovaSystem, port_in_use
from tests.integration_helpers import (
    Calls,
    chat_call,
    find_node,
    live_pid,
    next_port,
    status,
    wait_until,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
CONFIG = """
[drivers.default]
kind = "test"

[system]
admin_port = {port}
state_dir = "{state}"

[supervision]
heart_interval_s = 0.2
heart_misses = 2
"""


def write_config(tmp: Path, text: str = CONFIG) -> tuple[Path, int]:
    port = next_port()
    path = tmp / "config.toml"
    path.write_text(text.format(port=port, state=tmp))
    return path, port


def processes_of(config: Path) -> list[psutil.Process]:
    """Live processes started for this config: the CLI and every daemon forked from it."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if str(config) in cmdline and proc.info["status"] != psutil.STATUS_ZOMBIE and proc.pid != os.getpid():
            found.append(proc)
    return found


@dataclass
class Nova:
    """`python -m nova.cli --config <file> <args>`, output in files."""

    config: Path
    out: Path

    def start(self, *args: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
        n = len(list(self.out.glob("*.out")))
        stdout, stderr = self.out / f"{n}-{args[0]}.out", self.out / f"{n}-{args[0]}.err"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("NOVA_CONFIG", None)
        with stdout.open("wb") as o, stderr.open("wb") as e:
            proc = subprocess.Popen(
                [sys.executable, "-m", "nova.cli", "--config", str(self.config), *args],
                stdout=o,
                stderr=e,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                env=env,
            )
        return proc, stdout, stderr

    def run(self, *args: str, timeout: float = 60) -> tuple[int, str, str]:
        proc, stdout, stderr = self.start(*args)
        try:
            code = proc.wait(timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return code, stdout.read_text(), stderr.read_text()


def stop(proc: subprocess.Popen[bytes], config: Path) -> None:
    """End a CLI process and anything it left (only after a failure)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    for leftover in processes_of(config):
        leftover.kill()


def test_ask_without_a_running_nova_starts_one_answers_and_leaves_nothing(tmp_path: Path) -> None:
    config, port = write_config(tmp_path)
    nova = Nova(config, tmp_path)
    code, out, err = nova.run("ask", "hello there")
    assert (code, out.strip()) == (0, "echo: hello there"), err
    assert wait_until(lambda: not processes_of(config), timeout=10), "the embedded system outlived `nova ask`"
    assert not port_in_use("127.0.0.1", port)
    code, out, err = nova.run("ask", "--stream", "one two three")
    assert (code, out.strip()) == (0, "echo: one two three"), err


def test_a_broken_config_exits_non_zero_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[system]\nadmin_prot = 19999\n")
    code, out, err = Nova(config, tmp_path).run("ask", "hi")
    assert code != 0
    assert "system.admin_prot" in err and "admin_port" in err  # the key, and the likely fix
    assert "Traceback" not in err
    config.write_text(
        '[drivers.default]\nkind = "test"\n[[plugins]]\nuse = "no.such.module:Plugin"\n'
        f'[system]\nadmin_port = {next_port()}\nstate_dir = "{tmp_path}"\n'
    )
    code, out, err = Nova(config, tmp_path).run("ask", "hi")
    assert code != 0 and "no.such.module" in err
    assert wait_until(lambda: not processes_of(config), timeout=10)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A `nova run` in the background for the tests below; the last test stops it with SIGTERM."""
    tmp = tmp_path_factory.mktemp("cli-run")
    config, port = write_config(tmp)
    nova = Nova(config, tmp)
    proc, stdout, stderr = nova.start("run")
    try:
        up = wait_until(lambda: "running on" in stdout.read_text() or proc.poll() is not None, timeout=30)
        assert up and proc.poll() is None, stderr.read_text()
        yield {"nova": nova, "proc": proc, "config": config, "port": port, "stdout": stdout}
    finally:
        stop(proc, config)


def test_status_shows_the_supervision_tree(served: dict[str, Any]) -> None:
    code, out, err = served["nova"].run("status")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("root  pid ")
    names = [line.split()[0] for line in lines]
    for name in ("eventbus", "drivers", "default", "pipeline", "fallback", "router"):
        assert name in names, out
    assert "NOT ANSWERING" not in out
    assert "in_flight=0" in out and "restarts=0" in out


def test_ask_attaches_to_the_running_nova_and_metrics_count_it(served: dict[str, Any]) -> None:
    code, out, err = served["nova"].run("ask", "through the server")
    assert (code, out.strip()) == (0, "echo: through the server"), err
    code, out, err = served["nova"].run("metrics", "--json")
    assert code == 0, err
    metrics = json.loads(out)
    assert metrics["totals"]["requests"] >= 1 and metrics["totals"]["completed"] >= 1
    assert {t["driver"] for t in metrics["targets"]} == {"default"}
    code, out, err = served["nova"].run("metrics")
    assert code == 0 and "default" in out


def test_events_tails_live_events(served: dict[str, Any]) -> None:
    nova: Nova = served["nova"]
    proc, stdout, stderr = nova.start("events", "--count", "1", "--topic", "request.")
    try:
        # keep calling until the tail, subscribed at some point, has its event
        assert wait_until(lambda: proc.poll() is not None or nova.run("ask", "tick")[0] != 0, timeout=30)
        assert proc.wait(10) == 0, stderr.read_text()
        event = json.loads(stdout.read_text().splitlines()[0])
        assert event["name"].startswith("request.")
    finally:
        stop_events = proc.poll() is None
        if stop_events:
            proc.kill()
            proc.wait()


def test_sigterm_drains_calls_in_flight_then_stops_cleanly(served: dict[str, Any]) -> None:
    config = load_config(served["config"])
    system = NovaSystem.attach(config)
    assert system is not None
    answer: dict[str, Any] = {}
    slow = chat_call("finish me", test_reply={"text": "finished", "delay": 1.5}, timeout=30)
    thread = threading.Thread(target=lambda: answer.update(reply=Calls(system).one(slow)), daemon=True)
    thread.start()
    bridge = Bridge(system.lanes)  # a facade caller: its answer comes straight from the driver
    direct = chat_call("me too", test_reply={"text": "finished too", "delay": 1.5}, timeout=30)
    facade = threading.Thread(target=lambda: answer.update(direct=bridge.call(direct, 30)), daemon=True)
    facade.start()
    assert wait_until(lambda: find_node(status(system), "drivers", "default").get("in_flight") == 2)
    proc: subprocess.Popen[bytes] = served["proc"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    thread.join(10)
    facade.join(10)
    bridge.close()
    assert getattr(answer.get("reply"), "response", None) is not None, answer  # drained, not dropped
    assert answer["reply"].response.text == "finished"
    assert answer["direct"].text == "finished too"
    out = served["stdout"].read_text()
    assert "draining" in out and "stopped" in out
    assert wait_until(lambda: not processes_of(served["config"]), timeout=10), "processes left after SIGTERM"
    assert not port_in_use("127.0.0.1", served["port"])


def test_the_heart_stops_everything_when_the_root_dies(tmp_path: Path) -> None:
    config_path, _ = write_config(tmp_path)
    nova = Nova(config_path, tmp_path)
    proc, stdout, stderr = nova.start("run")
    try:
        assert wait_until(lambda: "running on" in stdout.read_text() or proc.poll() is not None, timeout=30)
        system = NovaSystem.attach(load_config(config_path))
        assert system is not None
        root = live_pid(system)
        assert root is not None
        os.kill(root, signal.SIGKILL)
        assert proc.wait(30) == 1
        assert "stopped answering" in stderr.read_text()
        assert wait_until(lambda: not processes_of(config_path), timeout=10), (
            "processes left after the heart stopped"
        )
    finally:
        stop(proc, config_path)
