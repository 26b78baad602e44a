"""The default token counter overcounts (safe for trimming) and counters plug in by "module:attr"."""

from __future__ import annotations

import json
import math
import re

import pytest

from nova.errors import ConfigurationError
from nova.tokens import EstimatingCounter, TokenCounter, load_counter
from nova.types import ChatRequest, CompletionRequest, ImagePart, Message, TextPart, Tool, ToolCall

ENGLISH = [
    "The quick brown fox jumps over the lazy dog.",
    "Please summarise the attached quarterly report and list the three biggest risks, with numbers.",
    "def add(a: int, b: int) -> int:\n    return a + b  # simple\n",
    json.dumps({"role": "user", "content": "What's the weather in Paris tomorrow?", "temperature": 0.2}),
    "Internationalization, responsibilities, and counterintuitive characteristics.",
]
CJK = ["北京是中华人民共和国的首都。", "東京は日本の首都です。", "서울은 대한민국의 수도입니다."]


@pytest.mark.parametrize("text", ENGLISH)
def test_english_estimate_is_above_chars_over_four(text: str) -> None:
    # chars/4 is the usual English rule of thumb and itself undercounts chat JSON:
    # the estimate must sit clearly above it.
    assert EstimatingCounter().count_text(text) >= len(text) / 4 * 1.3
    # and above one token per word, which no BPE tokenizer goes below on ordinary English
    assert EstimatingCounter().count_text(text) >= len(re.findall(r"\w+", text))


@pytest.mark.parametrize("text", CJK)
def test_cjk_counts_at_least_one_token_per_character(text: str) -> None:
    # o200k measured 0.72 tokens per Chinese character; one per character is a safe upper reference.
    assert EstimatingCounter().count_text(text) >= len(text.replace(" ", ""))


def test_mixed_text_and_emoji_are_counted_densely() -> None:
    counter = EstimatingCounter()
    assert counter.count_text("") == 0
    assert counter.count_text("abc") == 1
    assert counter.count_text("abcd") == 2  # rounded up
    assert counter.count_text("😀😀") == 4  # astral characters: two each
    assert counter.count_text("abc漢字") == 3


def test_messages_add_overhead_names_tool_calls_and_images() -> None:
    counter = EstimatingCounter(per_message=4, reply_priming=3, image_tokens=100)
    user = Message(role="user", content="hello there")  # 11 chars -> 4
    assert counter.count_messages([]) == 3
    assert counter.count_messages([user]) == 3 + 4 + 4
    named = Message(role="user", content="hello there", name="bob")
    assert counter.count_messages([named]) > counter.count_messages([user])
    call = Message(
        role="assistant", tool_calls=(ToolCall(id="c1", name="weather", arguments={"city": "Paris"}),)
    )
    assert counter.count_messages([call]) > counter.count_messages([Message(role="assistant", content="")])
    image = Message(role="user", content=(TextPart(text="hello there"), ImagePart(url="https://x/y.png")))
    assert counter.count_messages([image]) == counter.count_messages([user]) + 100


def test_request_count_includes_tools_and_response_format() -> None:
    counter = EstimatingCounter()
    plain = ChatRequest(messages=[{"role": "user", "content": "hi"}])
    with_tools = plain.model_copy(update={"tools": (Tool(name="weather", description="Weather for a city"),)})
    with_format = plain.model_copy(update={"response_format": {"type": "json_object"}})
    assert counter.count_request(with_tools) > counter.count_request(plain)
    assert counter.count_request(with_format) > counter.count_request(plain)
    assert counter.count_request(CompletionRequest(prompt="x" * 30)) == 3 + 10


class WordCounter:
    """A counter a user might plug in."""

    def count_text(self, text: str) -> int:
        return len(text.split())

    def count_messages(self, messages: object) -> int:
        return sum(self.count_text(m.text) for m in messages)  # type: ignore[attr-defined]


WORD_COUNTER = WordCounter()


def make_counter() -> WordCounter:
    return WordCounter()


@pytest.mark.parametrize("attr", ["WordCounter", "WORD_COUNTER", "make_counter"])
def test_load_counter_accepts_a_class_an_instance_or_a_factory(attr: str) -> None:
    counter = load_counter(f"{__name__}:{attr}")
    assert isinstance(counter, WordCounter)
    assert isinstance(counter, TokenCounter)


def test_load_counter_defaults_to_the_estimate() -> None:
    assert isinstance(load_counter(None), EstimatingCounter)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("no_colon_here", "module:attr"),
        ("nova.no_such_module:X", "cannot import"),
        (f"{__name__}:Missing", "no attribute"),
        ("json:dumps", "could not be created"),  # a callable that needs arguments
        (f"{__name__}:ENGLISH", "not a token counter"),
    ],
)
def test_load_counter_errors_name_the_setting(spec: str, needle: str) -> None:
    with pytest.raises(ConfigurationError, match=needle) as info:
        load_counter(spec)
    assert "token_counter" in str(info.value)


@pytest.mark.parametrize(
    "text", ["plain", "é", "日本語 text", "Привет, мир", "ok 😀 👍🏽!", "mix é中ж😀ßא\u2019 z"]
)
def test_fast_range_count_matches_a_per_character_reference(text: str) -> None:
    def reference(t: str) -> int:
        dense = sum(0x800 <= ord(ch) <= 0xFFFF for ch in t)
        astral = sum(ord(ch) > 0xFFFF for ch in t)
        return math.ceil((len(t) - dense - astral) / 3 + dense + 2 * astral)

    assert EstimatingCounter().count_text(text) == reference(text)
