"""Model strings ("openai/gpt-4o-mini") and drivers from the standard environment, without actors."""

from __future__ import annotations

from typing import Any

import pytest

from nova import errors
from nova.config import parse_config
from nova.features import build_provider
from nova.messages import CallOptions
from nova.provider import Accepted, Answered
from nova.secrets import Secret
from nova.types import ChatRequest

DRIVERS = {
    "default": {"kind": "test", "model": "test-model"},
    "vllm": {"kind": "openai_compatible", "base_url": "http://127.0.0.1:9/v1", "model": "qwen"},
    "claude": {"kind": "anthropic", "api_key": "k", "model": "claude-3-5-haiku-latest"},
}


def accept(raw: dict[str, Any], model: str = "", env: dict[str, str] | None = None, **options: Any) -> Any:
    provider = build_provider(parse_config(raw, env=env or {}))
    request = ChatRequest(model=model, messages=[{"role": "user", "content": "hi"}])
    return provider.accept("r1", "chat", request, CallOptions(**options), caller="caller")


def target(raw: dict[str, Any], model: str = "", **options: Any) -> tuple[str, str]:
    decision = accept(raw, model, **options)
    assert isinstance(decision, Accepted), decision.error
    return decision.pending.driver, decision.pending.request.model


@pytest.mark.parametrize(
    ("model", "options", "expected"),
    [
        ("", {}, ("default", "test-model")),
        ("gpt-x", {}, ("default", "gpt-x")),  # no slash: the default driver, unchanged
        ("vllm/meta-llama/Llama-3.1-8B", {}, ("vllm", "meta-llama/Llama-3.1-8B")),  # first slash only
        ("anthropic/claude-3-opus", {}, ("claude", "claude-3-opus")),  # a kind: its one driver
        ("test/other", {}, ("default", "other")),
        ("meta-llama/Llama-3.1-8B", {"driver": "vllm"}, ("vllm", "meta-llama/Llama-3.1-8B")),  # unchanged
        ("vllm/qwen2", {"driver": "vllm"}, ("vllm", "qwen2")),  # the driver's own name, repeated
        ("", {"driver": "anthropic"}, ("claude", "claude-3-5-haiku-latest")),  # driver= a kind
    ],
)
def test_a_model_string_names_the_driver_and_the_model(
    model: str, options: dict[str, Any], expected: Any
) -> None:
    assert target({"drivers": DRIVERS}, model, **options) == expected


def test_a_configured_name_wins_over_a_kind_of_the_same_name() -> None:
    drivers = {**DRIVERS, "anthropic": {"kind": "openai_compatible", "base_url": "http://127.0.0.1:9"}}
    assert target({"drivers": drivers}, "anthropic/m") == ("anthropic", "m")


def test_an_unknown_prefix_is_refused_listing_the_known_ones() -> None:
    decision = accept({"drivers": DRIVERS}, "opnai/gpt-4o-mini")
    assert isinstance(decision, Answered) and isinstance(decision.error, errors.UnknownDriverError)
    message = decision.error.message
    assert "'opnai'" in message and "did you mean 'openai'" in message
    for known in ("default", "vllm", "claude", "anthropic", "ollama", "openai_compatible", "test"):
        assert known in message
    assert "driver=" in message  # how to send a model name with a slash unchanged


def test_a_kind_with_no_driver_says_which_variable_would_configure_one() -> None:
    decision = accept({"drivers": DRIVERS}, "openai/gpt-4o-mini")
    assert isinstance(decision, Answered) and isinstance(decision.error, errors.UnknownDriverError)
    assert "OPENAI_API_KEY" in decision.error.message and "[drivers.openai]" in decision.error.message


def test_a_kind_with_several_drivers_asks_for_a_name() -> None:
    drivers = {**DRIVERS, "haiku": {"kind": "anthropic", "api_key": "k"}}
    decision = accept({"drivers": drivers}, "anthropic/claude-3-opus")
    assert isinstance(decision, Answered) and "claude, haiku" in decision.error.message


def test_per_call_fallback_targets_resolve_kinds_to_configured_names() -> None:
    decision = accept({"drivers": DRIVERS}, "x", fallback=["anthropic/claude-3-opus", "vllm/a/b", "test"])
    assert isinstance(decision, Accepted)
    assert decision.pending.options.fallback == ("claude/claude-3-opus", "vllm/a/b", "default")
    refused = accept({"drivers": DRIVERS}, "x", fallback=["nope/model"])
    assert isinstance(refused, Answered) and "fallback target 'nope/model'" in refused.error.message


