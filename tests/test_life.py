"""Life and death of a whole system: SIGKILL of its root, Thespian's admin or logger, `nova run`, or
the program that embeds it, with calls in flight. Every call is answered once, at once, with a
typed error; no upstream request outlives its caller; nothing of a dead system is left; a program
attached to `nova run` finds it again when it comes back; and no program attaches to a system of
another name or configuration."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from nova import errors
from nova.secrets import Secret
from nova.supervisors.system import NovaSystem, discovery_path, identity
from tests.actors.test_call_path import Upstream, _completion
from tests.integration_helpers import config_for, next_port, running
from tests.killing import Program, kill_and_wait, leftovers, pid_alive, wait_until, write_config

pytestmark = pytest.mark.integration

CALLS = 50


class Holding(Upstream):
    """POST /v1/chat/completions with model "slow:S": answered after S seconds, or dropped as soon
    as the client hangs up; `open` counts the requests whose client is still there."""

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            while await reader.readline():
                headers = {}
                while (header := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = header.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = json.loads(await reader.readexactly(int(headers.get("content-length", "0"))))
                model = str(body.get("model", "slow:0"))
                with self.lock:
                    self.open += 1
                try:
                    try:  # the client sends nothing more: a read ends only when it hangs up
                        await asyncio.wait_for(reader.read(1), float(model.removeprefix("slow:")))
                        return
                    except TimeoutError:
                        writer.write(_completion(model))
                        await writer.drain()
                finally:
                    with self.lock:
                        self.open -= 1
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return
        finally:
            self.tasks.discard(task)
            writer.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Holding() as server:
        yield server


def _config(tmp: Path, upstream: Upstream, port: int | None = None, name: str = "config.toml") -> Path:
    port_line = f"admin_port = {port}\n" if port is not None else ""
    return write_config(
        tmp / name,
        f"""
