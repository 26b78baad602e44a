"""The cache key: every output-affecting input changes it; identical requests built differently share it."""

from __future__ import annotations

import math
import subprocess
import sys
from typing import Any

import pytest

from nova.cache import cache_key, canonical_request
from nova.errors import InvalidInputError
from nova.types import ChatRequest, CompletionRequest, ImagePart, Message, TextPart, Tool, ToolCall

WEATHER: dict[str, Any] = {
    "name": "weather",
    "description": "Weather in a city",
    "parameters": {"type": "object"},
}


def chat(**changes: Any) -> ChatRequest:
    base: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Paris?"},
        ],
        "temperature": 0.2,
        "max_tokens": 50,
        "top_p": 0.9,
        "stop": ["END"],
        "seed": 7,
        "tools": [WEATHER],
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "extra": {"frequency_penalty": 0.5},
    }
    return ChatRequest(**{**base, **changes})


def with_messages(*extra: dict[str, Any]) -> ChatRequest:
    return chat(messages=[{"role": "user", "content": "Weather in Paris?"}, *extra])


ASSISTANT_CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [{"id": "call_1", "name": "weather", "arguments": {"city": "Paris"}}],
}


def test_key_is_a_stable_sha256_hex_across_processes() -> None:
    key = cache_key("openai", chat())
    assert len(key) == 64 and int(key, 16) >= 0
    code = (
        "from tests.provider.test_cache_key import chat; from nova.cache import cache_key;"
        "print(cache_key('openai', chat()))"
    )
    # another interpreter (another hash seed) computes the same key: nothing depends on hash() or ids
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == key