def test_config_takes_model_strings_for_the_default_model_and_fallback_targets() -> None:
    raw = {
        "llm": {"model": "anthropic/claude-3-opus"},
        "drivers": DRIVERS,
        "fallback": {"targets": ["openai_compatible/meta-llama/Llama-3.1-8B", {"driver": "test"}]},
    }
    config = parse_config(raw, env={})
    assert (config.llm.driver, config.llm.model) == ("claude", "claude-3-opus")
    assert [str(t) for t in config.fallback.targets] == ["vllm/meta-llama/Llama-3.1-8B", "default"]
    assert target(raw) == ("claude", "claude-3-opus")
    assert target(raw, driver="vllm") == ("vllm", "qwen")  # another driver: its own default model


def test_a_config_with_an_unknown_prefix_fails_at_start_naming_the_key() -> None:
    with pytest.raises(errors.ConfigurationError) as caught:
        parse_config(
            {"drivers": DRIVERS, "fallback": {"targets": ["claude", "gpt/x"]}}, source="c.toml", env={}
        )
    assert (
        caught.value.message.startswith("c.toml: key 'fallback.targets[1]'")
        and "'gpt'" in caught.value.message
    )
    with pytest.raises(errors.ConfigurationError, match="key 'llm.model'"):
        parse_config({"llm": {"model": "meta-llama/Llama-3.1-8B"}}, env={})
    # With the driver named, a slash in the model is the model's own.
    config = parse_config({"llm": {"driver": "vllm", "model": "meta-llama/Llama-3.1-8B"}, "drivers": DRIVERS})
    assert (config.llm.driver, config.llm.model) == ("vllm", "meta-llama/Llama-3.1-8B")


# -- drivers from the standard environment ----------------------------------------------------------

ENV = {
    "OPENAI_API_KEY": "sk-envkey1234567890abcd",
    "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
    "ANTHROPIC_API_KEY": "sk-ant-envkey1234567890",
    "OLLAMA_HOST": "0.0.0.0:11500",
}


def test_standard_variables_add_drivers_named_after_their_kind() -> None:
    config = parse_config({}, env=ENV)
    assert set(config.drivers) == {"default", "openai", "anthropic", "ollama"}
    assert config.llm.driver == "default"  # the offline default stays the default
    openai = config.drivers["openai"]
    assert openai.kind == "openai" and openai.options["base_url"] == "http://127.0.0.1:9/v1"
    assert openai.options["api_key"] == Secret(ENV["OPENAI_API_KEY"])
    assert config.drivers["ollama"].options == {"base_url": "http://0.0.0.0:11500"}
    assert config.env_drivers["openai"] == ("OPENAI_API_KEY", "OPENAI_BASE_URL")
    assert ENV["OPENAI_API_KEY"] not in repr(config) and ENV["ANTHROPIC_API_KEY"] not in repr(config)
    assert target({}, "openai/gpt-4o-mini", env=ENV) == ("openai", "gpt-4o-mini")


def test_without_the_variables_the_configuration_is_as_it_was() -> None:
    assert set(parse_config({}, env={}).drivers) == {"default"}
    assert set(parse_config({}, env={"OPENAI_BASE_URL": "http://x"}).drivers) == {"default"}  # no key


def test_a_configured_driver_of_that_name_is_left_alone() -> None:
    raw = {
        "drivers": {
            "default": {"kind": "test"},
            "openai": {"kind": "openai_compatible", "base_url": "http://h"},
        }
    }
    config = parse_config(raw, env=ENV)
    assert (
        config.drivers["openai"].kind == "openai_compatible"
        and "api_key" not in config.drivers["openai"].options
    )
    assert "openai" not in config.env_drivers


def test_the_seed_style_driver_options_win_over_the_environment() -> None:
    config = parse_config({"llm": {"driver": "openai", "driver_options": {"model": "gpt-4o"}}}, env=ENV)
    assert config.drivers["openai"].options["model"] == "gpt-4o"
    assert config.drivers["openai"].options["api_key"] == Secret(ENV["OPENAI_API_KEY"])


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:11434"),
        ("example.com:8080", "http://example.com:8080"),
        ("https://ollama.example.com/", "https://ollama.example.com:443"),
        ("http://[::1]", "http://[::1]:11434"),
    ],
)
def test_ollama_host_is_read_as_ollama_reads_it(host: str, url: str) -> None:
    assert parse_config({}, env={"OLLAMA_HOST": host}).drivers["ollama"].options["base_url"] == url


def test_a_key_written_in_the_file_is_masked_in_the_configuration_too() -> None:
    key = "sk-test-fromfile-01"
    config = parse_config({"drivers": {"default": {"kind": "openai", "api_key": key}}}, env={})
    assert config.drivers["default"].options["api_key"] == Secret(key)
    assert key not in repr(config) and key not in str(config.model_dump())
