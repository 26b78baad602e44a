"""What Nova knows about models: identity (`Target`), context window and output limit.

A model's context window comes, in order, from:

1. an override registered from configuration (`register_context_window`);
2. the offline model data bundled with `genai-prices` (loaded on first use, never from the network);
3. a small built-in table of common OpenAI, Anthropic and Gemini models.

`max_output_tokens` comes from overrides and the built-in table only (genai-prices 0.2.3 has no
output limit). Unknown models give `None`: callers decide what unknown means.

Ollama is the exception: its real window is the server's `num_ctx` (often 2048–8192), not the
model's advertised one, and Ollama truncates silently past it, so for the `ollama` driver only an
override is believed.
"""

from __future__ import annotations

import threading
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from nova.errors import InvalidInputError

__all__ = [
    "ModelCatalog",
    "Target",
    "context_window",
    "default_catalog",
    "max_output_tokens",
    "register_context_window",
]


class Target(BaseModel):
    """One driver + model to send a call to; `model=""` means the driver's configured default.

    Accepts `Target("openai", "gpt-4o")`, `Target.parse("openai/gpt-4o")`, `Target.parse("openai")`
    and, inside settings, the strings or `{driver=…, model=…}` tables. Only the first `/` splits,
    so `openai_compatible/meta-llama/Llama-3-8b` keeps its model name whole.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    driver: str
    model: str = ""

    def __init__(self, driver: str | None = None, model: str = "", **data: Any) -> None:
        if driver is not None:
            data["driver"] = driver
        data.setdefault("model", model)
        super().__init__(**data)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            head, _, tail = value.strip().partition("/")
            value = {"driver": head, "model": tail}
        if isinstance(value, dict):
            driver = value.get("driver")
            if not isinstance(driver, str) or not driver.strip():
                raise ValueError("a target needs a driver name, e.g. 'openai' or 'openai/gpt-4o'")
            if "/" in driver or any(c.isspace() for c in driver):
                raise ValueError(f"bad driver name {driver!r}; write targets as 'driver/model'")
        return value

    @classmethod
    def parse(cls, value: str | Target) -> Target:
        if isinstance(value, Target):
            return value
        try:
            return cls.model_validate(value)
        except ValidationError as e:
            raise InvalidInputError(f"bad target {value!r}: {e.errors()[0]['msg']}", field="target") from None

    def __str__(self) -> str:
        return f"{self.driver}/{self.model}" if self.model else self.driver


# model -> (context window, max output tokens); matched by the longest prefix that is followed by
# "-", ":" or "@" (a date or tag suffix), so "gpt-4" never matches "gpt-4o" or "gpt-4.1".
_BUILTIN: dict[str, tuple[int, int | None]] = {
    "gpt-3.5-turbo": (16_385, 4_096),
    "gpt-3.5-turbo-instruct": (4_096, 4_096),
    "gpt-4": (8_192, 8_192),
    "gpt-4-32k": (32_768, 8_192),
    "gpt-4-turbo": (128_000, 4_096),
    "gpt-4o": (128_000, 16_384),
    "gpt-4o-mini": (128_000, 16_384),
    "gpt-4.1": (1_047_576, 32_768),
    "gpt-4.1-mini": (1_047_576, 32_768),
    "gpt-4.1-nano": (1_047_576, 32_768),
    "gpt-5": (400_000, 128_000),
    "gpt-5-mini": (400_000, 128_000),
    "gpt-5-nano": (400_000, 128_000),
    "o1": (200_000, 100_000),
    "o1-mini": (128_000, 65_536),
    "o3": (200_000, 100_000),
    "o3-mini": (200_000, 100_000),
    "o4-mini": (200_000, 100_000),
    "claude-3-haiku": (200_000, 4_096),
    "claude-3-sonnet": (200_000, 4_096),
    "claude-3-opus": (200_000, 4_096),
    "claude-3-5-haiku": (200_000, 8_192),
    "claude-3-5-sonnet": (200_000, 8_192),
    "claude-3-7-sonnet": (200_000, 64_000),
    "claude-sonnet-4": (200_000, 64_000),
    "claude-sonnet-4-5": (200_000, 64_000),
    "claude-opus-4": (200_000, 32_000),
    "claude-opus-4-1": (200_000, 32_000),
    "claude-opus-4-5": (200_000, 64_000),
    "claude-haiku-4-5": (200_000, 64_000),
    "gemini-1.5-flash": (1_048_576, 8_192),
    "gemini-1.5-pro": (2_097_152, 8_192),
    "gemini-2.0-flash": (1_048_576, 8_192),
    "gemini-2.5-flash": (1_048_576, 65_536),
    "gemini-2.5-pro": (1_048_576, 65_536),
}

_OVERRIDE_ONLY_DRIVERS = frozenset({"ollama"})


def _builtin(model: str) -> tuple[int, int | None] | None:
    name = model.rsplit("/", 1)[-1].lower()  # "openai/gpt-4o" (router style) -> "gpt-4o"
    best: str | None = None
    for prefix in _BUILTIN:
        if name == prefix or (name.startswith(prefix) and name[len(prefix)] in "-:@"):
            if best is None or len(prefix) > len(best):
                best = prefix
    return None if best is None else _BUILTIN[best]


class ModelCatalog:
    """Context windows and output limits, with overrides; thread-safe, lazy, offline."""

    def __init__(self, *, use_genai_prices: bool = True) -> None:
        self._use_genai_prices = use_genai_prices
        self._overrides: dict[tuple[str, str], tuple[int | None, int | None]] = {}
        self._genai_cache: dict[tuple[str, str], int | None] = {}
        self._lock = threading.Lock()

    def register(
        self, driver: str, model: str, tokens: int | None, *, max_output_tokens: int | None = None
    ) -> None:
        """Override what is known of `driver`'s `model`; driver `"*"` applies to every driver."""
        if tokens is not None and tokens <= 0 or max_output_tokens is not None and max_output_tokens <= 0:
            raise ValueError("token limits must be positive")
        with self._lock:
            self._overrides[(driver or "*", model)] = (tokens, max_output_tokens)

    def _override(self, driver: str, model: str) -> tuple[int | None, int | None] | None:
        return self._overrides.get((driver, model)) or self._overrides.get(("*", model))

    def context_window(self, target_or_driver: Target | str, model: str | None = None) -> int | None:
        """The model's context window in tokens, or None when unknown."""
        driver, model = _split(target_or_driver, model)
        override = self._override(driver, model)
        if override and override[0] is not None:
            return override[0]
        if not model or driver in _OVERRIDE_ONLY_DRIVERS:
            return None
        window = self._from_genai_prices(driver, model)
        if window is not None:
            return window
        builtin = _builtin(model)
        return builtin[0] if builtin else None

    def max_output_tokens(self, target_or_driver: Target | str, model: str | None = None) -> int | None:
        """The most tokens the model may write in one answer, or None when unknown."""
        driver, model = _split(target_or_driver, model)
        override = self._override(driver, model)
        if override and override[1] is not None:
            return override[1]
        if not model or driver in _OVERRIDE_ONLY_DRIVERS:
            return None
        builtin = _builtin(model)
        return builtin[1] if builtin else None

    def _from_genai_prices(self, driver: str, model: str) -> int | None:
        if not self._use_genai_prices:
            return None
        key = (driver, model)
        if key in self._genai_cache:
            return self._genai_cache[key]
        window = _genai_prices_window(driver, model)
        with self._lock:
            self._genai_cache[key] = window
        return window


