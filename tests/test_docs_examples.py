"""The ```python blocks of README.md and docs/*.md run as written: offline, on the test driver.

Blocks that cannot run here are listed in NOT_RUN with the reason, which pytest prints as the
skip reason (`pytest -rs`); they are still compiled. The ```toml blocks that are whole
configurations must load.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from nova.config import parse_config
from tests.integration_helpers import next_port, session_of, session_pids, wait_until

ROOT = Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^```(python|toml)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _blocks(language: str) -> list[tuple[str, str]]:
    """(id, code): the id is the file and the block's number in it, e.g. "docs/plugins.md#1"."""
    found = []
    for path in FILES:
        n = 0
        for match in _BLOCK.finditer(path.read_text()):
            if match.group(1) == language:
                n += 1
                found.append((f"{path.relative_to(ROOT)}#{n}", match.group(2)))
    return found


PYTHON = _blocks("python")
TOML = _blocks("toml")

NOT_RUN = {
    "docs/fallback.md#1": "a sketch of the fallback stage's loop: its names come from the actor around it",
    "docs/observability.md#1": "needs an OTLP collector on localhost:4318 and the OTLP exporter package",
    "docs/http.md#1": "needs `nova run --http` on real drivers (tests/test_gateway.py makes the same calls)",
    "docs/http.md#2": "needs `nova run --http` on real drivers (tests/test_gateway.py makes the same calls)",
}
# Blocks that use the facade run in a process of their own, against an embedded system on the test
# driver; the drivers they name are test drivers here.
FACADE_CONFIG = """
[drivers.default]
kind = "test"

[drivers.openai]
kind = "test"
model = "gpt-4o-mini"

[drivers.anthropic]
kind = "test"
model = "claude-3-5-haiku-latest"

[system]
admin_port = {port}
state_dir = "{state}"
"""
# Blocks that never end on their own (a tail of events): run until they print this, then interrupted.
ENDLESS = {"docs/events.md#1": "request.completed"}


def test_the_docs_have_python_examples() -> None:
    assert {"README.md#1", "docs/plugins.md#1", "docs/context.md#1"} <= {name for name, _ in PYTHON}


@pytest.mark.parametrize(("name", "code"), PYTHON, ids=[name for name, _ in PYTHON])
def test_a_python_example_runs(name: str, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compile(code, name, "exec")
    if name in NOT_RUN:
        pytest.skip(f"{name} not run: {NOT_RUN[name]}")
    if "nova.llm" in code or "from nova import llm" in code:
        _run_with_a_system(name, code, tmp_path)
        return
    monkeypatch.chdir(tmp_path)  # examples may write files (SQLite stores)
    namespace: dict[str, Any] = {"__name__": f"docs_example_{abs(hash(name))}"}
    exec(compile(code, name, "exec"), namespace)  # noqa: S102 - our own documentation


def _run_with_a_system(name: str, code: str, tmp: Path) -> None:
    port = next_port()
    config = tmp / "config.toml"
    config.write_text(FACADE_CONFIG.format(port=port, state=tmp / "state"))
    script = tmp / "example.py"
    endless = ENDLESS.get(name)
    prelude = _CALLER if endless else ""
    script.write_text(prelude + code)
    env = {**os.environ, "NOVA_CONFIG": str(config), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        if endless is None:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, f"{name} failed:\n{err[-3000:]}"
            return
        seen = _read_until(proc, endless, timeout=60)
        assert seen, f"{name} printed no {endless!r} line"
        proc.send_signal(signal.SIGINT)  # its `finally` unsubscribes; the embedded system stops at exit
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    sid = session_of(port)
    assert sid is None or wait_until(lambda: not session_pids(sid), timeout=10), f"{name} left processes"


# For an endless example: calls from a thread, so that it has events to print.
_CALLER = """\
import threading as _threading
import time as _time


def _calls() -> None:
    from nova import llm as _llm

    while True:
        _llm.chat("a call for the example to see")
        _time.sleep(0.05)  # a pace, not a wait for anything


_threading.Thread(target=_calls, daemon=True).start()
"""


def _read_until(proc: subprocess.Popen[str], text: str, timeout: float) -> bool:
    import selectors

    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        found = wait_until(
            lambda: (
                any(text in (proc.stdout.readline() if proc.stdout else "") for _ in selector.select(0.1))
                or proc.poll() is not None
            ),
            timeout=timeout,
        )
    return bool(found) and proc.poll() is None


@pytest.mark.parametrize(("name", "code"), TOML, ids=[name for name, _ in TOML])
def test_a_toml_example_is_valid(name: str, code: str) -> None:
    raw = tomllib.loads(code)
    if not set(raw) <= {
        "llm",
        "drivers",
        "system",
        "supervision",
        "telemetry",
        "cache",
        "ratelimit",
        "fallback",
        "context",
        "plugins",
        "prices",
        "cluster",
        "server",
    }:
        pytest.skip(f"{name} is not a Nova configuration (e.g. pyproject.toml)")
    env = {k: "x" for k in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", code)}
    if 'kind = "acme"' in code:
        pytest.skip(f"{name} configures the third-party driver the page builds")
    config = parse_config(raw, source=name, env=env)
    path = config.cache.path if "path" in config.cache.model_fields_set else None
    if isinstance(path, str):  # relative paths are under system.state_dir already
        state = Path(config.system.state_dir).name
        assert not Path(path).parts[:1] == (state,), f"{name}: cache path {path!r} doubles {state!r}"
