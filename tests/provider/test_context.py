"""Conversation context: trimming rules, stores (memory and real SQLite), the manager, summaries."""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from pydantic import ValidationError

from nova.context import (
    SUMMARY_PREFIX,
    ContextSettings,
    Conversation,
    ConversationStore,
    MemoryStore,
    SQLiteStore,
    is_summary,
    trim,
)
from nova.errors import ContextLengthExceededError, InvalidInputError
from nova.types import ChatRequest, Message, Response, ToolCall


class FakeCounter:
    """Each message costs 10 tokens, the reply priming 0: budget math is easy to follow."""

    def count_text(self, text: str) -> int:
        return len(text)

    def count_messages(self, messages: Sequence[Message]) -> int:
        return 10 * len(messages)


def sys(text: str = "rules") -> Message:
    return Message(role="system", content=text)


def user(text: str, **kw: object) -> Message:
    return Message(role="user", content=text, **kw)


def bot(text: str) -> Message:
    return Message(role="assistant", content=text)


def call(*ids: str) -> Message:
    return Message(role="assistant", tool_calls=tuple(ToolCall(id=i, name="lookup") for i in ids))


def result(call_id: str) -> Message:
    return Message(role="tool", tool_call_id=call_id, content="42")


def fit(messages: list[Message], window: int, reply_budget: int = 0) -> list[Message]:
    return trim(messages, window=window, reply_budget=reply_budget, counter=FakeCounter()).messages


# -- trimming -------------------------------------------------------------------------------------


def test_everything_is_kept_when_it_fits() -> None:
    msgs = [sys(), user("a"), bot("b"), user("c")]
    r = trim(msgs, window=40, reply_budget=0, counter=FakeCounter())
    assert r.messages == msgs and r.dropped == [] and r.tokens == 40


def test_oldest_turns_are_dropped_first_and_system_is_kept() -> None:
    msgs = [sys(), user("q1"), bot("a1"), user("q2"), bot("a2"), user("q3")]
    r = trim(msgs, window=60, reply_budget=20, counter=FakeCounter())  # room for 4 messages
    assert r.messages == [sys(), user("q2"), bot("a2"), user("q3")]
    assert r.dropped == [user("q1"), bot("a1")]


def test_reply_budget_is_taken_from_the_window() -> None:
    msgs = [user("q1"), bot("a1"), user("q2")]
    assert fit(msgs, window=30) == msgs
    assert fit(msgs, window=30, reply_budget=1) == [user("q2")]


def test_pinned_messages_are_kept_in_place() -> None:
    pinned = user("my name is Ada", pinned=True)
    msgs = [sys(), pinned, bot("hi Ada"), user("q2"), bot("a2"), user("q3")]
    assert fit(msgs, window=40) == [sys(), pinned, user("q3")]


def test_a_tool_call_is_never_separated_from_its_results() -> None:
    msgs = [
        user("q1"),
        call("c1", "c2"),
        result("c1"),
        result("c2"),
        bot("a1"),
        user("q2"),
        bot("a2"),
        user("q3"),
    ]
    kept = fit(msgs, window=30)
    assert kept == [user("q2"), bot("a2"), user("q3")]
    for window in range(10, 90, 10):  # at no size is a call kept without its results or vice versa
        try:
            kept = fit(msgs, window=window)
        except ContextLengthExceededError:
            continue
        assert (call("c1", "c2") in kept) == (result("c1") in kept) == (result("c2") in kept)


def test_a_pinned_tool_result_keeps_its_call() -> None:
    pinned_result = Message(role="tool", tool_call_id="c1", content="42", pinned=True)
    msgs = [user("q1"), call("c1"), pinned_result, bot("a1"), user("q2")]
    assert fit(msgs, window=30) == [call("c1"), pinned_result, user("q2")]


def test_the_newest_user_turn_is_kept_with_its_tool_exchange() -> None:
    msgs = [user("q1"), bot("a1"), user("q2"), call("c1"), result("c1")]
    assert fit(msgs, window=30) == [user("q2"), call("c1"), result("c1")]


def test_when_even_the_newest_turn_does_not_fit_the_error_says_so() -> None:
    msgs = [sys(), user("q1"), bot("a1"), user("q2")]
    with pytest.raises(ContextLengthExceededError, match="newest turn") as info:
        fit(msgs, window=25, reply_budget=6)
    assert "19" in str(info.value) and "reply budget 6" in str(info.value)


def test_a_reply_budget_as_large_as_the_window_is_an_error() -> None:
    with pytest.raises(ContextLengthExceededError, match="reply budget"):
        fit([user("q")], window=100, reply_budget=100)