[system]
state_dir = "{tmp / "state"}"
{port_line}
[drivers.default]
kind = "openai_compatible"
base_url = "{upstream.base_url}"
model = "slow:0"
""",
    )


def _all_not_reachable(answered: dict[str, Any]) -> None:
    results = answered["results"]
    assert len(results) == CALLS
    wrong = [r for r in results if r.get("type") != "NotReachableError" or r.get("retryable") is not True]
    assert not wrong, f"{len(wrong)} of {CALLS} calls got {wrong[0]}"


def _upstream_busy(upstream: Upstream) -> None:
    assert wait_until(lambda: upstream.open >= CALLS, 10), f"only {upstream.open} requests upstream"


def _upstream_idle(upstream: Upstream) -> bool:
    with upstream.lock:
        return upstream.open == 0


def _logger_pid(admin: int, root: int) -> int:
    children = [p.pid for p in psutil.Process(admin).children() if p.pid != root]
    assert len(children) == 1, f"the admin's children besides the root: {children}"
    return children[0]


@pytest.fixture
def programs() -> Iterator[list[Program]]:
    started: list[Program] = []
    yield started
    for program in started:
        program.close()


# -- a program that embeds a system -----------------------------------------------------------


def test_a_killed_embedding_program_takes_its_whole_system_with_it(
    tmp_path: Path, upstream: Upstream, programs: list[Program]
) -> None:
    program = Program.user(_config(tmp_path, upstream), tmp_path, CALLS)
    programs.append(program)
    up = program.expect("up")
    assert up["owned"]
    program.expect("in_flight")
    _upstream_busy(upstream)
    kill_and_wait(program.proc.pid)
    assert wait_until(lambda: not leftovers(up["sid"], up["port"], up["lanes"]), 5), leftovers(
        up["sid"], up["port"], up["lanes"]
    )
    assert wait_until(lambda: _upstream_idle(upstream), 5), "an upstream request outlived its caller"


@pytest.mark.parametrize("victim", ["root", "admin"])
def test_a_killed_root_or_admin_answers_every_call_at_once_and_the_next_call_starts_afresh(
    tmp_path: Path, upstream: Upstream, programs: list[Program], victim: str
) -> None:
    program = Program.user(_config(tmp_path, upstream), tmp_path, CALLS)
    programs.append(program)
    up = program.expect("up")
    program.expect("in_flight")
    _upstream_busy(upstream)
    kill_and_wait(up[victim])
    _all_not_reachable(program.expect("answered", timeout=10))  # not the calls' 60 s
    assert wait_until(lambda: not leftovers(up["sid"], up["port"], up["lanes"]), 5), leftovers(
        up["sid"], up["port"], up["lanes"]
    )
    assert wait_until(lambda: _upstream_idle(upstream), 5), "an upstream request outlived its caller"
    program.send("call")
    assert program.expect("call")["result"]["ok"], "no new embedded system after the old one died"


def test_a_killed_logger_neither_stops_the_admin_nor_fails_a_call(
    tmp_path: Path, upstream: Upstream, programs: list[Program]
) -> None:
    program = Program.user(_config(tmp_path, upstream), tmp_path, CALLS, model="slow:1")
    programs.append(program)
    up = program.expect("up")
    logger = _logger_pid(up["admin"], up["root"])
    program.expect("in_flight")
    _upstream_busy(upstream)
    kill_and_wait(logger)
    answered = program.expect("answered")
    assert all(r.get("ok") for r in answered["results"]), answered["results"][:3]
    assert pid_alive(up["admin"])
    program.send("call")
    assert program.expect("call")["result"]["ok"]


def test_the_logger_dies_with_the_admin(tmp_path: Path, upstream: Upstream, programs: list[Program]) -> None:
    program = Program.user(_config(tmp_path, upstream), tmp_path, 0)
    programs.append(program)
    up = program.expect("up")
    logger = _logger_pid(up["admin"], up["root"])
    kill_and_wait(up["admin"])
    assert wait_until(lambda: not pid_alive(logger), 5), "the logger outlived its admin"


def test_two_programs_embed_two_systems_on_free_ports(
    tmp_path: Path, upstream: Upstream, programs: list[Program]
) -> None:
    config = _config(tmp_path, upstream)  # no admin_port
    first, second = Program.user(config, tmp_path, 0), Program.user(config, tmp_path, 0)
    programs.extend([first, second])
    ports = {first.expect("up")["port"], second.expect("up")["port"]}
    assert len(ports) == 2 and 19555 not in ports


# -- `nova run` and a program attached to it ---------------------------------------------------


def _nova_run(config: Path, cwd: Path, programs: list[Program]) -> Program:
    run = Program.nova_run(config, cwd)
    programs.append(run)
    assert "nova: running" in run.expect("text")["text"]
    return run


def test_a_killed_nova_run_leaves_nothing_and_its_program_finds_the_next_one(
    tmp_path: Path, upstream: Upstream, programs: list[Program]
) -> None:
    config = _config(tmp_path, upstream, port=next_port())
    _nova_run(config, tmp_path, programs)
    found = discovery_path(_load(config))
    assert stat.S_IMODE(found.stat().st_mode) == 0o600
    program = Program.user(config, tmp_path, CALLS)
    programs.append(program)
    up = program.expect("up")
    assert not up["owned"] and json.loads(found.read_text())["admin_pid"] == up["admin"]
    program.expect("in_flight")
    _upstream_busy(upstream)
    kill_and_wait(programs[0].proc.pid)
    _all_not_reachable(program.expect("answered", timeout=10))
    assert wait_until(lambda: not leftovers(up["sid"], up["port"], up["lanes"]), 5), leftovers(
        up["sid"], up["port"], up["lanes"]
    )
    assert not found.exists(), "the discovery file of a dead nova run is left"
    assert wait_until(lambda: _upstream_idle(upstream), 5), "an upstream request outlived its caller"
    program.send("call")  # nothing runs: a typed error at once, not a timeout
    result = program.expect("call", timeout=10)["result"]
    assert result["type"] == "NotReachableError" and result["retryable"], result
    _nova_run(config, tmp_path, programs)

    def answered() -> bool:
        program.send("call")
        return bool(program.expect("call", timeout=10)["result"].get("ok"))

    assert wait_until(answered, 10), "the program did not attach to the new nova run"


def test_a_killed_attached_program_leaves_no_upstream_request_and_status_finds_nova_run(
    tmp_path: Path, upstream: Upstream, programs: list[Program]
) -> None:
    config = _config(tmp_path, upstream, port=next_port())
    _nova_run(config, tmp_path, programs)
    program = Program.user(config, tmp_path, CALLS)
    programs.append(program)
    program.expect("up")
    program.expect("in_flight")
    _upstream_busy(upstream)
    kill_and_wait(program.proc.pid)
    assert wait_until(lambda: _upstream_idle(upstream), 5), "an upstream request outlived its caller"
    # the same configuration without its admin port: `nova status` finds nova run by its discovery file
    unaddressed = _config(tmp_path, upstream, name="unaddressed.toml")
    status = subprocess.run(
        [sys.executable, "-m", "nova", "--config", str(unaddressed), "status", "--json"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    drivers = next(c for c in json.loads(status.stdout)["children"] if c["name"] == "drivers")
    assert [d["in_flight"] for d in drivers["children"]] == [0]


@pytest.mark.parametrize("victim", ["root", "admin"])
def test_nova_run_exits_non_zero_when_its_root_or_admin_dies(
    tmp_path: Path, upstream: Upstream, programs: list[Program], victim: str
) -> None:
    config = _config(tmp_path, upstream, port=next_port())
    run = _nova_run(config, tmp_path, programs)
    program = Program.user(config, tmp_path, CALLS)
    programs.append(program)
    up = program.expect("up")
    program.expect("in_flight")
    _upstream_busy(upstream)
    kill_and_wait(up[victim])
    _all_not_reachable(program.expect("answered", timeout=10))
    assert run.exited(timeout=5) == 1
    assert wait_until(lambda: not leftovers(up["sid"], up["port"], up["lanes"]), 5), leftovers(
        up["sid"], up["port"], up["lanes"]
    )
    assert not discovery_path(_load(config)).exists()


def _load(config: Path) -> Any:
    from nova.config import load_config

    return load_config(str(config))


# -- no silent attach --------------------------------------------------------------------------


def test_a_program_refuses_a_system_of_another_configuration_and_names_both(tmp_path: Path) -> None:
    def driver(model: str) -> dict[str, Any]:
        return {"default": {"kind": "openai_compatible", "base_url": "http://127.0.0.1:9/v1", "model": model}}

    ours = config_for(tmp_path, drivers=driver("ours"))
    ours.drivers["default"].options["api_key"] = Secret("sk-test-1")
    port = ours.system.admin_port
    theirs = config_for(tmp_path, port, drivers=driver("theirs"))
    theirs.drivers["default"].options["api_key"] = Secret("sk-test-1")
    with running(ours):
        with pytest.raises(errors.SystemMismatchError) as raised:
            NovaSystem.attach(theirs, timeout=5)
        renamed = ours.model_copy(update={"system": ours.system.model_copy(update={"name": "other"})})
        with pytest.raises(errors.SystemMismatchError) as by_name:
            NovaSystem.attach(renamed, timeout=5)
        attached = NovaSystem.attach(ours, timeout=5)
    assert attached is not None and not attached.owned
    message = str(raised.value)
    for name, digest in (identity(ours), identity(theirs)):
        assert name in message and digest in message
    assert "'other'" in str(by_name.value) and "'nova'" in str(by_name.value)
    assert "sk-test-1" not in message + repr(raised.value.details)


def test_a_program_with_another_configuration_does_not_attach_to_nova_run(
    tmp_path: Path, upstream: Upstream, programs: list[Program]
) -> None:
    config = _config(tmp_path, upstream, port=next_port())
    _nova_run(config, tmp_path, programs)
    other = write_config(tmp_path / "other.toml", config.read_text().replace('"slow:0"', '"slow:1"'))
    program = Program.user(other, tmp_path, 0)
    programs.append(program)
    assert program.exited(timeout=30) == 1
    stderr = "".join(program.stderr)
    assert "SystemMismatchError" in stderr
    for found in (_load(config), _load(other)):
        assert identity(found)[1] in stderr


def test_async_callers_are_answered_at_once_when_the_root_dies(tmp_path: Path) -> None:
    from nova.actors.bridge import Bridge
    from tests.integration_helpers import actor_pid, chat_call, status

    config = config_for(tmp_path, drivers={"default": {"kind": "test", "model": "m", "latency": 60.0}})
    with running(config) as system:
        bridge = Bridge(system.lanes)
        bridge.watch({"root": system.root_pid, "admin": system.admin_pid})
        root = actor_pid(system)
        try:

            async def calls() -> list[Any]:
                tasks = [
                    asyncio.ensure_future(bridge.acall(chat_call(f"q{i}", timeout=60), 61))
                    for i in range(CALLS)
                ]

                def held() -> bool:
                    drivers = next(c for c in status(system)["children"] if c["name"] == "drivers")
                    return bool(drivers["children"][0].get("in_flight") == CALLS)

                assert await asyncio.to_thread(wait_until, held, 10)
                kill_and_wait(root)
                return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)

            results = asyncio.run(calls())
        finally:
            bridge.close()
    assert all(isinstance(r, errors.NotReachableError) and r.retryable for r in results), results[:3]
