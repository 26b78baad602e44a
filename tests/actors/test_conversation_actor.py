"""Conversations by id through the real actor system: the driver sees earlier turns, trimmed to fit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nova.messages import CallOptions, ChatCall
from nova.supervisors.system import NovaSystem
from nova.types import ChatRequest
from tests.integration_helpers import Calls, chat_call, config_for, log_lines, running

pytestmark = pytest.mark.integration

RECORD = {"kind": "test", "handler": "tests.actors.handlers:record"}


def _config(tmp: Path, **context: Any) -> Any:
    return config_for(tmp, drivers={"default": RECORD}, context=context)


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NovaSystem]:
    with running(_config(tmp_path_factory.mktemp("conversation"))) as system:
        yield system


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "upstream.jsonl"


def test_the_second_turn_carries_the_first(system: NovaSystem, log: Path) -> None:
    Calls(system).ok(chat_call("my name is Ada", conversation="c1", log=log))
    Calls(system).ok(chat_call("what is my name?", conversation="c1", log=log))
    second = log_lines(log)[1]["messages"]
    assert second == [
        ["user", "my name is Ada"],
        ["assistant", "echo: my name is Ada"],
        ["user", "what is my name?"],
    ]


def test_conversations_do_not_mix_and_calls_without_one_keep_no_history(
    system: NovaSystem, log: Path
) -> None:
    Calls(system).ok(chat_call("I like tea", conversation="c-tea", log=log))
    Calls(system).ok(chat_call("I like coffee", conversation="c-coffee", log=log))
    Calls(system).ok(chat_call("no memory", log=log))
    Calls(system).ok(chat_call("and what do I like?", conversation="c-tea", log=log))
    lines = log_lines(log)
    assert lines[2]["messages"] == [["user", "no memory"]]
    assert [m[1] for m in lines[3]["messages"]] == ["I like tea", "echo: I like tea", "and what do I like?"]


def test_history_is_trimmed_to_the_window_keeping_the_system_message(tmp_path: Path) -> None:
    log = tmp_path / "upstream.jsonl"
    with running(_config(tmp_path, default_context_window=120, reply_budget_tokens=16)) as system:
        for i in range(8):
            request = ChatRequest(
                messages=[
                    {"role": "system", "content": "Answer briefly."},
                    {"role": "user", "content": f"turn {i}: " + "words " * 12},
                ],
                extra={"log": str(log)},
            )
            Calls(system).ok(ChatCall(request=request, options=CallOptions(conversation="long")))
    last = log_lines(log)[-1]["messages"]
    assert last[0] == ["system", "Answer briefly."]
    assert last[-1][1].startswith("turn 7:")
    assert not any(text.startswith("turn 0:") for _, text in last), "the oldest turn was not dropped"
    assert len(last) < 1 + 2 * 8


def test_a_sqlite_conversation_outlives_the_system(tmp_path: Path) -> None:
    log = tmp_path / "upstream.jsonl"
    store = str(tmp_path / "conversations.sqlite3")
    with running(_config(tmp_path, store="sqlite", path=store)) as system:
        Calls(system).ok(chat_call("remember the blue door", conversation="kept", log=log))
    with running(_config(tmp_path, store="sqlite", path=store)) as system:
        Calls(system).ok(chat_call("which door?", conversation="kept", log=log))
    assert [m[1] for m in log_lines(log)[1]["messages"]] == [
        "remember the blue door",
        "echo: remember the blue door",
        "which door?",
    ]
