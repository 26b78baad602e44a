"""The rate limiter's configuration: limits per driver and per driver/model, validated and frozen."""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = ["Limits", "RateLimitSettings", "split_scope"]


class Limits(BaseModel):
    """The limits of one scope. `None` means "no limit of this kind".

    `on_limit="queue"` waits in FIFO order for at most `max_wait_s`; `"reject"` refuses at once.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    max_concurrent: int | None = Field(default=None, ge=1)
    on_limit: Literal["queue", "reject"] = "queue"
    max_wait_s: float = Field(default=30.0, ge=0)

    @property
    def uses_window(self) -> bool:
        """True when admissions must be remembered for 60 s (a per-minute limit is set)."""
        return self.requests_per_minute is not None or self.tokens_per_minute is not None


def split_scope(key: str) -> tuple[str, str | None]:
    """ "openai" -> ("openai", None); "together/meta-llama/Llama-3-8b" -> ("together", "meta-llama/…").

    Driver names never contain "/", model names may, so only the first "/" separates them."""
    driver, sep, model = key.partition("/")
    return driver, (model if sep else None)


def _describe(error: Any) -> str:
    where = ".".join(str(p) for p in error["loc"]) or "value"
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(where, list(Limits.model_fields), n=1)
        return f"unknown key {where!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
    return f"{where}: {error['msg']}"


class RateLimitSettings(BaseModel):
    """`[ratelimit]` in config.toml.

    `limits` is keyed by "driver" or "driver/model"; a call must pass every scope that matches it
    (its driver's and its model's). `default` applies to each driver that has no key of its own,
    as a separate scope per driver (not one budget shared by all drivers)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    limits: dict[str, Limits] = Field(default_factory=dict)
    default: Limits | None = None
    # The reply budget assumed for a call without max_tokens (reconciled with real usage after).
    default_reply_tokens: int = Field(default=1024, ge=0)
    # A service's Retry-After or reset header is believed up to this long; longer is a bogus header.
    max_pause_s: float = Field(default=300.0, ge=0)
    # A 429 that says nothing about when to retry still pauses the target this long.
    default_pause_s: float = Field(default=1.0, ge=0)

    @field_validator("limits", mode="before")
    @classmethod
    def _validate_each_key(cls, value: Any) -> Any:
        # Validate each entry here so that the error names the key, not just a position.
        if not isinstance(value, dict):
            return value
        out: dict[str, Any] = {}
        for key, limits in value.items():
            if not isinstance(key, str):
                raise ValueError(f"ratelimit key {key!r} must be a string")
            driver, model = split_scope(key)
            if not driver or model == "" or key != key.strip():
                raise ValueError(f"ratelimit key {key!r} must be 'driver' or 'driver/model'")
            if isinstance(limits, Limits):
                out[key] = limits
                continue
            try:
                out[key] = Limits.model_validate(limits)
            except ValidationError as exc:
                problems = "; ".join(_describe(e) for e in exc.errors())
                raise ValueError(f"ratelimit key {key!r}: {problems}") from None
        return out