class UnevenCounter(FakeCounter):
    """Not additive: a prompt of more than 2 messages costs an extra 15 tokens."""

    def count_messages(self, messages: Sequence[Message]) -> int:
        return 10 * len(messages) + (15 if len(messages) > 2 else 0)


def test_a_counter_that_is_not_additive_still_gets_a_prompt_that_fits() -> None:
    msgs = [user("q1"), bot("a1"), user("q2"), bot("a2"), user("q3")]
    r = trim(msgs, window=40, reply_budget=0, counter=UnevenCounter())
    # the additive view says 3 messages fit (30), the real count says 45: one more turn goes
    assert r.messages == [user("q3")] and r.tokens == 10


# -- stores ---------------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ConversationStore]:
    s: ConversationStore = MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "c.sqlite3")
    yield s
    s.close()


def test_store_appends_in_order_and_lists(store: ConversationStore) -> None:
    assert store.history("c1") == [] and store.list() == []
    store.append("c1", user("a"), bot("b"))
    store.append("c1", user("c"))
    store.append("c2", user("x"))
    assert store.history("c1") == [user("a"), bot("b"), user("c")]
    assert store.list() == ["c1", "c2"]


def test_store_round_trips_every_message_shape(store: ConversationStore) -> None:
    msgs = [sys(), user("hi", name="ada", pinned=True), call("c1"), result("c1"), bot("done")]
    store.append("c", *msgs)
    assert store.history("c") == msgs


def test_store_reset_forgets_one_conversation(store: ConversationStore) -> None:
    store.append("c1", user("a"))
    store.append("c2", user("b"))
    store.reset("c1")
    assert store.history("c1") == [] and store.list() == ["c2"]


def test_fork_copies_and_then_the_two_diverge(store: ConversationStore) -> None:
    store.append("main", user("a"), bot("b"))
    store.fork("main", "branch")
    store.append("branch", user("only in branch"))
    store.append("main", user("only in main"))
    assert store.history("branch") == [user("a"), bot("b"), user("only in branch")]
    assert store.history("main") == [user("a"), bot("b"), user("only in main")]


def test_fork_refuses_unknown_sources_and_existing_targets(store: ConversationStore) -> None:
    store.append("a", user("x"))
    store.append("b", user("y"))
    with pytest.raises(InvalidInputError, match="no messages"):
        store.fork("missing", "new")
    with pytest.raises(InvalidInputError, match="already exists"):
        store.fork("a", "b")
    assert store.history("b") == [user("y")]


def test_store_rejects_an_empty_id(store: ConversationStore) -> None:
    with pytest.raises(InvalidInputError, match="conversation id"):
        store.append("", user("x"))


def test_sqlite_conversations_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "conv.sqlite3"
    first = SQLiteStore(path)
    first.append("c1", sys(), user("a"), call("t1"), result("t1"))
    first.close()
    again = SQLiteStore(path)
    assert again.history("c1") == [sys(), user("a"), call("t1"), result("t1")]
    again.append("c1", bot("b"))
    assert again.history("c1")[-1] == bot("b")
    again.close()


def test_sqlite_stores_json_not_pickles(tmp_path: Path) -> None:
    path = tmp_path / "conv.sqlite3"
    SQLiteStore(path).append("c1", user("hello"))
    (body,) = sqlite3.connect(path).execute("SELECT body FROM messages").fetchone()
    assert Message.model_validate_json(body) == user("hello")


def test_a_damaged_sqlite_row_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "conv.sqlite3"
    store = SQLiteStore(path)
    store.append("c1", user("a"), bot("b"))
    with sqlite3.connect(path) as db:
        db.execute("UPDATE messages SET body = '{not json' WHERE seq = 0")
    with caplog.at_level(logging.WARNING, logger="nova.context"):
        assert store.history("c1") == [bot("b")]
    assert "unreadable" in caplog.text


def test_sqlite_store_is_safe_from_several_threads(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "conv.sqlite3")

    def write(n: int) -> None:
        for i in range(20):
            store.append("shared", user(f"{n}-{i}"))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    texts = [m.text for m in store.history("shared")]
    assert sorted(texts) == sorted(f"{n}-{i}" for n in range(4) for i in range(20))


# -- the manager ----------------------------------------------------------------------------------


def make_conv(store: ConversationStore | None = None, **settings: object) -> Conversation:
    settings = {"reply_budget_tokens": 0, **settings}
    return Conversation(store or MemoryStore(), counter=FakeCounter(), settings=ContextSettings(**settings))


def test_record_appends_the_turn_and_the_answer_with_tool_calls() -> None:
    conv = make_conv()
    conv.record("c", [sys(), user("weather?")], Response(text="", tool_calls=(ToolCall(id="t", name="w"),)))
    conv.record("c", [result("t")], Response(text="sunny"))
    asked = Message(role="assistant", tool_calls=(ToolCall(id="t", name="w"),))
    assert conv.history("c") == [sys(), user("weather?"), asked, result("t"), bot("sunny")]


