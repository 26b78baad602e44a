"""Fallback configuration: retry and circuit settings, the call's targets, backoff delays."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from nova.circuit import CircuitSettings
from nova.models import Target

if TYPE_CHECKING:
    from nova.config import DriverConfig

__all__ = [
    "CircuitSettings",
    "FallbackSettings",
    "RetrySettings",
    "backoff_delay",
    "default_models",
    "resolve_targets",
]


class RetrySettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_attempts_per_target: int = Field(default=3, ge=1)
    backoff_initial_s: float = Field(default=0.5, ge=0)
    backoff_max_s: float = Field(default=8.0, ge=0)
    jitter: float = Field(default=0.25, ge=0, le=1)
    # A Retry-After above this is not waited for on that target: the call moves to the next one.
    retry_after_cap_s: float = Field(default=60.0, ge=0)
    attempt_timeout_s: float | None = Field(default=None, gt=0)
    total_timeout_s: float | None = Field(default=None, gt=0)  # the call's timeout= wins over it


class FallbackSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    targets: list[Target] = Field(default_factory=list)  # empty: the call's own driver/model only
    retry: RetrySettings = RetrySettings()
    circuit: CircuitSettings = CircuitSettings()


def backoff_delay(retry: int, settings: RetrySettings, rng: random.Random) -> float:
    """The wait before retry number `retry` (0 for the first): capped doubling, jittered down."""
    base: float = min(settings.backoff_initial_s * 2.0**retry, settings.backoff_max_s)
    return base * (1 - settings.jitter * rng.random())


def default_models(drivers: Mapping[str, DriverConfig]) -> dict[str, str]:
    """Configured driver name -> its `model` option ("" when it has none), for `resolve_targets`."""
    return {name: str(driver.options.get("model") or "") for name, driver in drivers.items()}


def resolve_targets(
    primary: Target | str,
    fallback: Sequence[Target | str] | bool | None,
    settings: FallbackSettings,
    default_models: Mapping[str, str] | None = None,
) -> list[Target]:
    """The targets of one call: its own first, then the per-call `fallback=` list (None or True:
    the configured `settings.targets`; False: none), duplicates dropped.

    A target without a model gets its own driver's default from `default_models` (configured
    driver name -> model), never the model of the call's first target: that model belongs to
    another service. A driver with no default keeps `model=""` (the driver then decides).
    """
    extra: Sequence[Target | str]
    if fallback is False:
        extra = []
    elif fallback is None or fallback is True:
        extra = settings.targets
    else:
        extra = fallback
    defaults = default_models or {}
    targets = []
    for target in (Target.parse(primary), *(Target.parse(t) for t in extra)):
        if not target.model and defaults.get(target.driver):
            target = Target(target.driver, defaults[target.driver])
        targets.append(target)
    return list(dict.fromkeys(targets))