VARIANTS: dict[str, tuple[str, ChatRequest | CompletionRequest]] = {
    "driver": ("anthropic", chat()),
    "model": ("openai", chat(model="gpt-4o")),
    "message text": (
        "openai",
        chat(
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Rome?"},
            ]
        ),
    ),
    "message role": (
        "openai",
        chat(
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "assistant", "content": "Weather in Paris?"},
            ]
        ),
    ),
    "message order": (
        "openai",
        chat(
            messages=[
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "system", "content": "Be brief."},
            ]
        ),
    ),
    "image part": (
        "openai",
        chat(
            messages=[
                Message(
                    role="user",
                    content=(TextPart(text="Weather in Paris?"), ImagePart(url="https://x.test/a.png")),
                )
            ]
        ),
    ),
    "tool call arguments": (
        "openai",
        with_messages(
            {
                **ASSISTANT_CALL,
                "tool_calls": [{"id": "call_1", "name": "weather", "arguments": {"city": "Rome"}}],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ),
    ),
    "tool result": (
        "openai",
        with_messages(ASSISTANT_CALL, {"role": "tool", "tool_call_id": "call_1", "content": "rain"}),
    ),
    "tool call id": (
        "openai",
        with_messages(
            {
                **ASSISTANT_CALL,
                "tool_calls": [{"id": "call_2", "name": "weather", "arguments": {"city": "Paris"}}],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ),
    ),
    "tool_call_id": (
        "openai",
        with_messages(ASSISTANT_CALL, {"role": "tool", "tool_call_id": "call_2", "content": "sunny"}),
    ),
    "tool call name": (
        "openai",
        with_messages(
            {
                **ASSISTANT_CALL,
                "tool_calls": [{"id": "call_1", "name": "time", "arguments": {"city": "Paris"}}],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ),
    ),
    "name": (
        "openai",
        chat(
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Paris?", "name": "ann"},
            ]
        ),
    ),
    "temperature": ("openai", chat(temperature=0.3)),
    "temperature unset": ("openai", chat(temperature=None)),
    "max_tokens": ("openai", chat(max_tokens=51)),
    "top_p": ("openai", chat(top_p=1.0)),
    "stop": ("openai", chat(stop=["STOP"])),
    "no stop": ("openai", chat(stop=None)),
    "seed": ("openai", chat(seed=8)),
    "tools": ("openai", chat(tools=[{**WEATHER, "description": "Forecast"}])),
    "tool schema": (
        "openai",
        chat(tools=[{**WEATHER, "parameters": {"type": "object", "required": ["city"]}}]),
    ),
    "no tools": ("openai", chat(tools=[], tool_choice=None)),
    "tool_choice": ("openai", chat(tool_choice="required")),
    "response_format": ("openai", chat(response_format={"type": "text"})),
    "extra": ("openai", chat(extra={"frequency_penalty": 0.6})),
    "extra key": ("openai", chat(extra={"frequency_penalty": 0.5, "logit_bias": {"50256": -100}})),
    "completion": ("openai", CompletionRequest(model="gpt-4o-mini", prompt="Weather in Paris?")),
}

BASE_CHAT = chat(
    messages=[
        {"role": "user", "content": "Weather in Paris?"},
        ASSISTANT_CALL,
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
)


@pytest.mark.parametrize("what", sorted(VARIANTS))
def test_changing_any_output_affecting_input_misses(what: str) -> None:
    driver, request = VARIANTS[what]
    # the tool-conversation variants change one thing in BASE_CHAT, all others in chat()
    base = BASE_CHAT if isinstance(request, ChatRequest) and len(request.messages) == 3 else chat()
    assert cache_key(driver, request) != cache_key("openai", base)


def test_all_variants_are_distinct_from_each_other() -> None:
    keys = {cache_key(d, r) for d, r in VARIANTS.values()}
    assert len(keys) == len(VARIANTS)


def test_identical_requests_built_differently_share_a_key() -> None:
    key = cache_key("openai", chat())
    as_models = ChatRequest(
        model="gpt-4o-mini",
        messages=(
            Message(role="system", content="Be brief."),
            Message(role="user", content="Weather in Paris?"),
        ),
        temperature=0.2,
        max_tokens=50,
        top_p=0.9,
        stop="END",  # type: ignore[arg-type]  # a string, not a tuple: accepted
        seed=7,
        tools=(Tool(**WEATHER),),
        tool_choice="auto",
        response_format={"type": "json_object"},
        extra={"frequency_penalty": 0.5},
    )
    assert cache_key("openai", as_models) == key
    assert cache_key("openai", chat(stop=("END",))) == key
    assert cache_key("openai", chat(stop=["END", "END"])) == key
    assert cache_key("openai", chat(tools=[{"type": "function", "function": WEATHER}])) == key
    anthropic_tool = {
        "name": "weather",
        "description": "Weather in a city",
        "input_schema": {"type": "object"},
    }
    assert cache_key("openai", chat(tools=[anthropic_tool])) == key
    one_text_part = Message(role="user", content=(TextPart(text="Weather in Paris?"),))
    assert cache_key("openai", chat(messages=[chat().messages[0], one_text_part])) == key


def test_set_like_and_dict_ordering_do_not_matter() -> None:
    assert cache_key("x", chat(stop=["a", "b"])) == cache_key("x", chat(stop=["b", "a"]))
    assert cache_key("x", chat(stop=[])) == cache_key("x", chat(stop=None))
    e1 = chat(extra={"a": 1, "b": {"y": 2, "x": 1}})
    e2 = chat(extra={"b": {"x": 1, "y": 2}, "a": 1})
    assert cache_key("x", e1) == cache_key("x", e2)
    rf1 = chat(response_format={"type": "json_schema", "json_schema": {"name": "w", "strict": True}})
    rf2 = chat(response_format={"json_schema": {"strict": True, "name": "w"}, "type": "json_schema"})
    assert cache_key("x", rf1) == cache_key("x", rf2)
    assert cache_key(
        "x", chat(tool_choice={"type": "function", "function": {"name": "weather"}})
    ) == cache_key("x", chat(tool_choice="weather"))


def test_what_does_not_change_the_answer_does_not_change_the_key() -> None:
    pinned = chat(messages=[{"role": "system", "content": "Be brief.", "pinned": True}, chat().messages[1]])
    assert cache_key("x", pinned) == cache_key("x", chat())
    bookkeeping = chat(
        extra={"frequency_penalty": 0.5, "user": "u-42", "metadata": {"job": "7"}, "stream_options": {}}
    )
    assert cache_key("x", bookkeeping) == cache_key("x", chat())


def test_canonical_request_explains_the_key() -> None:
    body = canonical_request("openai", chat())
    assert body["kind"] == "chat" and body["stop"] == ["END"]
    assert body["messages"][1] == {
        "role": "user",
        "content": "Weather in Paris?",
        "tool_calls": [],
        "tool_call_id": None,
        "name": None,
    }
    call = canonical_request("openai", BASE_CHAT)["messages"][1]["tool_calls"][0]
    assert call == ToolCall(id="call_1", name="weather", arguments={"city": "Paris"}).model_dump(mode="json")


@pytest.mark.parametrize("bad", [object(), math.nan, {1, 2}])
def test_extra_that_json_cannot_carry_is_a_typed_error(bad: Any) -> None:
    with pytest.raises(InvalidInputError) as info:
        cache_key("openai", chat(extra={"weird": bad}))
    assert info.value.field == "extra"
