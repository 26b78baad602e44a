"""Conversations by id: what to send for the next turn, what to remember after it.

`Conversation` is the plain object the router owns. Per call with `conversation=<id>`:

    messages, dropped = conv.prepare(conv_id, request.messages, window=w, reply_budget=r)
    ... call the model with `messages` ...
    conv.record(conv_id, request.messages, response)

With summarisation on, the router sends `conv.summary_prompt(conv_id, dropped)` to the summary
driver and stores the answer with `conv.apply_summary(conv_id, dropped, text)`: the dropped turns
(and any earlier summary) become one pinned system message that trimming always keeps.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from nova.context.settings import ContextSettings
from nova.context.stores import ConversationStore, MemoryStore, SQLiteStore
from nova.context.trim import TrimResult, trim
from nova.tokens import TokenCounter, load_counter
from nova.types import ChatRequest, ImagePart, Message, Response

__all__ = ["SUMMARY_PREFIX", "Conversation", "is_summary"]

SUMMARY_PREFIX = "Summary of earlier conversation: "
_SUMMARY_INSTRUCTIONS = (
    "You condense conversations. Summarise the conversation below so that it can continue without "
    "it: keep facts, names, numbers, decisions, preferences and open questions; drop small talk. "
    "Answer with the summary only, in the language of the conversation."
)


def is_summary(message: Message) -> bool:
    """True for the pinned message `apply_summary` writes."""
    return message.role == "system" and message.pinned and message.text.startswith(SUMMARY_PREFIX)


class Conversation:
    def __init__(
        self,
        store: ConversationStore | None = None,
        *,
        counter: TokenCounter | None = None,
        settings: ContextSettings | None = None,
    ) -> None:
        self.settings = settings or ContextSettings()
        self.store: ConversationStore = store or MemoryStore()
        self.counter: TokenCounter = counter or load_counter(self.settings.token_counter)

    @classmethod
    def from_settings(cls, settings: ContextSettings, *, base_dir: str | Path | None = None) -> Conversation:
        """The store and counter that `settings` name; a relative SQLite path (after `~` is
        expanded) is under `base_dir` (the router passes `system.state_dir`), whose parent
        directories are created."""
        store: ConversationStore
        if settings.store == "sqlite":
            store = SQLiteStore(_store_path(settings.path, base_dir))
        else:
            store = MemoryStore()
        return cls(store, settings=settings)

    # -- one call -------------------------------------------------------------------------------

    def prepare(
        self,
        conv_id: str,
        new_messages: Sequence[Message],
        *,
        window: int | None = None,
        reply_budget: int | None = None,
    ) -> tuple[list[Message], list[Message]]:
        """History plus the new turn, trimmed to fit: (messages to send, messages left out).

        `window` None: `settings.default_context_window`; `reply_budget` None: the configured one.
        """
        result = self.trim(conv_id, new_messages, window=window, reply_budget=reply_budget)
        return result.messages, result.dropped

    def trim(
        self,
        conv_id: str,
        new_messages: Sequence[Message],
        *,
        window: int | None = None,
        reply_budget: int | None = None,
    ) -> TrimResult:
        """Like `prepare`, with the token figure of what is sent."""
        history = self.store.history(conv_id)
        return trim(
            [*history, *self._new(history, new_messages)],
            window=window or self.settings.default_context_window,
            reply_budget=self.settings.reply_budget(reply_budget),
            counter=self.counter,
        )

    def prepare_request(
        self, conv_id: str, request: ChatRequest, *, window: int | None = None
    ) -> tuple[ChatRequest, list[Message]]:
        """The request with its messages replaced by the trimmed conversation, and what was dropped."""
        messages, dropped = self.prepare(
            conv_id, request.messages, window=window, reply_budget=request.max_tokens
        )
        return request.model_copy(update={"messages": tuple(messages)}), dropped

    def record(self, conv_id: str, new_messages: Sequence[Message], response: Response) -> None:
        """Remember the turn: the new messages, then the answer (with its tool calls)."""
        history = self.store.history(conv_id)
        answer = Message(
            role="assistant",
            content=response.text if response.text or not response.tool_calls else None,
            tool_calls=response.tool_calls,
        )
        self.store.append(conv_id, *self._new(history, new_messages), answer)

    @staticmethod
    def _new(history: Sequence[Message], new_messages: Sequence[Message]) -> list[Message]:
        # Callers often resend their system prompt with every turn: store and send it once.
        known = [m for m in history if m.role == "system"]
        return [m for m in new_messages if not (m.role == "system" and m in known)]

    # -- summaries ------------------------------------------------------------------------------

    def summary_prompt(self, conv_id: str, dropped: Sequence[Message]) -> ChatRequest:
        """The request that summarises `dropped` (and folds in the conversation's earlier summary)."""
        previous = [m.text[len(SUMMARY_PREFIX) :] for m in self.store.history(conv_id) if is_summary(m)]
        lines = [f"(earlier summary) {text}" for text in previous]
        lines += [_transcript_line(m) for m in dropped]
        return ChatRequest(
            model=self.settings.summary_model or "",
            messages=(
                Message(role="system", content=_SUMMARY_INSTRUCTIONS),
                Message(role="user", content="\n".join(lines)),
            ),
            max_tokens=self.settings.summary_max_tokens,
            temperature=0,
        )

    def apply_summary(self, conv_id: str, dropped: Sequence[Message], summary_text: str) -> bool:
        """Replace `dropped` and earlier summaries with one pinned summary message.

        False (and nothing changed) when the history no longer holds `dropped` in order, e.g. after
        a reset while the summary was being written.
        """
        history = self.store.history(conv_id)
        kept: list[Message] = []
        at: int | None = None
        j = 0
        for m in history:
            if j < len(dropped) and m == dropped[j]:
                j += 1
            elif not is_summary(m):
                kept.append(m)
                continue
            at = len(kept) if at is None else at
        if j < len(dropped) or at is None:
            return False
        summary = Message(role="system", content=SUMMARY_PREFIX + summary_text.strip(), pinned=True)
        self.store.replace(conv_id, [*kept[:at], summary, *kept[at:]])
        return True

    # -- passthrough ----------------------------------------------------------------------------

    def history(self, conv_id: str) -> list[Message]:
        return self.store.history(conv_id)

    def reset(self, conv_id: str) -> None:
        self.store.reset(conv_id)

    def fork(self, src_id: str, new_id: str) -> None:
        self.store.fork(src_id, new_id)

    def list(self) -> list[str]:
        return self.store.list()

    def close(self) -> None:
        self.store.close()


def _store_path(configured: str, base_dir: str | Path | None) -> str:
    if configured == ":memory:":
        return configured
    path = Path(configured).expanduser()
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir).expanduser() / path
    path.parent.mkdir(parents=True, exist_ok=True)
    return str(path)


def _transcript_line(m: Message) -> str:
    text = m.text
    if isinstance(m.content, tuple) and any(isinstance(p, ImagePart) for p in m.content):
        text += " [image]"
    if m.role == "tool":
        return f"tool result ({m.tool_call_id}): {text}"
    calls = "; ".join(f"called {c.name}({c.arguments})" for c in m.tool_calls)
    return f"{m.role}: {text}" + (f" [{calls}]" if calls else "")
