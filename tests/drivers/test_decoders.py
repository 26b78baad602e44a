"""The stream decoders: lines and Server-Sent Events, whatever the line endings and however the
bytes are split into reads."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nova.drivers._decoders import LineDecoder, ServerSentEvent, SSEDecoder


def lines(*reads: bytes) -> tuple[list[str], str | None]:
    decoder = LineDecoder()
    out = [line for data in reads for line in decoder.feed(data)]
    return out, decoder.close()


def events(reads: Iterable[bytes]) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    return [event for data in reads for event in decoder.feed(data)]


def split(data: bytes, *offsets: int) -> list[bytes]:
    bounds = [0, *offsets, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


# -- lines ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ending", [b"\n", b"\r", b"\r\n"])
def test_lines_end_in_lf_cr_or_crlf(ending: bytes) -> None:
    assert lines(b"one" + ending + b"two" + ending + ending + b"rest") == (["one", "two", ""], "rest")


def test_mixed_line_endings_in_one_read() -> None:
    assert lines(b"a\nb\rc\r\nd\n\r\ne") == (["a", "b", "c", "d", ""], "e")


def test_cr_at_the_end_of_one_read_and_lf_at_the_start_of_the_next_are_one_ending() -> None:
    assert lines(b"one\r", b"\ntwo\r", b"\n") == (["one", "two"], None)


def test_an_empty_read_between_cr_and_lf_changes_nothing() -> None:
    assert lines(b"one\r", b"", b"\ntwo\n") == (["one", "two"], None)


def test_cr_then_cr_is_an_empty_line() -> None:
    assert lines(b"one\r", b"\rtwo\n") == (["one", "", "two"], None)


def test_a_utf8_character_split_across_reads_is_whole() -> None:
    data = "héllo wörld ✓ 日本\n".encode()
    for cut in range(1, len(data)):
        assert lines(data[:cut], data[cut:]) == (["héllo wörld ✓ 日本"], None), cut


def test_byte_by_byte_reads() -> None:
    data = "a€\r\nb\rc\n".encode()
    assert lines(*(data[i : i + 1] for i in range(len(data)))) == (["a€", "b", "c"], None)


def test_invalid_utf8_is_replaced_not_raised() -> None:
    assert lines(b"ok \xff\xfe\n") == (["ok \ufffd\ufffd"], None)


def test_close_gives_the_unterminated_rest_once() -> None:
    decoder = LineDecoder()
    assert list(decoder.feed(b'{"done": true}')) == []
    assert decoder.close() == '{"done": true}'
    assert decoder.close() is None


# -- server-sent events -----------------------------------------------------------------------------


def test_openai_style_events() -> None:
    body = b'data: {"a": 1}\n\ndata: {"b": 2}\n\ndata: [DONE]\n\n'
    assert events([body]) == [
        ServerSentEvent("message", '{"a": 1}'),
        ServerSentEvent("message", '{"b": 2}'),
        ServerSentEvent("message", "[DONE]"),
    ]


def test_event_names_comments_and_unknown_fields() -> None:
    body = (
        b": this is a comment\r\n"
        b"event: message_start\r\n"
        b"id: 7\r\n"
        b"retry: 100\r\n"
        b"data: {}\r\n"
        b"\r\n"
        b":keep-alive\r\n\r\n"
        b"event: ping\r\ndata: {}\r\n\r\n"
    )
    assert events([body]) == [ServerSentEvent("message_start", "{}"), ServerSentEvent("ping", "{}")]


def test_multi_line_data_is_joined_with_newlines() -> None:
    body = b"data: first\ndata:second\ndata:  third\ndata\n\n"
    assert events([body]) == [ServerSentEvent("message", "first\nsecond\n third\n")]


def test_the_event_name_does_not_leak_into_the_next_event() -> None:
    body = b"event: error\ndata: x\n\ndata: y\n\n"
    assert events([body]) == [ServerSentEvent("error", "x"), ServerSentEvent("message", "y")]


def test_a_blank_line_without_data_dispatches_nothing() -> None:
    assert events([b"\n\nevent: ping\n\n: c\n\n"]) == []


def test_an_unterminated_last_event_is_discarded() -> None:
    assert events([b"data: whole\n\ndata: cut"]) == [ServerSentEvent("message", "whole")]
    assert events([b"data: whole\n\ndata: no blank line\n"]) == [ServerSentEvent("message", "whole")]


def test_cr_lf_split_between_reads_inside_an_event() -> None:
    body = b'event: delta\r\ndata: {"t": "\xc3\xa9"}\r\n\r\n'
    expected = [ServerSentEvent("delta", '{"t": "é"}')]
    for cut in range(1, len(body)):
        assert events(split(body, cut)) == expected, cut


# -- any split of a stream gives the same events -------------------------------------------------

_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=12
)
_NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)
_ENDING = st.sampled_from(["\n", "\r", "\r\n"])


@st.composite
def sse_streams(draw: st.DrawFn) -> tuple[bytes, list[ServerSentEvent]]:
    """An event stream with random line endings and comments, and the events it holds."""
    out: list[str] = []
    expected: list[ServerSentEvent] = []
    for _ in range(draw(st.integers(0, 5))):
        if draw(st.booleans()):
            out.append(":" + draw(_TEXT) + draw(_ENDING))
        name = draw(st.none() | _NAME)
        if name is not None:
            out.append(f"event: {name}" + draw(_ENDING))
        data = draw(st.lists(_TEXT, min_size=1, max_size=3))
        for line in data:
            out.append(f"data: {line}" + draw(_ENDING))
        blank = draw(_ENDING)
        # After a CR, a bare LF would finish that line ending (CRLF) instead of being a blank line.
        out.append("\r\n" if blank == "\n" and out[-1].endswith("\r") else blank)
        expected.append(ServerSentEvent(name or "message", "\n".join(data)))
    if draw(st.booleans()):  # a cut-off event at the end: never dispatched
        out.append("data: " + draw(_TEXT))
    return "".join(out).encode(), expected


@settings(max_examples=300, deadline=None)
@given(stream=sse_streams(), cuts=st.lists(st.integers(0, 400), max_size=12))
def test_any_split_into_reads_gives_the_same_events_as_one_read(
    stream: tuple[bytes, list[ServerSentEvent]], cuts: list[int]
) -> None:
    body, expected = stream
    assert events([body]) == expected
    offsets = sorted(min(c, len(body)) for c in cuts)  # repeated offsets make empty reads
    assert events(split(body, *offsets)) == expected


@settings(max_examples=200, deadline=None)
@given(
    text=st.lists(_TEXT, max_size=6),
    endings=st.lists(_ENDING, min_size=6, max_size=6),
    cuts=st.lists(st.integers(0, 200), max_size=10),
)
def test_any_split_into_reads_gives_the_same_lines(
    text: list[str], endings: list[str], cuts: list[int]
) -> None:
    body = "".join(line + ending for line, ending in zip(text, endings, strict=False))
    whole = lines(body.encode())
    offsets = sorted(min(c, len(body.encode())) for c in cuts)
    assert lines(*split(body.encode(), *offsets)) == whole
    assert whole == (body.replace("\r\n", "\n").replace("\r", "\n").split("\n")[:-1], None)
