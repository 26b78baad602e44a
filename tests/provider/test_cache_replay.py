"""replay_chunks: a cached answer served to a streaming caller gives back the same answer."""

from __future__ import annotations

import pytest

from nova.cache import replay_chunks
from nova.types import Response, ToolCall, Usage, collect_chunks

USAGE = Usage(input_tokens=30, output_tokens=12, cached_input_tokens=10, reasoning_tokens=4)


def same_content(a: Response, b: Response) -> bool:
    fields = ("text", "finish_reason", "raw_finish_reason", "usage", "model", "id", "tool_calls")
    return all(getattr(a, f) == getattr(b, f) for f in fields)


@pytest.mark.parametrize(
    "response",
    [
        Response(
            text="The capital of France is Paris.",
            finish_reason="stop",
            raw_finish_reason="stop",
            usage=USAGE,
            model="gpt-4o-mini",
            id="chatcmpl-1",
        ),
        Response(text="", finish_reason="length", usage=USAGE, model="m"),
        Response(text="Zürich 東京 🚀" * 50, finish_reason="stop", usage=USAGE),
        Response(
            text="Let me check.",
            finish_reason="tool_calls",
            raw_finish_reason="tool_use",
            usage=USAGE,
            model="claude",
            id="msg_1",
            tool_calls=(
                ToolCall(id="t1", name="weather", arguments={"city": "Paris", "days": [1, 2]}),
                ToolCall(id="t2", name="time", arguments={}),
            ),
        ),
    ],
    ids=["text", "empty", "unicode", "tool-calls"],
)
def test_collecting_the_replay_gives_back_the_response(response: Response) -> None:
    chunks = replay_chunks(response)
    assert same_content(collect_chunks(chunks, driver=response.driver), response)
    assert all(c.cached for c in chunks)
    assert [c.is_last for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].usage == USAGE and chunks[-1].finish_reason == response.finish_reason


def test_text_comes_in_a_few_pieces() -> None:
    text = "word " * 1000
    chunks = replay_chunks(Response(text=text, finish_reason="stop"), pieces=4)
    pieces = [c.text for c in chunks if c.text]
    assert len(pieces) == 4 and "".join(pieces) == text
    assert len(replay_chunks(Response(text="hi"), pieces=4)) == 3  # "h", "i", then the last chunk


def test_tool_calls_arrive_as_deltas_with_json_arguments() -> None:
    call = ToolCall(id="t1", name="weather", arguments={"city": "Paris"})
    chunks = replay_chunks(Response(finish_reason="tool_calls", tool_calls=(call,)))
    [delta] = [d for c in chunks for d in c.tool_calls]
    assert (delta.index, delta.id, delta.name, delta.arguments) == (0, "t1", "weather", '{"city": "Paris"}')
