"""nova.testing: the isolated system, override() as the code under test sees it, capture_events(),
and the pytest plugin, run on the example user project (examples/testing_project)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import nova
from nova import errors, llm
from nova.testing import capture_events, isolated_system, override, plugin, test_config
from nova.types import ChatRequest, Response, Usage
from tests.integration_helpers import pid_alive, session_of, session_pids

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "testing_project"

# The plugin's own fixtures (Nova's test run does not load the installed plugin by entry point).
nova_config = plugin.nova_config
nova_system = plugin.nova_system


def _pytest(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """pytest in a fresh process with only nova.testing's plugin, on this checkout's code."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "nova.testing.plugin", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# -- the example project --------------------------------------------------------------------------


def test_the_example_projects_tests_pass() -> None:
    run = _pytest(EXAMPLE, "-c", str(EXAMPLE / "pytest.ini"), "--rootdir", str(EXAMPLE))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "10 passed" in run.stdout, run.stdout


def test_the_tests_in_docs_testing_md_pass(tmp_path: Path) -> None:
    blocks = re.findall(r"^```python\n(.*?)^```", (ROOT / "docs" / "testing.md").read_text(), re.M | re.S)
    tests = [b for b in blocks if "def test_" in b]
    assert len(tests) >= 3
    for i, block in enumerate(tests):
        (tmp_path / f"test_doc_{i}.py").write_text(block)
    run = _pytest(tmp_path, "--rootdir", str(tmp_path))
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{len(tests)} passed" in run.stdout, run.stdout


def test_a_run_that_does_not_use_the_fixtures_starts_nothing(tmp_path: Path) -> None:
    (tmp_path / "test_plain.py").write_text(
        textwrap.dedent(
            """
            import sys

            def test_plain():
                assert "thespian" not in sys.modules and "nova.supervisors.system" not in sys.modules
            """
        )
    )
    run = _pytest(tmp_path, "--rootdir", str(tmp_path))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout


def test_the_plugin_is_registered_as_a_pytest11_entry_point() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"nova": "nova.testing.plugin"}


# -- the isolated system --------------------------------------------------------------------------


def test_an_isolated_system_is_what_the_facade_uses_and_leaves_no_process(tmp_path: Path) -> None:
    before = dict(llm._state)
    with isolated_system(state_dir=tmp_path) as system:
        sid = session_of(system.config.system.admin_port)
        assert sid is not None
        pids = session_pids(sid)
        assert pids
        assert nova.llm.chat("ping").text == "echo: ping"
        assert llm.system() is system
        assert (tmp_path / "nova.log").exists()  # its state is in the directory given
    assert not [p for p in pids if pid_alive(p)]
    assert llm._state == before


def test_two_isolated_systems_get_different_ports() -> None:
    with isolated_system() as one, isolated_system() as two:
        assert one.config.system.admin_port != two.config.system.admin_port
        assert llm.system() is two
    # nothing of either is left
    assert session_of(one.config.system.admin_port) is None
    assert session_of(two.config.system.admin_port) is None


# -- override -------------------------------------------------------------------------------------


def test_replies_reach_every_facade_call(nova_system: Any) -> None:
    async def both() -> tuple[str, str]:
        resp = await nova.llm.achat("a")
        text = "".join([c.text async for c in nova.llm.astream("b")])
        return resp.text, text

    with override(replies=["one", "two words", "three", "four five"]):
        assert nova.llm.chat("hi").text == "one"
        assert [c.text for c in nova.llm.stream("hi") if c.text] == ["two ", "words"]
        assert asyncio.run(both()) == ("three", "four five")
    with override(replies=["done"]):
        assert nova.llm.complete("Once upon a time").text == "done"


def test_a_scripted_reply_can_be_a_response_with_its_usage_and_finish_reason(nova_system: Any) -> None:
    scripted = {"text": "cut", "finish_reason": "length", "usage": {"input_tokens": 7, "output_tokens": 2}}
    with override(replies=[scripted]):
        resp = nova.llm.chat("hi")
    assert (resp.text, resp.finish_reason, resp.usage.total_tokens) == ("cut", "length", 9)


def test_the_override_answers_whatever_driver_or_fallback_the_code_asks_for(nova_system: Any) -> None:
    with override(replies=["a", "b"]):
        assert nova.llm.chat("hi", model="anthropic/claude-3-5-haiku-latest").text == "a"
        assert nova.llm.chat("hi", driver="openai", fallback=["ollama/llama3"]).text == "b"


def test_a_handler_sees_each_request_and_may_be_a_closure(nova_system: Any) -> None:
    seen: list[str] = []

    def model(request: ChatRequest) -> str:
        seen.append(request.messages[-1].text)
        return request.messages[-1].text.upper()

    with override(replies=["first"], handler=model) as calls:
        assert nova.llm.chat("a").text == "first"  # the replies come first
        assert nova.llm.chat("b", temperature=0.5).text == "B"
        assert nova.llm.chat("c").text == "C"
    assert seen == ["b", "c"]
    assert [r.messages[-1].text for r in calls.requests] == ["a", "b", "c"]
    assert calls.requests[1].temperature == 0.5


