"""Nova: one consistent way for Python programs to use LLMs in production.

`import nova` starts nothing and imports little: the facade (`nova.llm`), metrics and the rest
load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from nova.errors import NovaError
from nova.types import (
    Attempt,
    ChatRequest,
    Chunk,
    CompletionRequest,
    Message,
    Response,
    Tool,
    ToolCall,
    ToolCallDelta,
    Usage,
)

if TYPE_CHECKING:
    from nova import errors, llm, messages, metrics

__all__ = [
    "Attempt",
    "ChatRequest",
    "Chunk",
    "CompletionRequest",
    "Message",
    "NovaError",
    "Response",
    "Tool",
    "ToolCall",
    "ToolCallDelta",
    "Usage",
    "errors",
    "llm",
    "messages",
    "metrics",
]

__version__ = "0.1.0"
_LAZY = {"llm", "metrics", "messages", "errors", "events", "config"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(f"nova.{name}")
    raise AttributeError(f"module 'nova' has no attribute {name!r}")
