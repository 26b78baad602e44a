"""The configuration of conversation context management (`[context]` in config.toml)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ContextSettings"]


class ContextSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    store: Literal["memory", "sqlite"] = "memory"
    path: str = "nova-conversations.sqlite3"  # the SQLite file, when store = "sqlite"
    reply_budget_tokens: int = Field(default=1024, ge=0)  # room kept for the answer when max_tokens is None
    default_context_window: int = Field(default=8192, gt=0)  # when the model's window is unknown
    token_counter: str | None = None  # "module:attr"; None: nova.tokens.EstimatingCounter
    summarize: bool = False  # summarise dropped turns into one pinned message
    summary_driver: str | None = None  # None: the driver of the call
    summary_model: str | None = None  # None: that driver's default model
    summary_max_tokens: int = Field(default=512, gt=0)  # length limit of one summary

    def reply_budget(self, max_tokens: int | None) -> int:
        """Tokens kept free for the answer: the call's `max_tokens`, else the configured budget."""
        return self.reply_budget_tokens if max_tokens is None else max_tokens
