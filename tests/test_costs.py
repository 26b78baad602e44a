"""Costs: genai-prices offline for known models, None (never 0) for unknown ones, config overrides."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap

import pytest
from pydantic import ValidationError

from nova.costs import PriceOverride, cost_usd, price_overrides, pricer, total_cost
from nova.errors import ConfigurationError
from nova.types import Attempt, Usage

MTOK = Usage(input_tokens=1_000_000, output_tokens=1_000_000)


def test_a_known_openai_model_is_priced_from_the_bundled_data() -> None:
    # gpt-4o-mini: $0.15 per million input tokens, $0.60 per million output, $0.075 cached input
    assert cost_usd("openai", "gpt-4o-mini", MTOK) == pytest.approx(0.75)
    cached = Usage(input_tokens=1_000_000, output_tokens=1_000_000, cached_input_tokens=500_000)
    assert cost_usd("openai", "gpt-4o-mini", cached) == pytest.approx(0.7125)
    assert cost_usd("openai", "gpt-4o-mini-2024-07-18", MTOK) == pytest.approx(0.75)  # dated ids resolve
    assert cost_usd("openai", "gpt-4o-mini", Usage()) == 0.0  # priced, and nothing used


def test_anthropic_prices_cache_reads_and_writes() -> None:
    plain = Usage(input_tokens=10_000, output_tokens=1_000)
    read = Usage(input_tokens=10_000, output_tokens=1_000, cached_input_tokens=8_000)
    write = Usage(input_tokens=10_000, output_tokens=1_000, cache_write_tokens=8_000)
    model = "claude-sonnet-4-20250514"
    assert cost_usd("anthropic", model, plain) == pytest.approx(0.045)
    assert cost_usd("anthropic", model, read) == pytest.approx(0.0234)
    assert cost_usd("anthropic", model, write) == pytest.approx(0.051)


def test_unknown_models_and_unpriced_drivers_answer_none(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="nova.costs"):
        assert cost_usd("openai", "gpt-nonexistent-9", MTOK) is None
        assert cost_usd("openai", "gpt-nonexistent-9", MTOK) is None
    assert len([r for r in caplog.records if "gpt-nonexistent-9" in r.getMessage()]) == 1  # warned once
    for driver in ("ollama", "test", "openai_compatible", "someone-elses"):
        assert cost_usd(driver, "gpt-4o-mini", MTOK) is None
    assert cost_usd("openai", "", MTOK) is None


def test_inconsistent_usage_is_clamped_not_an_error() -> None:
    odd = Usage(input_tokens=10, output_tokens=0, cached_input_tokens=50, cache_write_tokens=50)
    assert cost_usd("openai", "gpt-4o-mini", odd) == pytest.approx(10 * 0.075 / 1e6)


def test_overrides_win_and_price_local_models() -> None:
    overrides = {
        "openai/gpt-4o-mini": PriceOverride(
            input_per_mtok=1.0, output_per_mtok=2.0, cached_input_per_mtok=0.5
        ),
        "ollama/*": PriceOverride(input_per_mtok=0, output_per_mtok=0),
        "openai_compatible/llama-3-70b": PriceOverride(input_per_mtok=0.59, output_per_mtok=0.79),
    }
    cached = Usage(input_tokens=1_000_000, output_tokens=1_000_000, cached_input_tokens=400_000)
    assert cost_usd("openai", "gpt-4o-mini", cached, overrides=overrides) == pytest.approx(0.6 + 0.2 + 2.0)
    assert cost_usd("ollama", "llama3", MTOK, overrides=overrides) == 0.0  # explicitly free
    assert cost_usd("openai_compatible", "llama-3-70b", MTOK, overrides=overrides) == pytest.approx(1.38)
    assert cost_usd("openai_compatible", "other", MTOK, overrides=overrides) is None
    assert cost_usd("openai", "gpt-4o", MTOK, overrides=overrides) == pytest.approx(12.5)  # catalogue
    no_cache_price = PriceOverride(input_per_mtok=1.0, output_per_mtok=0)
    assert cost_usd("x", "y", cached, overrides={"x/y": no_cache_price}) == pytest.approx(1.0)


def test_price_override_is_validated() -> None:
    with pytest.raises(ValidationError):
        PriceOverride(input_per_mtok=-1, output_per_mtok=0)
    with pytest.raises(ValidationError, match="output_per_mtk"):
        PriceOverride.model_validate({"input_per_mtok": 1, "output_per_mtk": 2})


def test_pricing_never_touches_the_network() -> None:
    # A fresh interpreter with an audit hook installed before genai-prices is imported: every
    # socket creation, name lookup and connection from import to price is seen.
    script = textwrap.dedent(
        """
        import json, sys
        seen = []
        def audit(event, args):
            if event.startswith("socket.") or event == "urllib.Request":
                seen.append(event)
        sys.addaudithook(audit)
        from nova.costs import cost_usd
        from nova.types import Usage
        prices = [cost_usd("openai", "gpt-4o-mini", Usage(input_tokens=1000, output_tokens=100)),
                  cost_usd("anthropic", "claude-3-5-haiku-latest", Usage(input_tokens=1000)),
                  cost_usd("openai", "no-such-model", Usage(input_tokens=1))]
        print(json.dumps({"seen": seen, "prices": prices}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["seen"] == []
    assert result["prices"][0] == pytest.approx(0.00021) and result["prices"][1] > 0
    assert result["prices"][2] is None


def test_price_overrides_from_config_tables() -> None:
    prices = {"ollama/*": {"input_per_mtok": 0, "output_per_mtok": 0}}
    assert price_overrides(prices) == {"ollama/*": PriceOverride(input_per_mtok=0, output_per_mtok=0)}
    with pytest.raises(ConfigurationError, match="openai/gpt-4o.*output_per_mtok"):
        price_overrides({"openai/gpt-4o": {"input_per_mtok": 1}})
    with pytest.raises(ConfigurationError, match="driver/model"):
        price_overrides({"gpt-4o": {"input_per_mtok": 1, "output_per_mtok": 1}})


def test_pricer_prices_configured_driver_names_by_their_kind() -> None:
    # The README's values: gpt-4o-mini on a driver of kind openai, whatever the driver is called.
    usage = Usage(input_tokens=1000, output_tokens=100)
    assert cost_usd("primary", "gpt-4o-mini", usage) is None  # a name is not a kind
    price = pricer({"primary": "openai", "claude": "anthropic", "local": "ollama"})
    assert price("primary", "gpt-4o-mini", usage) == pytest.approx(0.00021)
    assert price("openai", "gpt-4o-mini", usage) == pytest.approx(0.00021)  # a driver given by kind
    assert price("claude", "gpt-4o-mini", usage) is None  # anthropic does not sell gpt-4o-mini
    assert price("local", "llama3", usage) is None


def test_pricer_overrides_by_name_win_over_the_kind() -> None:
    overrides = price_overrides(
        {
            "local/*": {"input_per_mtok": 0, "output_per_mtok": 0},
            "openai/gpt-4o-mini": {"input_per_mtok": 1, "output_per_mtok": 1},
            "cheap/gpt-4o-mini": {"input_per_mtok": 0.1, "output_per_mtok": 0.1},
        }
    )
    price = pricer({"local": "ollama", "main": "openai", "cheap": "openai"}, overrides)
    assert price("local", "llama3", MTOK) == 0.0
    assert price("main", "gpt-4o-mini", MTOK) == pytest.approx(2.0)  # the kind's override
    assert price("cheap", "gpt-4o-mini", MTOK) == pytest.approx(0.2)  # the name's override


def test_a_fallback_call_costs_the_sum_of_its_attempts_or_none() -> None:
    failed = Attempt(driver="claude", model="claude-3-5-haiku-latest", ok=False, cost_usd=0.0)
    answered = Attempt(driver="primary", model="gpt-4o-mini", ok=True, cost_usd=0.00021)
    assert total_cost([failed, answered]) == pytest.approx(0.00021)
    unpriced = Attempt(driver="local", model="llama3", ok=True, cost_usd=None)
    assert total_cost([failed, unpriced]) is None
    assert total_cost([]) is None
