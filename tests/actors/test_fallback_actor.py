"""The fallback stage in the real actor system: retries, next targets, circuits, streams."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nova import errors
from nova.messages import CallFailed, CallSucceeded
from nova.supervisors.system import NovaSystem
from tests.integration_helpers import Calls, EventTap, chat_call, config_for, log_lines, running, stream_call

pytestmark = pytest.mark.integration

RECORD = {"kind": "test", "handler": "tests.actors.handlers:record"}
BROKEN = {"kind": "test", "handler": "tests.actors.handlers:broken"}


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NovaSystem]:
    # one failing driver per test: circuit breakers are shared by every call of the system
    config = config_for(
        tmp_path_factory.mktemp("fallback"),
        drivers={
            "default": RECORD,
            "spare": RECORD,
            "down": BROKEN,
            "gone1": BROKEN,
            "gone2": BROKEN,
            "locked": BROKEN,
            "flaky": BROKEN,
            "dead_stream": BROKEN,
        },
        fallback={
            "retry": {"max_attempts_per_target": 2, "backoff_initial_s": 0.01, "jitter": 0},
            "circuit": {
                "window_size": 3,
                "minimum_calls": 3,
                "failure_rate_threshold": 100,
                "cooldown_s": 60,
            },
        },
    )
    with running(config) as system:
        yield system


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "upstream.jsonl"


def test_a_retryable_error_is_retried_then_the_next_target_answers(system: NovaSystem, log: Path) -> None:
    with EventTap(system, topics=("fallback.",)) as tap:
        call = chat_call("please answer", driver="down", fallback=["spare"], log=log)
        response = Calls(system).ok(call)
        tap.wait_for("fallback.next_target", request_id=call.request_id, driver="spare")
    assert response.driver == "spare" and response.text == "echo: please answer"
    attempts = [(a.driver, a.ok, a.error_type) for a in response.attempts]
    assert attempts == [("down", False, "ServerError"), ("down", False, "ServerError"), ("spare", True, None)]
    assert len({x["pid"] for x in log_lines(log)}) == 2  # two driver processes were called
    assert len(log_lines(log)) == 3


def test_an_authentication_error_is_not_retried_nor_sent_elsewhere(system: NovaSystem, log: Path) -> None:
    script = {"error": "AuthenticationError", "status_code": 401, "message": "bad key"}
    error = Calls(system).error(
        chat_call("secret", driver="locked", fallback=["spare"], log=log, script=script)
    )
    assert isinstance(error, errors.AuthenticationError)
    assert error.status_code == 401
    assert len(log_lines(log)) == 1


def test_all_targets_failed_carries_every_attempts_error(system: NovaSystem, log: Path) -> None:
    error = Calls(system).error(chat_call("nobody home", driver="gone1", fallback=["gone2"], log=log))
    assert isinstance(error, errors.AllTargetsFailedError)
    assert [type(e).__name__ for e in error.errors] == ["ServerError"] * 4
    assert len(log_lines(log)) == 4


def test_the_circuit_opens_once_the_failure_rate_is_reached_and_then_rejects_fast(
    system: NovaSystem, log: Path
) -> None:
    with EventTap(system, topics=("circuit.",)) as tap:
        for _ in range(2):  # 2 attempts per call: failures 1-2, then 3 opens the circuit
            Calls(system).error(chat_call("wobbly", driver="flaky", fallback=False, log=log))
        opened = tap.wait_for("circuit.opened", driver="flaky")[0]
    assert opened.data["failures"] == 3
    upstream = len(log_lines(log))
    assert upstream == 3
    error = Calls(system).error(chat_call("wobbly", driver="flaky", fallback=False, log=log))
    assert isinstance(error, errors.CircuitOpenError)
    assert len(log_lines(log)) == upstream  # rejected without calling the service
    rescued = Calls(system).ok(chat_call("wobbly", driver="flaky", fallback=["spare"], log=log))
    assert [(a.driver, a.error_type) for a in rescued.attempts] == [
        ("flaky", "CircuitOpenError"),
        ("spare", None),
    ]


def test_a_stream_falls_back_before_its_first_chunk(system: NovaSystem, log: Path) -> None:
    chunks, final = Calls(system).stream(
        stream_call("flow on", driver="dead_stream", fallback=["spare"], log=log)
    )
    assert isinstance(final, CallSucceeded)
    assert "".join(c.text for c in chunks) == "echo: flow on"
    assert [a.driver for a in final.response.attempts] == ["dead_stream", "dead_stream", "spare"]


def test_a_stream_broken_after_its_first_chunk_is_an_error_never_a_short_answer(
    system: NovaSystem, log: Path
) -> None:
    broken = {"text": "one two three four five", "fail_after_chunks": 2}
    call = stream_call("cut me off", fallback=["spare"], log=log, script=broken)
    chunks, final = Calls(system).stream(call)
    assert len(chunks) == 2 and "".join(c.text for c in chunks) == "one two "
    assert isinstance(final, CallFailed)
    assert isinstance(final.error, errors.StreamError)
    assert len(log_lines(log)) == 1  # no retry, no other target: the caller saw part of an answer