def _split(target_or_driver: Target | str, model: str | None) -> tuple[str, str]:
    if isinstance(target_or_driver, Target):
        return target_or_driver.driver, model if model is not None else target_or_driver.model
    if model is None:
        target = Target.parse(target_or_driver)
        return target.driver, target.model
    return target_or_driver, model


def _genai_prices_window(driver: str, model: str) -> int | None:
    try:
        # Imported here: loading the bundled data takes ~0.25 s, paid only by the first lookup.
        from genai_prices import data_snapshot
    except ImportError:  # pragma: no cover - genai-prices is a dependency, but stay usable without it
        return None
    snapshot = data_snapshot.get_snapshot()
    # The driver name is a provider id when it is a known service ("openai", "groq"); otherwise
    # ("openai_compatible", a named driver) let genai-prices find the provider from the model name.
    for provider_id in (driver, None):
        try:
            _, info = snapshot.find_provider_model(model, None, provider_id, None)
        except LookupError:
            continue
        if info.context_window:
            return int(info.context_window)
    return None


default_catalog = ModelCatalog()


def context_window(target_or_driver: Target | str, model: str | None = None) -> int | None:
    """The context window of a model in tokens (None: unknown); see the module docstring."""
    return default_catalog.context_window(target_or_driver, model)


def max_output_tokens(target_or_driver: Target | str, model: str | None = None) -> int | None:
    """The output limit of a model in tokens (None: unknown)."""
    return default_catalog.max_output_tokens(target_or_driver, model)


def register_context_window(
    driver: str, model: str, tokens: int | None, *, max_output_tokens: int | None = None
) -> None:
    """Override a model's limits (from configuration); driver `"*"` applies to every driver."""
    default_catalog.register(driver, model, tokens, max_output_tokens=max_output_tokens)
