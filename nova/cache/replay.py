"""Serving a cached answer to a streaming caller: the `Response` replayed as a chunk stream."""

from __future__ import annotations

import json

from nova.types import Chunk, Response, ToolCallDelta

__all__ = ["replay_chunks"]


def replay_chunks(response: Response, *, pieces: int = 4) -> list[Chunk]:
    """`response` as a stream: its text in up to `pieces` chunks, its tool calls as one chunk of
    `ToolCallDelta`s, then a last empty chunk with `finish_reason` and `usage`. Every chunk carries the
    model, the id and `cached=True`; `collect_chunks` of the result gives back the same content.
    """
    model, id_ = response.model, response.id
    chunks = [Chunk(text=p, model=model, id=id_, cached=True) for p in _split(response.text, max(1, pieces))]
    if response.tool_calls:
        deltas = tuple(
            ToolCallDelta(index=i, id=call.id, name=call.name, arguments=json.dumps(call.arguments))
            for i, call in enumerate(response.tool_calls)
        )
        chunks.append(Chunk(tool_calls=deltas, model=model, id=id_, cached=True))
    chunks.append(
        Chunk(
            finish_reason=response.finish_reason,
            raw_finish_reason=response.raw_finish_reason,
            usage=response.usage,
            model=model,
            id=id_,
            cached=True,
        )
    )
    return chunks


def _split(text: str, pieces: int) -> list[str]:
    """`text` cut into at most `pieces` parts of near-equal length (none for empty text)."""
    if not text:
        return []
    size = -(-len(text) // pieces)  # ceiling division
    return [text[i : i + size] for i in range(0, len(text), size)]
