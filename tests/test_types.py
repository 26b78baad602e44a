"""The request and response types: dict input, clear validation errors, normalisation, pickling."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from pydantic import ValidationError

from nova import errors
from nova.types import (
    Attempt,
    ChatRequest,
    Chunk,
    CompletionRequest,
    ImagePart,
    Message,
    Response,
    TextPart,
    Tool,
    ToolCall,
    ToolCallDelta,
    Usage,
    collect_chunks,
    validation_error,
)

USER = {"role": "user", "content": "What is the capital of France?"}


def invalid(**request: Any) -> errors.InvalidInputError:
    with pytest.raises(ValidationError) as caught:
        ChatRequest(**request)
    return validation_error(caught.value)


# -- input ---------------------------------------------------------------------------------------


def test_plain_dicts_become_typed_messages_tools_and_calls() -> None:
    request = ChatRequest(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": "Be brief."},
            USER,
            {"role": "assistant", "tool_calls": [{"id": "c1", "name": "f", "arguments": {"x": 1}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "and "},
                    {"type": "text", "text": "this?"},
                    {"type": "image", "url": "https://example.test/a.png"},
                ],
            },
        ],
        tools=[{"name": "f", "parameters": {"type": "object"}}],
    )
    assert [m.role for m in request.messages] == ["system", "user", "assistant", "tool", "user"]
    assert isinstance(request.messages[2].tool_calls[0], ToolCall)
    assert request.messages[2].text == ""
    last = request.messages[4]
    assert isinstance(last.content, tuple)
    assert isinstance(last.content[0], TextPart) and isinstance(last.content[2], ImagePart)
    assert last.text == "and this?"
    assert request.tools == (Tool(name="f", parameters={"type": "object"}),)


@pytest.mark.parametrize(
    ("message", "field", "words"),
    [
        ({"role": "robot", "content": "hi"}, "messages.0.role", "'robot'"),
        ({"role": "user"}, "messages.0", "user message needs content"),
        ({"role": "system", "content": None}, "messages.0", "system message needs content"),
        ({"role": "tool", "content": "42"}, "messages.0", "tool_call_id"),
        ({"role": "assistant"}, "messages.0", "content or tool_calls"),
        ({"role": "user", "content": "x", "tool_calls": [{"name": "f"}]}, "messages.0", "only assistant"),
        ({"role": "user", "content": "x", "colour": "red"}, "messages.0.colour", "Extra inputs"),
    ],
)
def test_a_bad_message_is_an_invalid_input_error_naming_the_field(
    message: dict[str, Any], field: str, words: str
) -> None:
    error = invalid(messages=[message])
    assert error.field == field
    assert words in str(error)
    # one complaint only: no misleading "needs at least one item" beside it
    assert len(error.details["problems"]) == 1, error.details["problems"]
    assert isinstance(error, ValueError) and isinstance(error, errors.NovaError)


def test_an_empty_conversation_is_refused_in_plain_words() -> None:
    error = invalid(messages=[])
    assert error.field == "messages"
    assert "at least one message" in str(error)


def test_bad_parameters_name_the_parameter_and_the_value() -> None:
    error = invalid(messages=[USER], temperature=-1)
    assert error.field == "temperature" and "(got -1)" in str(error)
    assert invalid(messages=[USER], top_p=2).field == "top_p"
    assert invalid(messages=[USER], max_tokens=-5).field == "max_tokens"
    assert invalid(messages=[USER], tempurature=0.2).field == "tempurature"


def test_validation_error_pickles_and_lists_every_problem() -> None:
    error = invalid(messages=[{"role": "robot", "content": "x"}], temperature=-1)
    assert sorted(p.split(":")[0] for p in error.details["problems"]) == ["messages.0.role", "temperature"]
    copy = pickle.loads(pickle.dumps(error))
    assert copy.field == error.field and copy.details == error.details and str(copy) == str(error)


def test_stop_accepts_one_string_or_several() -> None:
    assert ChatRequest(messages=[USER], stop="\n").stop == ("\n",)
    assert ChatRequest(messages=[USER], stop=["a", "b"]).stop == ("a", "b")
    assert CompletionRequest(prompt="x", stop="END").stop == ("END",)
    assert ChatRequest(messages=[USER]).stop is None


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("auto", "auto"),
        ("required", "required"),
        ("none", "none"),
        ("get_weather", "get_weather"),
        ({"type": "function", "function": {"name": "get_weather"}}, "get_weather"),
        ({"name": "get_weather"}, "get_weather"),
        ({"type": "tool", "name": "get_weather"}, "get_weather"),  # Anthropic's shape
        (None, None),
    ],
)
def test_tool_choice_forms(given: Any, expected: str | None) -> None:
    assert ChatRequest(messages=[USER], tool_choice=given).tool_choice == expected


def test_tools_in_openai_and_anthropic_shapes() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    openai = {"type": "function", "function": {"name": "weather", "description": "Now", "parameters": schema}}
    anthropic = {"name": "weather", "description": "Now", "input_schema": schema}
    assert (
        Tool.model_validate(openai)
        == Tool.model_validate(anthropic)
        == Tool(name="weather", description="Now", parameters=schema)
    )
    assert Tool(name="ping").parameters == {"type": "object", "properties": {}}


def test_tool_call_arguments_from_a_json_string() -> None:
    assert ToolCall(name="f", arguments='{"city": "Paris", "n": 2}').arguments == {"city": "Paris", "n": 2}
    assert ToolCall(name="f", arguments="").arguments == {}
    assert ToolCall(name="f", arguments="  ").arguments == {}
    assert ToolCall(name="f").arguments == {}


@pytest.mark.parametrize(("raw", "words"), [('{"city": "Par', "not valid JSON"), ("[1, 2]", "JSON object")])
def test_tool_call_arguments_that_are_not_a_json_object_fail_validation(raw: str, words: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ToolCall(name="f", arguments=raw)
    error = validation_error(caught.value)
    assert error.field == "arguments" and words in str(error)


def test_extra_is_kept_unchanged() -> None:
    extra = {"top_k": 5, "nested": {"a": [1, 2, {"b": None}]}}
    assert ChatRequest(messages=[USER], extra=extra).extra == extra


# -- usage ----------------------------------------------------------------------------------------


def test_usage_total_defaults_to_input_plus_output_and_is_kept_when_given() -> None:
    assert Usage(input_tokens=3, output_tokens=4).total_tokens == 7
    assert Usage(input_tokens=3, output_tokens=4, total_tokens=9).total_tokens == 9  # reasoning, etc.
    assert Usage().total_tokens == 0


def test_usage_adds_field_by_field() -> None:
    a = Usage(
        input_tokens=10, output_tokens=2, cached_input_tokens=4, reasoning_tokens=1, cache_write_tokens=3
    )
    b = Usage(input_tokens=5, output_tokens=5, total_tokens=11)
    total = a + b
    assert total == Usage(
        input_tokens=15,
        output_tokens=7,
        total_tokens=23,
        cached_input_tokens=4,
        reasoning_tokens=1,
        cache_write_tokens=3,
    )


# -- chunks ---------------------------------------------------------------------------------------


def test_collect_chunks_joins_text_tool_call_fragments_finish_and_usage() -> None:
    usage = Usage(input_tokens=9, output_tokens=6)
    chunks = [
        Chunk(text="Let me ", model="m-1", id="r-1"),
        Chunk(text="check.", tool_calls=(ToolCallDelta(index=0, id="c0", name="weather", arguments='{"ci'),)),
        Chunk(tool_calls=(ToolCallDelta(index=1, id="c1", name="time", arguments=""),)),
        Chunk(
            tool_calls=(
                ToolCallDelta(index=0, arguments='ty": "Paris"}'),
                ToolCallDelta(index=1, arguments='{"tz": "CET"}'),
            )
        ),
        Chunk(finish_reason="tool_calls", raw_finish_reason="tool_use", usage=usage),
    ]
    assert chunks[-1].is_last and not chunks[0].is_last
    response = collect_chunks(chunks, driver="anthropic")
    assert response.text == "Let me check."
    assert response.tool_calls == (
        ToolCall(id="c0", name="weather", arguments={"city": "Paris"}),
        ToolCall(id="c1", name="time", arguments={"tz": "CET"}),
    )
    assert (response.finish_reason, response.raw_finish_reason) == ("tool_calls", "tool_use")
    assert response.usage == usage
    assert (response.model, response.id, response.driver) == ("m-1", "r-1", "anthropic")


def test_collect_chunks_of_a_stream_without_a_last_chunk_says_other() -> None:
    response = collect_chunks([Chunk(text="cut")])
    assert response.finish_reason == "other" and response.usage == Usage()


# -- travelling -------------------------------------------------------------------------------------


def test_models_are_frozen() -> None:
    request = ChatRequest(messages=[USER])
    with pytest.raises(ValidationError):
        request.temperature = 1.0  # type: ignore[misc]
    with pytest.raises(ValidationError):
        Response(text="x").text = "y"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        Usage().input_tokens = 1  # type: ignore[misc]


def test_requests_responses_and_chunks_pickle() -> None:
    call = ToolCall(id="c", name="f", arguments={"x": [1, 2]})
    values = [
        ChatRequest(
            model="m",
            messages=[USER, {"role": "assistant", "tool_calls": [call]}],
            stop="x",
            tools=[{"name": "f"}],
            tool_choice="f",
            extra={"k": {"v": 1}},
        ),
        CompletionRequest(prompt="p", max_tokens=3, seed=1),
        Response(
            text="t",
            finish_reason="length",
            usage=Usage(input_tokens=1),
            tool_calls=(call,),
            attempts=(Attempt(driver="d", model="m", ok=False, error_type="ServerError"),),
            cost_usd=0.1,
        ),
        Chunk(
            text="t",
            tool_calls=(ToolCallDelta(index=1, arguments="{"),),
            finish_reason="stop",
            usage=Usage(output_tokens=2),
        ),
        Message(role="user", content=(TextPart(text="a"), ImagePart(url="data:image/png;base64,AA=="))),
    ]
    for value in values:
        assert pickle.loads(pickle.dumps(value)) == value


def test_text_with_an_unpaired_surrogate_is_invalid_input_naming_where() -> None:
    from pydantic import ValidationError

    from nova.types import ChatRequest, CompletionRequest, validation_error

    for make, field in (
        (lambda: ChatRequest(messages=[{"role": "user", "content": "a \ud800"}]), "messages.0"),
        (
            lambda: ChatRequest(messages=[{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]),
            "messages.0",
        ),
        (lambda: CompletionRequest(prompt="x \ud800"), "prompt"),
    ):
        with pytest.raises(ValidationError) as caught:
            make()
        error = validation_error(caught.value)
        assert error.field == field and "unpaired surrogate" in error.message
    assert ChatRequest(messages=[{"role": "user", "content": "héllo 😀"}]).messages[0].content == "héllo 😀"
