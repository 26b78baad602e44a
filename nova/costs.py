"""The price in USD of one answered call, from genai-prices' bundled data (offline) or a config override.

`cost_usd()` answers None, never 0, when a model has no known price: a missing price must show up as
"unpriced" in metrics, not as a free call. Only the `openai` and `anthropic` drivers map to a
genai-prices provider; `ollama`, `openai_compatible`, `test` and unknown drivers are unpriced unless
an override names them (an override of 0 makes a local model explicitly free).

genai-prices reads only the snapshot bundled in its wheel; it touches the network only through its
opt-in `UpdatePrices`, which Nova never starts (tests/test_costs.py proves no socket is opened).

Cached answers cost 0: the provider does not call `cost_usd()` for a cache hit, it sets 0 itself.

Calls are made by *configured* driver names ("primary", "backup"), prices are known by driver
*kind* ("openai"): `pricer()` maps one to the other, and must be what prices each attempt. A call
that fell back to another driver costs the sum of its attempts (`total_cost`), each priced by the
driver that made it; pricing the answer with the requested driver's name would look up, say,
gpt-4o-mini under anthropic, or under a name genai-prices does not know, and give None.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nova.errors import ConfigurationError
from nova.types import Attempt, Usage

__all__ = [
    "PRICED_PROVIDERS",
    "PriceOverride",
    "cost_usd",
    "override_key",
    "price_overrides",
    "pricer",
    "total_cost",
]

log = logging.getLogger("nova.costs")

# Nova driver name -> genai-prices provider id. Drivers not listed here have no catalogue price.
PRICED_PROVIDERS: dict[str, str] = {"anthropic": "anthropic", "openai": "openai"}

_MTOK = 1_000_000


class PriceOverride(BaseModel):
    """A price set in config, in USD per million tokens; it wins over genai-prices.

    `cached_input_per_mtok` prices cache reads; None means they cost the normal input price.
    Cache-write tokens cost the input price.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    cached_input_per_mtok: float | None = Field(default=None, ge=0)

    def cost(self, usage: Usage) -> float:
        cached = min(usage.cached_input_tokens, usage.input_tokens)
        cached_price = (
            self.input_per_mtok if self.cached_input_per_mtok is None else self.cached_input_per_mtok
        )
        return (
            (usage.input_tokens - cached) * self.input_per_mtok
            + cached * cached_price
            + usage.output_tokens * self.output_per_mtok
        ) / _MTOK


def override_key(driver: str, model: str) -> str:
    """The key of an override in config: "driver/model" ("driver/*" covers every model of a driver)."""
    return f"{driver}/{model}"


def price_overrides(prices: Mapping[str, Mapping[str, Any]]) -> dict[str, PriceOverride]:
    """The `[prices."driver/model"]` tables of config.toml as overrides; a bad one names its key."""
    out: dict[str, PriceOverride] = {}
    for key, table in prices.items():
        if key.count("/") < 1 or key.startswith("/") or key.endswith("/"):
            raise ConfigurationError(
                f'price override key {key!r} must look like "driver/model" or "driver/*"'
            )
        try:
            out[key] = PriceOverride.model_validate(table)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ConfigurationError(f"prices.{key!r}: {problems}") from None
    return out


def cost_usd(
    driver: str, model: str, usage: Usage, *, overrides: Mapping[str, PriceOverride] | None = None
) -> float | None:
    """The cost of one call in USD, or None when the model has no known price.

    An override keyed "driver/model" wins, then "driver/*", then genai-prices (openai and anthropic).
    """
    if overrides:
        override = overrides.get(override_key(driver, model)) or overrides.get(override_key(driver, "*"))
        if override is not None:
            return override.cost(usage)
    provider_id = PRICED_PROVIDERS.get(driver)
    if provider_id is None or not model:
        return None
    return _catalogue_cost(provider_id, model, usage)


def pricer(
    kinds: Mapping[str, str], overrides: Mapping[str, PriceOverride] | None = None
) -> Callable[[str, str, Usage], float | None]:
    """`price(driver_name, model, usage)` for configured driver names: `kinds` maps each name to its
    driver kind. An override keyed by the name wins; otherwise the kind is priced (its overrides,
    then genai-prices). A name not in `kinds` is taken as a kind (a driver given by kind)."""
    table = dict(overrides or {})

    def price(driver: str, model: str, usage: Usage) -> float | None:
        named = override_key(driver, model) in table or override_key(driver, "*") in table
        return cost_usd(driver if named else kinds.get(driver, driver), model, usage, overrides=table)

    return price


def total_cost(attempts: Iterable[Attempt]) -> float | None:
    """The cost of a call from its attempts: their sum, or None when any attempt is unpriced
    (a partly known cost would pass for the whole) or there are none."""
    costs = [a.cost_usd for a in attempts]
    if not costs or any(c is None for c in costs):
        return None
    return sum(c for c in costs if c is not None)


class _PricesUsage:
    """Nova's usage under genai-prices' attribute names (it duck-types any object)."""

    __slots__ = ("cache_read_tokens", "cache_write_tokens", "input_tokens", "output_tokens")

    def __init__(self, usage: Usage) -> None:
        # Nova's input_tokens already includes cache reads and writes, as genai-prices expects.
        self.input_tokens = usage.input_tokens
        self.output_tokens = usage.output_tokens
        self.cache_read_tokens = min(usage.cached_input_tokens, usage.input_tokens)
        self.cache_write_tokens = min(usage.cache_write_tokens, usage.input_tokens - self.cache_read_tokens)


_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


@functools.lru_cache(maxsize=1024)
def _price_entry(provider_id: str, model: str) -> tuple[Any, Any] | None:
    """genai-prices' (provider, model) entry, looked up once per model: matching a model id against
    the whole catalogue is most of what pricing a call costs."""
    from genai_prices import data_snapshot  # imported on first use: it costs ~130 ms

    try:
        return data_snapshot.get_snapshot().find_provider_model(model, None, provider_id, None)
    except LookupError as exc:
        log.warning("no price for %s/%s (%s): its cost counts as unpriced", provider_id, model, exc)
        return None


def _catalogue_cost(provider_id: str, model: str, usage: Usage) -> float | None:
    entry = _price_entry(provider_id, model)
    if entry is None:
        return None
    provider, info = entry
    try:
        calc: Any = info.calc_price(
            _PricesUsage(usage), provider, genai_request_timestamp=datetime.now(tz=UTC)
        )
    except (LookupError, ValueError) as exc:  # usage the price data cannot take
        with _warned_lock:
            first = (provider_id, model) not in _warned and len(_warned) < 1024  # warn once, bounded
            if first:
                _warned.add((provider_id, model))
        if first:
            log.warning("no price for %s/%s (%s): its cost counts as unpriced", provider_id, model, exc)
        return None
    return float(calc.total_price)
