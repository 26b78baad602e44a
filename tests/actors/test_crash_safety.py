"""Failures inside the pipeline reach the caller as typed errors, never as a second LLM call."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nova import errors
from nova.messages import CallSucceeded
from nova.supervisors.system import NovaSystem
from tests.integration_helpers import (
    Calls,
    actor_pid,
    chat_call,
    config_for,
    log_lines,
    running,
    stream_call,
)

pytestmark = pytest.mark.integration

HANDLERS = "tests.actors.handlers"


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NovaSystem]:
    config = config_for(
        tmp_path_factory.mktemp("crashes"),
        drivers={
            "default": {"kind": "test", "handler": f"{HANDLERS}:record"},
            "spare": {"kind": "test", "handler": f"{HANDLERS}:record"},
            "loud": {"kind": "test", "handler": f"{HANDLERS}:record"},
            "buggy": {"kind": "test", "handler": f"{HANDLERS}:crash"},
        },
        plugins=[
            {"use": f"{HANDLERS}:FaultyPlugin"},
            {"use": f"{HANDLERS}:ShoutingPlugin", "drivers": ["loud"]},
        ],
        context={"token_counter": f"{HANDLERS}:ExplodingCounter"},
        fallback={"retry": {"max_attempts_per_target": 3, "backoff_initial_s": 0.01}},
    )
    with running(config) as system:
        yield system


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "upstream.jsonl"


def test_a_driver_bug_is_a_typed_error_and_the_call_ran_once(system: NovaSystem, log: Path) -> None:
    error = Calls(system).error(chat_call("trip the bug", driver="buggy", log=log))
    assert isinstance(error, errors.ServerError) and not error.retryable
    assert "ValueError" in error.message and "buggy" in error.message
    assert len(log_lines(log)) == 1  # retries are allowed (3 per target) but a bug is not retried
    assert (
        Calls(system).ok(chat_call("still there", driver="buggy", test_reply={"text": "yes"})).text == "yes"
    )


def test_a_driver_bug_moves_the_call_to_the_next_target(system: NovaSystem, log: Path) -> None:
    response = Calls(system).ok(chat_call("trip the bug", driver="buggy", fallback=["spare"], log=log))
    assert response.driver == "spare"
    assert [(x["prompt"], x["pid"]) for x in log_lines(log)][0][0] == "trip the bug"
    assert len(log_lines(log)) == 2  # once on the buggy driver, once on the spare


def test_a_plugin_failing_before_the_request_names_itself_and_nothing_is_sent(
    system: NovaSystem, log: Path
) -> None:
    call = chat_call("guarded", log=log)
    call = call.model_copy(
        update={
            "request": call.request.model_copy(
                update={"extra": {**call.request.extra, "fail_in": "before_request"}}
            )
        }
    )
    error = Calls(system).error(call)
    assert isinstance(error, errors.PluginError)
    assert (error.plugin, error.hook) == ("faulty", "before_request")
    assert "faulty" in error.message
    assert log_lines(log) == []
    assert Calls(system).ok(chat_call("next one")).text == "echo: next one"


def test_a_plugin_failing_after_the_answer_does_not_run_the_call_again(system: NovaSystem, log: Path) -> None:
    call = chat_call("answered then lost", log=log)
    call = call.model_copy(
        update={
            "request": call.request.model_copy(
                update={"extra": {**call.request.extra, "fail_in": "after_response"}}
            )
        }
    )
    error = Calls(system).error(call)
    assert isinstance(error, errors.PluginError)
    assert (error.plugin, error.hook) == ("faulty", "after_response")
    assert len(log_lines(log)) == 1


def test_plugins_run_on_answers_and_stream_chunks(system: NovaSystem) -> None:
    assert Calls(system).ok(chat_call("quiet please", driver="loud")).text == "ECHO: QUIET PLEASE"
    chunks, final = Calls(system).stream(stream_call("quiet please", driver="loud"))
    assert [c.text for c in chunks if c.text] and all(c.text == c.text.upper() for c in chunks)
    assert isinstance(final, CallSucceeded) and final.response.text == "ECHO: QUIET PLEASE"
    assert Calls(system).ok(chat_call("quiet please")).text == "echo: quiet please"  # only for "loud"


def test_a_crash_inside_the_router_answers_the_call_and_the_router_lives_on(
    system: NovaSystem, log: Path
) -> None:
    router_pid = actor_pid(system, "pipeline", "router")
    error = Calls(system).error(chat_call("remember this", conversation="c-crash", log=log))
    assert isinstance(error, errors.ProviderError)
    assert "RuntimeError" in error.message and "counter bug" in error.message
    assert log_lines(log) == []
    assert actor_pid(system, "pipeline", "router") == router_pid  # caught, not restarted
    assert Calls(system).ok(chat_call("business as usual")).text == "echo: business as usual"
