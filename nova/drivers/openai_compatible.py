"""Speaks to OpenAI-compatible servers: vLLM, llama.cpp, LM Studio, Ollama's /v1, Groq, Together, ….

It is the OpenAI driver (same wire format, same parsing) with the differences these servers need:

- `base_url` is required; `api_key` is optional (no Authorization header without one), and no
  OPENAI_* environment variable is read: an OpenAI key must never travel to another server.
- `max_tokens` is sent whatever the model's name, unless `use_max_completion_tokens=True`.
- A stream that sent a finish_reason and then ended cleanly is complete without `[DONE]`
  (a connection that breaks is still an `IncompleteStreamError`).
- Missing usage is `Usage()` (zeros); Groq's stream usage in `x_groq.usage` is read too.
- Handled by the shared code already: integer error `code`s (llama.cpp), error bodies without the
  `{"error": …}` envelope (older vLLM), context overflow told only in words (vLLM, llama.cpp),
  tool calls without ids or indexes, arguments sent as objects, "stop" with tool calls.
- Ignored: `reasoning` / `reasoning_content` (not part of the answer's text), llama.cpp `timings`,
  vLLM `stop_reason`. `stream_usage=False` leaves out `stream_options` for servers that reject it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from nova import errors
from nova.drivers.openai import OpenAIDriver, parse_usage
from nova.types import Usage

__all__ = ["OpenAICompatibleDriver"]


class OpenAICompatibleDriver(OpenAIDriver):
    """An OpenAI-compatible server at `base_url` (for example "http://127.0.0.1:8000/v1")."""

    name = "openai_compatible"
    default_base_url = ""
    env_prefix: ClassVar[str | None] = None
    api_key_required: ClassVar[bool] = False
    done_marker_required: ClassVar[bool] = False

    def __init__(self, *, base_url: str | None = None, **options: Any) -> None:
        if not base_url or not base_url.strip():
            raise errors.ConfigurationError(
                "the openai_compatible driver needs base_url, the server's OpenAI-style root "
                "(for example http://127.0.0.1:8000/v1 for vLLM, http://127.0.0.1:11434/v1 for Ollama)",
                driver=self.name,
            )
        super().__init__(base_url=base_url.strip(), **options)

    def uses_max_completion_tokens(self, model: str) -> bool:
        return self.use_max_completion_tokens  # served models' names say nothing about the API they accept

    def chunk_usage(self, data: dict[str, Any]) -> Usage | None:
        usage = super().chunk_usage(data)
        groq = data.get("x_groq")
        if usage is None and isinstance(groq, dict) and isinstance(groq.get("usage"), dict):
            return parse_usage(groq["usage"])
        return usage
