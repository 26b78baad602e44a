"""The `nova` command in real subprocesses: ask, run, status, metrics, events, SIGTERM drain, heart.

Output goes to files, never pipes: the actor system's daemons inherit the starter's stdout and a
pipe would keep the reader waiting until the system shuts down. Every process started here is ended.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

import nova
from nova.actors.bridge import Bridge
from nova.config import load_config
from nova.supervisors.system import NovaSystem, port_in_use
from tests.drivers.fixtures_openai import chat_reply
from tests.fakeserver import FakeServer, Reply
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
# Variables that configure drivers from the environment: kept out of the CLI's processes unless a
# test sets them, so a developer's own keys never reach a test.
STANDARD_VARIABLES = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_BASE_URL",
    "OLLAMA_HOST",
)
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

    env: dict[str, str] | None = None  # added to a copy of os.environ without the standard keys

    def start(self, *args: str, stdin: str | None = None) -> tuple[subprocess.Popen[bytes], Path, Path]:
        n = len(list(self.out.glob("*.out")))
        stdout, stderr = self.out / f"{n}-{args[0]}.out", self.out / f"{n}-{args[0]}.err"
        env = {k: v for k, v in os.environ.items() if k not in STANDARD_VARIABLES}
        env.update(PYTHONPATH=str(ROOT), **(self.env or {}))
        env.pop("NOVA_CONFIG", None)
        source = self.out / f"{n}-{args[0]}.in"
        source.write_text(stdin or "")
        with stdout.open("wb") as o, stderr.open("wb") as e, source.open("rb") as i:
            proc = subprocess.Popen(
                [sys.executable, "-m", "nova.cli", "--config", str(self.config), *args],
                stdout=o,
                stderr=e,
                stdin=i if stdin is not None else subprocess.DEVNULL,
                cwd=ROOT,
                env=env,
            )
        return proc, stdout, stderr

    def run(self, *args: str, timeout: float = 60, stdin: str | None = None) -> tuple[int, str, str]:
        proc, stdout, stderr = self.start(*args, stdin=stdin)
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


OPENAI_KEY = "sk-onramp-0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-test-onramp-01"
EXTRA = """
[fallback.retry]
max_attempts_per_target = 1
"""


def refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_version_and_python_dash_m() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "nova", "--version"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert (done.returncode, done.stdout.strip()) == (0, f"nova {nova.__version__}"), done.stderr


def test_ask_a_model_string_on_a_driver_configured_by_the_environment_only(tmp_path: Path) -> None:
    config, _ = write_config(tmp_path, CONFIG + EXTRA)
    with FakeServer() as server:
        server.add("/v1/chat/completions", Reply(body=chat_reply("Bonjour.")))
        cli = Nova(
            config, tmp_path, env={"OPENAI_API_KEY": OPENAI_KEY, "OPENAI_BASE_URL": server.url + "/v1"}
        )
        code, out, err = cli.run(
            "ask", "-m", "openai/gpt-4o-mini", "--json", "-", stdin="Say hello in French"
        )
        assert code == 0, err
        answer = json.loads(out)
        assert (answer["text"], answer["driver"]) == ("Bonjour.", "openai")
        sent = server.requests[0]
        assert sent.json["model"] == "gpt-4o-mini"  # the prefix chose the driver and went no further
        assert sent.json["messages"] == [{"role": "user", "content": "Say hello in French"}]
        assert sent.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    logs = "".join(
        f.read_text(errors="replace") for f in tmp_path.rglob("*") if f.is_file() and f.suffix != ".in"
    )
    assert OPENAI_KEY not in logs  # nor in any output or log file of the run
    assert wait_until(lambda: not processes_of(config), timeout=10)


def test_exit_codes_tell_a_failed_call_from_a_usage_error_and_an_absent_nova(tmp_path: Path) -> None:
    config, port = write_config(tmp_path, CONFIG + EXTRA)
    upstream = refused_port()
    cli = Nova(
        config,
        tmp_path,
        env={"OPENAI_API_KEY": OPENAI_KEY, "OPENAI_BASE_URL": f"http://127.0.0.1:{upstream}/v1"},
    )
    code, out, err = cli.run("ask", "-m", "openai/gpt-4o-mini", "--json", "--timeout", "20", "hi")
    assert code == 1, err
    assert f"connection refused at 127.0.0.1:{upstream}" in err
    assert json.loads(out)["error"]["type"] == "ConnectError"
    code, out, err = cli.run("ask", "-m", "opnai/gpt-4o-mini", "hi")
    assert code == 2 and "'opnai'" in err and "did you mean 'openai'" in err and "openai_compatible" in err
    code, out, err = cli.run("ask", "-", stdin="  \n")
    assert code == 2 and "empty" in err
    for soon in ("soon", "0", "inf"):
        code, _, err = cli.run("ask", "--timeout", soon, "hi")
        assert code == 2 and "argument --timeout" in err and repr(soon) in err, err
    for count in ("0", "-1", "x"):
        code, _, err = cli.run("events", "--count", count)
        assert code == 2 and "argument --count" in err and repr(count) in err, err
    for command in ("status", "metrics", "events"):
        code, _, err = cli.run(command, "--json")
        assert code == 3 and f"connection refused at 127.0.0.1:{port}" in err, (command, err)
    assert OPENAI_KEY not in out + err
    assert wait_until(lambda: not processes_of(config), timeout=10)


def test_config_check_shows_drivers_and_models_with_keys_masked(tmp_path: Path) -> None:
    path = tmp_path / "nova.toml"
    path.write_text(
        '[llm]\nmodel = "anthropic/claude-3-5-haiku-latest"\n'
        '[drivers.claude]\nkind = "anthropic"\napi_key = "${MY_CLAUDE_KEY}"\n'
        '[drivers.local]\nkind = "openai_compatible"\nbase_url = "http://127.0.0.1:8000/v1"\n'
        'model = "meta-llama/Llama-3.1-8B"\nheaders = {Authorization = "Token abcdefgh12345678"}\n'
        '[fallback]\ntargets = ["openai/gpt-4o-mini", "local"]\n'
    )
    cli = Nova(
        tmp_path / "unused.toml", tmp_path, env={"OPENAI_API_KEY": OPENAI_KEY, "MY_CLAUDE_KEY": ANTHROPIC_KEY}
    )
    code, out, err = cli.run("config", "check", str(path))
    assert code == 0, err
    assert f"{path}: ok" in out
    assert "default: claude/claude-3-5-haiku-latest" in out
    assert "fallback: openai/gpt-4o-mini, local/meta-llama/Llama-3.1-8B" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert set(lines) == {"claude", "local", "openai"}
    assert "kind=anthropic" in lines["claude"] and "api_key=***" in lines["claude"]
    assert "from OPENAI_API_KEY" in lines["openai"] and "api_key=***" in lines["openai"]
    assert "model=meta-llama/Llama-3.1-8B" in lines["local"]
    for secret in (OPENAI_KEY, ANTHROPIC_KEY, "abcdefgh12345678"):
        assert secret not in out + err
    code, out, err = cli.run("config", "check", str(path), "--json")
    assert code == 0 and json.loads(out)["drivers"]["openai"]["options"]["api_key"] == "***"
    path.write_text('[fallback]\ntargets = ["gpt/x"]\n')
    code, out, err = cli.run("config", "check", str(path))
    assert code == 2 and "fallback.targets[0]" in err and "'gpt'" in err


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
    code, out, err = served["nova"].run("status", "--json")
    assert code == 0, err
    assert json.loads(out)["name"] == "root"


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
    proc, stdout, stderr = nova.start("events", "--count", "1", "--topic", "request.", "--json")
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
        assert "the root supervisor died" in stderr.read_text()
        assert wait_until(lambda: not processes_of(config_path), timeout=10), (
            "processes left after the heart stopped"
        )
    finally:
        stop(proc, config_path)


def test_sigterm_under_load_stops_within_drain_s_even_when_calls_would_take_longer(tmp_path: Path) -> None:
    config_path, port = write_config(tmp_path, CONFIG.replace("[system]\n", "[system]\ndrain_s = 1\n"))
    nova = Nova(config_path, tmp_path)
    proc, stdout, stderr = nova.start("run")
    try:
        assert wait_until(lambda: "running on" in stdout.read_text() or proc.poll() is not None, timeout=30)
        system = NovaSystem.attach(load_config(config_path))
        assert system is not None
        calls = [
            chat_call(f"long {i}", test_reply={"text": "late", "delay": 300}, timeout=600) for i in range(20)
        ]
        with system.asys.private() as ctx:
            for call in calls:
                ctx.tell(system.router, call)
        assert wait_until(lambda: find_node(status(system), "drivers", "default").get("in_flight") == 20)
        proc.send_signal(signal.SIGTERM)
        # llm.timeout_s (600 s) and the calls' own 300 s are far away: drain_s decides
        assert proc.wait(60) == 0, stderr.read_text()
        assert "draining" in stdout.read_text() and "stopped" in stdout.read_text()
        assert "calls still in flight after 1s (system.drain_s)" in stderr.read_text()
        assert wait_until(lambda: not processes_of(config_path), timeout=10), "processes left after SIGTERM"
        assert not port_in_use("127.0.0.1", port)
    finally:
        stop(proc, config_path)