def test_a_resent_system_prompt_is_stored_and_sent_once() -> None:
    conv = make_conv()
    conv.record("c", [sys(), user("q1")], Response(text="a1"))
    messages, _ = conv.prepare("c", [sys(), user("q2")], window=1000)
    assert messages == [sys(), user("q1"), bot("a1"), user("q2")]
    conv.record("c", [sys(), user("q2")], Response(text="a2"))
    assert [m.role for m in conv.history("c")] == ["system", "user", "assistant", "user", "assistant"]


def test_prepare_trims_history_with_the_default_window_and_reply_budget() -> None:
    conv = make_conv(default_context_window=50, reply_budget_tokens=20)
    for i in range(3):
        conv.record("c", [user(f"q{i}")], Response(text=f"a{i}"))
    messages, dropped = conv.prepare("c", [user("q3")])
    assert messages == [user("q2"), bot("a2"), user("q3")]
    assert dropped == [user("q0"), bot("a0"), user("q1"), bot("a1")]
    assert len(conv.history("c")) == 6  # preparing changes nothing


def test_prepare_request_uses_max_tokens_as_the_reply_budget() -> None:
    conv = make_conv(reply_budget_tokens=0)
    conv.record("c", [user("q0")], Response(text="a0"))
    request = ChatRequest(messages=[user("q1")], max_tokens=15, model="m")
    sent, dropped = conv.prepare_request("c", request, window=40)
    assert sent.messages == (user("q1"),) and sent.model == "m" and dropped == [user("q0"), bot("a0")]
    sent, dropped = conv.prepare_request("c", request.model_copy(update={"max_tokens": None}), window=40)
    assert len(sent.messages) == 3 and dropped == []


def test_from_settings_builds_a_sqlite_store_under_base_dir(tmp_path: Path) -> None:
    conv = Conversation.from_settings(ContextSettings(store="sqlite", path="conv.db"), base_dir=tmp_path)
    conv.record("c", [user("q")], Response(text="a"))
    conv.close()
    assert SQLiteStore(tmp_path / "conv.db").history("c") == [user("q"), bot("a")]


def test_settings_are_frozen_and_reject_unknown_keys() -> None:
    with pytest.raises(ValidationError, match="windw"):
        ContextSettings(windw=3)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        ContextSettings().store = "sqlite"  # type: ignore[misc]


def test_summary_replaces_dropped_turns_with_one_pinned_message() -> None:
    conv = make_conv(summary_model="small", default_context_window=50)
    conv.record("c", [sys(), user("my name is Ada")], Response(text="hello Ada"))
    conv.record("c", [user("q1")], Response(text="a1"))
    messages, dropped = conv.prepare("c", [user("q2")])
    assert dropped == [user("my name is Ada"), bot("hello Ada")]
    prompt = conv.summary_prompt("c", dropped)
    assert prompt.model == "small" and prompt.max_tokens == 512
    assert "user: my name is Ada" in prompt.messages[-1].text
    assert conv.apply_summary("c", dropped, "The user is Ada.")
    history = conv.history("c")
    assert history[0] == sys() and is_summary(history[1])
    assert history[1].text == SUMMARY_PREFIX + "The user is Ada." and history[2:] == [user("q1"), bot("a1")]
    # the summary is pinned: trimming keeps it
    assert history[1] in conv.prepare("c", [user("q2")], window=40)[0]


def test_a_new_summary_folds_in_the_previous_one() -> None:
    conv = make_conv()
    conv.record("c", [user("q0")], Response(text="a0"))
    assert conv.apply_summary("c", [user("q0"), bot("a0")], "first")
    conv.record("c", [user("q1")], Response(text="a1"))
    dropped = [user("q1"), bot("a1")]
    assert "(earlier summary) first" in conv.summary_prompt("c", dropped).messages[-1].text
    assert conv.apply_summary("c", dropped, "second")
    assert conv.history("c") == [Message(role="system", content=SUMMARY_PREFIX + "second", pinned=True)]


def test_a_summary_of_messages_no_longer_there_changes_nothing() -> None:
    conv = make_conv()
    conv.record("c", [user("q0")], Response(text="a0"))
    conv.reset("c")
    conv.record("c", [user("other")], Response(text="x"))
    assert not conv.apply_summary("c", [user("q0"), bot("a0")], "stale")
    assert conv.history("c") == [user("other"), bot("x")]


def test_fork_and_list_pass_through() -> None:
    conv = make_conv()
    conv.record("a", [user("q")], Response(text="r"))
    conv.fork("a", "b")
    assert conv.list() == ["a", "b"] and conv.history("b") == conv.history("a")
