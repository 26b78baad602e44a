"""Fits a conversation into a model's context window by dropping its oldest turns.

Rules, in order:
- system and pinned messages are always kept, in place;
- an assistant message with tool calls and the tool messages answering it form one group: they are
  kept or dropped together (a provider rejects a tool result without its call, and vice versa);
- a *turn* starts at a user message and runs to the next one; whole turns are dropped, oldest
  first, so the history still starts with a user message where it did;
- the newest user turn (the question being asked, with any tool exchange it started) is always
  kept. If even that does not fit, `ContextLengthExceededError` says so: no provider can answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from nova.errors import ContextLengthExceededError
from nova.tokens import TokenCounter
from nova.types import Message

__all__ = ["TrimResult", "trim"]


@dataclass(frozen=True)
class TrimResult:
    messages: list[Message]  # what to send, in order
    dropped: list[Message] = field(default_factory=list)  # what was left out, in order
    tokens: int = 0  # the counter's figure for `messages`


def _groups(messages: Sequence[Message]) -> list[list[int]]:
    """Indices of messages that stand or fall together."""
    groups: list[list[int]] = []
    open_calls = False  # the last group is an assistant tool-call message (plus results so far)
    for i, m in enumerate(messages):
        if m.role == "tool" and open_calls:
            groups[-1].append(i)
            continue
        groups.append([i])
        open_calls = m.role == "assistant" and bool(m.tool_calls)
    return groups


def _turns(messages: Sequence[Message], groups: list[list[int]]) -> list[list[int]]:
    """Group numbers per turn; a turn starts at each user message."""
    turns: list[list[int]] = []
    for g, members in enumerate(groups):
        if messages[members[0]].role == "user" or not turns:
            turns.append([g])
        else:
            turns[-1].append(g)
    return turns


def trim(messages: Sequence[Message], *, window: int, reply_budget: int, counter: TokenCounter) -> TrimResult:
    """Keep what fits in `window - reply_budget` tokens by the rules of the module docstring."""
    budget = window - reply_budget
    if budget <= 0:
        raise ContextLengthExceededError(
            f"the reply budget ({reply_budget} tokens) leaves no room in a {window}-token context window"
        )
    base = counter.count_messages(())
    cost = [counter.count_messages((m,)) - base for m in messages]  # additive view, checked below
    groups = _groups(messages)
    turns = _turns(messages, groups)
    keep = [True] * len(messages)

    def protected(g: int) -> bool:
        return any(messages[i].role == "system" or messages[i].pinned for i in groups[g])

    last_user = max(
        (t for t, gs in enumerate(turns) if messages[groups[gs[0]][0]].role == "user"), default=None
    )
    newest = len(turns) - 1 if last_user is None else last_user
    droppable = [[g for g in turns[t] if not protected(g)] for t in range(newest)]  # oldest first
    total = base + sum(cost)
    next_turn = 0
    while True:
        while total > budget and next_turn < len(droppable):
            for g in droppable[next_turn]:
                for i in groups[g]:
                    keep[i] = False
                    total -= cost[i]
            next_turn += 1
        kept = [m for m, k in zip(messages, keep, strict=True) if k]
        total = counter.count_messages(kept)  # the real figure, for counters that are not additive
        if total <= budget:
            dropped = [m for m, k in zip(messages, keep, strict=True) if not k]
            return TrimResult(messages=kept, dropped=dropped, tokens=total)
        if next_turn >= len(droppable):
            raise ContextLengthExceededError(
                f"the newest turn with the system and pinned messages needs about {total} tokens, but only "
                f"{budget} fit (context window {window} minus reply budget {reply_budget}); shorten the "
                "message, unpin some, lower max_tokens or use a model with a larger window"
            )