def test_error_replies_are_raised_typed(nova_system: Any) -> None:
    def refuse(request: ChatRequest) -> str:
        raise errors.ContentFilterError("no")

    with override(replies=[errors.AuthenticationError("bad key", status_code=401)], handler=refuse):
        with pytest.raises(errors.AuthenticationError) as auth:
            nova.llm.chat("hi")
        with pytest.raises(errors.ContentFilterError):
            nova.llm.chat("hi")
    assert auth.value.status_code == 401


def test_a_stream_can_break_after_its_first_chunks(nova_system: Any) -> None:
    got: list[str] = []
    with override(replies=[{"text": "one two three", "fail_after_chunks": 2}]):
        with pytest.raises(errors.IncompleteStreamError):
            for chunk in nova.llm.stream("hi"):
                got.append(chunk.text)
    assert got == ["one ", "two "]


def test_a_response_object_is_a_reply(nova_system: Any) -> None:
    reply = Response(text="made", finish_reason="stop", usage=Usage(input_tokens=1, output_tokens=1))
    with override(replies=[reply]):
        assert nova.llm.chat("hi").text == "made"


def test_running_out_of_replies_fails_the_test_loudly(nova_system: Any) -> None:
    with override(replies=["only"]):
        nova.llm.chat("hi")
        with pytest.raises(AssertionError) as exc:
            nova.llm.chat("again")
    assert not isinstance(exc.value, errors.NovaError)  # code under test catching NovaError misses it
    assert "no reply left" in str(exc.value)


def test_an_override_ends_with_its_block(nova_system: Any) -> None:
    with override(replies=["scripted", "unused"]):
        assert nova.llm.chat("hi").text == "scripted"
    assert nova.llm.chat("hi").text == "echo: hi"
    assert llm._call_hooks == []


def test_the_innermost_override_answers_and_the_outer_one_keeps_its_replies(nova_system: Any) -> None:
    with override(replies=["outer 1", "outer 2"]) as outer:
        assert nova.llm.chat("a").text == "outer 1"
        with override(replies=["inner"]):
            assert nova.llm.chat("b").text == "inner"
        assert nova.llm.chat("c").text == "outer 2"
    assert [r.messages[-1].text for r in outer.requests] == ["a", "c"]


def test_an_override_left_open_ends_with_its_system() -> None:
    with isolated_system():
        override(replies=["never used"]).__enter__()
    assert llm._call_hooks == []


def test_an_override_without_a_system_says_what_is_missing() -> None:
    with pytest.raises(errors.ConfigurationError, match="nova_system"):
        with override(replies=["x"]):
            pass
    assert llm._call_hooks == []


# -- events ---------------------------------------------------------------------------------------


def test_capture_events_sees_each_calls_lifecycle(nova_system: Any) -> None:
    usage = {"input_tokens": 10, "output_tokens": 5}
    with (
        capture_events() as events,
        override(replies=[{"text": "ok", "usage": usage}, {"error": "ServerError"}]) as calls,
    ):
        nova.llm.chat("hi")
        with pytest.raises(errors.ServerError):
            nova.llm.chat("hi")
        done = events.wait_for("request.completed")
        failed = events.wait_for("request.failed")
    ok_id, bad_id = calls.request_ids
    assert [e.request_id for e in done] == [ok_id]
    assert done[0].usage is not None and done[0].usage.total_tokens == 15
    assert failed[0].request_id == bad_id and failed[0].error_type == "ServerError"
    assert {e.request_id for e in events.named("request.started")} == {ok_id, bad_id}


def test_capture_events_can_keep_only_some_topics(nova_system: Any) -> None:
    with capture_events(topics=("request.",)) as events:
        nova.llm.chat("hi")
        events.wait_for("request.completed")
    assert {n.split(".")[0] for n in events.names()} == {"request"}


def test_the_test_config_keeps_scripted_errors_from_opening_a_circuit(nova_system: Any) -> None:
    with override(replies=[{"error": "ServerError"}] * 12 + ["fine"]):
        for _ in range(12):
            with pytest.raises(errors.ServerError):
                nova.llm.chat("hi")
        assert nova.llm.chat("hi").text == "fine"


@pytest.fixture
def cached_system(tmp_path: Path) -> Iterator[Any]:
    with isolated_system(test_config(cache={"enabled": True}), state_dir=tmp_path) as system:
        yield system


def test_overridden_calls_bypass_the_cache(cached_system: Any) -> None:
    with override(replies=["first", "second"]):
        assert nova.llm.chat("same").text == "first"
        resp = nova.llm.chat("same")
    assert (resp.text, resp.cached) == ("second", False)
