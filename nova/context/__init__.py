"""Conversation context management: stores, trimming to the context window, summaries,
one call at a time per conversation.

See docs/context.md. The router owns one `Conversation`; everything here is a plain object.
"""

from __future__ import annotations

from nova.context.conversation import SUMMARY_PREFIX, Conversation, is_summary
from nova.context.settings import ContextSettings
from nova.context.stores import ConversationStore, MemoryStore, SQLiteStore
from nova.context.trim import TrimResult, trim
from nova.context.turns import TurnQueue

__all__ = [
    "SUMMARY_PREFIX",
    "ContextSettings",
    "Conversation",
    "ConversationStore",
    "MemoryStore",
    "SQLiteStore",
    "TrimResult",
    "TurnQueue",
    "is_summary",
    "trim",
]
