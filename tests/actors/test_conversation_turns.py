"""Through the real actor system: summaries of dropped turns, one call at a time per conversation,
pauses from rate-limited intermediate attempts, and SQLite files under `system.state_dir`."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nova import errors
from nova.context import SUMMARY_PREFIX, SQLiteStore, is_summary
from nova.messages import CallSucceeded
from nova.supervisors.system import NovaSystem
from tests.integration_helpers import (
    Calls,
    EventTap,
    chat_call,
    config_for,
    log_lines,
    next_port,
    running,
    stream_call,
    wait_until,
)

pytestmark = pytest.mark.integration

RECORD = {"kind": "test", "handler": "tests.actors.handlers:record"}


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("turns-state")


@pytest.fixture(scope="module")
def system(state: Path) -> Iterator[NovaSystem]:
    config = config_for(
        state,
        port=next_port(),
        drivers={
            "default": RECORD,
            "summarizer": {"kind": "test", "handler": "tests.actors.handlers:summarize"},
            "limited": RECORD,
            "backup": {"kind": "test"},
        },
        context={
            "store": "sqlite",
            "path": "convs/conversations.sqlite3",  # relative: under system.state_dir
            "summarize": True,
            "summary_driver": "summarizer",
            "default_context_window": 120,
            "reply_budget_tokens": 16,
        },
        cache={"enabled": True, "backend": "sqlite", "path": "cache/answers.sqlite3"},
        ratelimit={"limits": {"limited": {"requests_per_minute": 1000}}},
        fallback={"retry": {"max_attempts_per_target": 1}},
    )
    with running(config) as system:
        yield system


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "upstream.jsonl"


def history(state: Path, conv: str) -> list[Any]:
    store = SQLiteStore(state / "convs" / "conversations.sqlite3")
    try:
        return store.history(conv)
    finally:
        store.close()


def long_turn(i: int, marker: str = "") -> str:
    return f"turn {i}{marker}: " + "words " * 12  # ~31 tokens: three turns overflow the window


# -- summaries ------------------------------------------------------------------------------------


def test_dropped_turns_are_summarised_by_the_summary_driver_and_the_next_call_carries_it(
    system: NovaSystem, state: Path, log: Path
) -> None:
    for i in range(3):  # the third call drops turn 0
        Calls(system).ok(chat_call(long_turn(i), conversation="sum", log=log))
    summary = wait_until(lambda: [m for m in history(state, "sum") if is_summary(m)])
    assert summary, "no summary was stored after a call dropped turns"
    assert summary[0].text == SUMMARY_PREFIX + "digest of turn 0"  # written by the summarizer driver
    Calls(system).ok(chat_call(long_turn(3), conversation="sum", log=log))
    sent = log_lines(log)[-1]["messages"]
    assert sent[0] == ["system", SUMMARY_PREFIX + "digest of turn 0"]
    assert sent[-1][1].startswith("turn 3:")
    assert not any(text.startswith(("turn 0:", "echo: turn 0:")) for _, text in sent)
    # That call dropped turns 1 and 2: the next summary folds the first one in.
    folded = wait_until(lambda: [m for m in history(state, "sum") if is_summary(m) and "turn 2" in m.text])
    assert folded and folded[0].text == SUMMARY_PREFIX + "digest of turn 0, turn 1, turn 2"
    assert sum(is_summary(m) for m in history(state, "sum")) == 1


def test_a_failing_summary_never_fails_the_call(system: NovaSystem, state: Path, log: Path) -> None:
    nova_log = state / "nova.log"
    for i in range(3):  # the summarizer fails on transcripts that hold FAIL
        response = Calls(system).ok(chat_call(long_turn(i, " FAIL"), conversation="sum-fail", log=log))
        assert response.text.startswith(f"echo: turn {i} FAIL")
    warned = wait_until(
        lambda: (
            nova_log.exists() and "'sum-fail': summarising 2 dropped messages failed" in nova_log.read_text()
        )
    )
    assert warned, "the failed summary left no warning in nova.log"
    assert not any(is_summary(m) for m in history(state, "sum-fail"))
    assert len(history(state, "sum-fail")) == 6  # every turn recorded


# -- one call at a time per conversation ----------------------------------------------------------


def test_calls_on_one_conversation_run_one_at_a_time_and_never_interleave(
    system: NovaSystem, log: Path
) -> None:
    calls = [
        chat_call(f"q{i}", conversation="serial", log=log, script={"text": f"a{i}", "delay": 0.05})
        for i in range(4)
    ]
    replies = Calls(system).many(calls, timeout=30)
    assert all(isinstance(r[-1], CallSucceeded) for r in replies.values())
    lines = log_lines(log)
    assert len(lines) == 4
    for k, line in enumerate(lines):  # each call saw every earlier turn, complete and in order
        earlier = [
            p for x in lines[:k] for p in (["user", x["prompt"]], ["assistant", "a" + x["prompt"][1:]])
        ]
        assert line["messages"] == [*earlier, ["user", line["prompt"]]]


def test_a_call_waiting_for_its_conversation_still_times_out(system: NovaSystem, log: Path) -> None:
    slow = chat_call("slow", conversation="waits", log=log, script={"text": "done", "delay": 1.5})
    thread = threading.Thread(target=Calls(system).one, args=(slow,), daemon=True)
    thread.start()
    assert wait_until(lambda: log_lines(log, "slow")), "the first call never reached the driver"
    error = Calls(system).error(chat_call("impatient", conversation="waits", log=log, timeout=0.3))
    assert isinstance(error, errors.RequestTimeoutError)
    thread.join(timeout=10)
    after = Calls(system).ok(chat_call("after", conversation="waits", log=log))
    assert after.text == "echo: after"
    assert [x["prompt"] for x in log_lines(log)] == ["slow", "after"]  # the impatient one never ran
    assert log_lines(log)[-1]["messages"] == [["user", "slow"], ["assistant", "done"], ["user", "after"]]


# -- rate limits: every 429 pauses its target -----------------------------------------------------


def test_a_429_on_an_intermediate_attempt_pauses_that_target(system: NovaSystem, log: Path) -> None:
    limited = {"error": "RateLimitError", "status_code": 429, "retry_after": 1.5, "message": "slow down"}
    with EventTap(system, topics=("ratelimit.",)) as tap:
        call = chat_call("try limited", driver="limited", fallback=["backup"], log=log, script=limited)
        response = Calls(system).ok(call)
        assert response.driver == "backup" and len(response.attempts) == 2  # the call succeeded
        # At once: the pause began with the first attempt's 429, a whole attempt ago.
        waiting = chat_call("after the pause", driver="limited", log=log)
        assert Calls(system).ok(waiting).text == "echo: after the pause"
        paused = tap.wait_for("ratelimit.paused", timeout=10)[0]
        delayed = tap.wait_for("ratelimit.delayed", timeout=10, request_id=waiting.request_id)[0]
    assert paused.data["target"].startswith("limited")
    assert delayed.data["wait_s"] > 0  # it waited for the pause instead of hammering the service
    assert [x["prompt"] for x in log_lines(log)] == ["try limited", "after the pause"]


# -- state files ----------------------------------------------------------------------------------


def test_relative_sqlite_paths_are_under_the_state_dir(system: NovaSystem, state: Path) -> None:
    call = chat_call("cache me under the state dir")
    first = Calls(system).ok(call)
    again = Calls(system).ok(chat_call("cache me under the state dir"))
    assert not first.cached and again.cached
    assert (state / "cache" / "answers.sqlite3").is_file()
    Calls(system).ok(chat_call("remember me", conversation="files"))
    assert (state / "convs" / "conversations.sqlite3").is_file()
    assert not Path("cache/answers.sqlite3").exists() and not Path("convs").exists()


def test_a_stream_on_a_busy_conversation_waits_its_turn_too(system: NovaSystem, log: Path) -> None:
    first = chat_call("one", conversation="mixed", log=log, script={"text": "uno", "delay": 0.2})
    second = stream_call("two", conversation="mixed", log=log)
    replies = Calls(system).many([first, second], timeout=30)
    assert all(isinstance(r[-1], CallSucceeded) for r in replies.values())
    answers = {"one": "uno", "two": "echo: two"}
    earlier, later = log_lines(log)
    assert later["messages"] == [
        ["user", earlier["prompt"]],
        ["assistant", answers[earlier["prompt"]]],
        ["user", later["prompt"]],
    ]
