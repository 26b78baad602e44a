"""The facade rejects bad options and messages itself, with a typed error naming the option,
before anything is sent (so these tests need no running system)."""

from __future__ import annotations

from typing import Any

import pytest

from nova import errors, llm
from nova.messages import CallOptions
from tests.conftest import arun

BAD_OPTIONS = [
    ("timeout", "soon"),
    ("timeout", 0),
    ("timeout", -5),
    ("timeout", float("nan")),
    ("ttl", [60]),
    ("cache", "refrsh"),
    ("cache", "yes"),
    ("driver", 3),
    ("conversation", 7),
    ("fallback", "openai/gpt-4o-mini"),
    ("fallback", [1, 2]),
]


@pytest.fixture(autouse=True)
def _no_system(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> Any:
        raise AssertionError("a bad call must fail before it reaches Nova")

    monkeypatch.setattr(llm, "_bridge", refuse)


@pytest.mark.parametrize(("name", "value"), BAD_OPTIONS, ids=[f"{n}={v!r}" for n, v in BAD_OPTIONS])
def test_a_bad_option_is_an_invalid_input_error_naming_it(name: str, value: Any) -> None:
    calls = [
        lambda: llm.chat("hi", **{name: value}),
        lambda: llm.complete("hi", **{name: value}),
        lambda: list(llm.stream("hi", **{name: value})),
        lambda: arun(llm.achat("hi", **{name: value})),
    ]
    for call in calls:
        with pytest.raises(errors.InvalidInputError) as raised:
            call()
        assert raised.value.field == name
        assert f"{name}=" in raised.value.message and repr(value)[:20] in raised.value.message


@pytest.mark.parametrize(("name", "value"), [("max_tokens", True), ("max_tokens", "16"), ("seed", False)])
def test_a_number_parameter_takes_no_bool_or_string(name: str, value: Any) -> None:
    with pytest.raises(errors.InvalidInputError) as raised:
        llm.chat("hi", **{name: value})
    assert raised.value.field == name


@pytest.mark.parametrize("messages", [42, None, {"role": "user", "content": "hi"}])
def test_messages_of_the_wrong_type_are_an_invalid_input_error(messages: Any) -> None:
    with pytest.raises(errors.InvalidInputError) as raised:
        llm.chat(messages)
    assert raised.value.field == "messages" and "a list of messages" in raised.value.message


@pytest.mark.parametrize("timeout", [0, -1.5, float("inf")])
def test_call_options_sent_by_message_reject_the_same_timeouts(timeout: float) -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        CallOptions(timeout_s=timeout)
    assert CallOptions(timeout_s=0.5).timeout_s == 0.5
