"""Configurations that pass validation but would crash at start or fail every call: each is found
before anything starts, by `nova config check` and by `NovaSystem.start` (so `nova run` and the
embedded system), naming the file and the key.

Before these checks, each row below validated and then: left the cache stage, the router or the
event bus dead at start (every call `DriverUnavailableError`, or telemetry silently lost), failed
every call (`TransportError`, `RequestTimeoutError`), or stopped the start with a bare Python
error (`NotADirectoryError`, `gaierror`, Thespian's `InvalidActorAddress`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nova import errors
from nova.cli import main
from nova.config import load_config
from nova.supervisors.system import NovaSystem
from tests.integration_helpers import next_port

# A start that wrongly succeeds brings up a real system (it is stopped at once).
pytestmark = pytest.mark.integration

# (row id, the configuration given a scratch directory, the key named, a fragment of the message)
Case = tuple[str, Callable[[Path], dict[str, Any]], str, str]


def _file(tmp: Path) -> Path:
    (tmp / "a-file").write_text("")
    return tmp / "a-file"


CASES: list[Case] = [
    (
        "sqlite cache in a directory that cannot exist",
        lambda t: {"cache": {"enabled": True, "backend": "sqlite", "path": str(_file(t) / "c.sqlite3")}},
        "cache.path",
        "is not a directory",
    ),
    (
        "sqlite conversations in a directory that cannot exist",
        lambda t: {"context": {"store": "sqlite", "path": str(_file(t) / "conv.sqlite3")}},
        "context.path",
        "is not a directory",
    ),
    (
        "malformed redis url",
        lambda t: {"cache": {"enabled": True, "backend": "redis", "redis_url": "localhost:6379"}},
        "cache.redis_url",
        "not a Redis URL",
    ),
    (
        "plugin that cannot be imported",
        lambda t: {"plugins": [{"use": "redact"}, {"use": "no_such_module_x:Plugin"}]},
        "plugins[1]",
        "cannot import 'no_such_module_x'",
    ),
    (
        "token counter that cannot be imported",
        lambda t: {"context": {"token_counter": "no_such_module_x:Counter"}},
        "context.token_counter",
        "cannot import",
    ),
    (
        "otel_setup that does not resolve",
        lambda t: {"telemetry": {"otel": True, "otel_setup": "nova.otel:no_such_setup"}},
        "telemetry.otel_setup",
        "has no attribute 'no_such_setup'",
    ),
    (
        "negative driver timeout",
        lambda t: {"drivers": {"default": {"kind": "test", "model": "m"}, "o": o(timeout=-5)}},
        "drivers.o.timeout",
        "would time out every call",
    ),
    (
        "base_url that is not http",
        lambda t: {"drivers": {"default": {"kind": "test", "model": "m"}, "o": o(base_url="localhost:8000")}},
        "drivers.o.base_url",
        "is not an http:// or https:// URL",
    ),
    (
        "state_dir under a file",
        lambda t: {"system": {"state_dir": str(_file(t) / "state")}},
        "system.state_dir",
        "is not a directory",
    ),
    (
        "log_file under a file",
        lambda t: {"system": {"log_file": str(_file(t) / "nova.log")}},
        "system.log_file",
        "is not a directory",
    ),
    (
        "lane_dir under a file",
        lambda t: {"system": {"lane_dir": str(_file(t) / "lanes")}},
        "system.lane_dir",
        "is not a directory",
    ),
    (
        "lane_dir too long for a unix socket",
        lambda t: {"system": {"lane_dir": str(t / ("x" * 110))}},
        "system.lane_dir",
        "too long for Unix sockets",
    ),
    (
        "host that does not resolve",
        lambda t: {"system": {"host": "no-such-host.invalid"}},
        "system.host",
        "does not resolve",
    ),
    (
        "unknown log level",
        lambda t: {"system": {"log_level": "VERBOSE"}},
        "system.log_level",
        "is not a log level",
    ),
    (
        "call timeout of zero",
        lambda t: {"llm": {"timeout_s": 0}},
        "llm.timeout_s",
        "greater than 0",
    ),
    (
        "heartbeat interval of zero",
        lambda t: {"supervision": {"heart_interval_s": 0}},
        "supervision.heart_interval_s",
        "greater than 0",
    ),
    # Already found at load before these checks; kept so the table lists the whole surface.
    (
        "fallback target naming an unknown driver",
        lambda t: {"fallback": {"targets": ["nope/model"]}},
        "fallback.targets[0]",
        "'nope'",
    ),
    (
        "rate limit of 0",
        lambda t: {"ratelimit": {"limits": {"default": {"requests_per_minute": 0}}}},
        "ratelimit.limits",
        "greater than or equal to 1",
    ),
    (
        "unknown driver kind",
        lambda t: {"drivers": {"default": {"kind": "opnai"}}},
        "drivers.default.kind",
        "did you mean 'openai'?",
    ),
]


def o(**options: Any) -> dict[str, Any]:
    return {
        "kind": "openai",
        "api_key": "sk-test-x",
        "base_url": "http://127.0.0.1:9/v1",
        "model": "m",
        **options,
    }


def toml(raw: dict[str, Any]) -> str:
    """Just enough TOML for these rows: tables of scalars and lists, arrays of tables."""
    lines: list[str] = []

    def table(prefix: str, values: dict[str, Any]) -> None:
        scalars = {k: v for k, v in values.items() if not isinstance(v, dict)}
        lines.append(f"[{prefix}]")
        lines.extend(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in scalars.items())
        for k, v in values.items():
            if isinstance(v, dict):
                table(f"{prefix}.{json.dumps(k)}", v)

    for section, values in raw.items():
        if isinstance(values, list):
            for entry in values:
                lines.append(f"[[{section}]]")
                lines.extend(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in entry.items())
        else:
            table(section, values)
    return "\n".join(lines) + "\n"


def config_file(tmp_path: Path, make: Callable[[Path], dict[str, Any]]) -> Path:
    raw = make(tmp_path)
    system = {"admin_port": next_port(), "state_dir": str(tmp_path / "state"), **raw.pop("system", {})}
    path = tmp_path / "nova.toml"
    path.write_text(toml({"system": system, **raw}))
    return path


def assert_names(message: str, path: Path, key: str, fragment: str) -> None:
    line = next((line for line in message.splitlines() if f"{path}: key '{key}'" in line), None)
    assert line is not None, message
    assert fragment in line, line


@pytest.mark.parametrize(("case", "make", "key", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_found_by_config_check_and_at_start(
    case: str,
    make: Callable[[Path], dict[str, Any]],
    key: str,
    fragment: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = config_file(tmp_path, make)
    assert main(["config", "check", str(path)]) == 2
    assert_names(capsys.readouterr().err, path, key, fragment)

    with pytest.raises(errors.ConfigurationError) as caught:
        system = NovaSystem.start(load_config(path))
        system.stop()  # only when the check failed to stop it
    assert_names(caught.value.message, path, key, fragment)


def test_nova_run_stops_at_once_with_the_file_and_the_key(tmp_path: Path) -> None:
    make = next(c[1] for c in CASES if c[2] == "cache.path")
    path = config_file(tmp_path, make)
    done = subprocess.run(
        [sys.executable, "-m", "nova", "--config", str(path), "run"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 2, done
    assert_names(done.stderr, path, "cache.path", "is not a directory")


def test_every_problem_found_at_start_is_reported_at_once(tmp_path: Path) -> None:
    make = lambda t: {  # noqa: E731
        "cache": {"enabled": True, "backend": "sqlite", "path": str(_file(t) / "c.sqlite3")},
        "plugins": [{"use": "no_such_module_x:Plugin"}],
        "context": {"token_counter": "no_such_module_x:Counter"},
    }
    path = config_file(tmp_path, make)
    with pytest.raises(errors.ConfigurationError) as caught:
        NovaSystem.start(load_config(path)).stop()
    for key in ("cache.path", "plugins[0]", "context.token_counter"):
        assert f"'{key}'" in caught.value.message, caught.value.message
