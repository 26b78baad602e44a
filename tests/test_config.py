"""Loading config.toml: the default runs offline, variables are interpolated, and every mistake
fails at start with the key, the file and, where there is one, the close match."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from nova import errors
from nova.config import DEFAULT_FILE, NovaConfig, config_path, load_config, parse_config
from nova.drivers import create_driver
from nova.types import ChatRequest
from tests.conftest import arun

SOURCE = "/etc/nova/config.toml"


def fails(raw: dict[str, Any], env: dict[str, str] | None = None) -> str:
    with pytest.raises(errors.ConfigurationError) as caught:
        parse_config(raw, source=SOURCE, env=env or {})
    message = str(caught.value)
    assert SOURCE in message, message
    return message


def answer(config: NovaConfig, name: str | None = None) -> str:
    driver_config = config.drivers[name or config.llm.driver]
    driver = create_driver(driver_config.kind, **driver_config.options)
    request = ChatRequest(messages=[{"role": "user", "content": "hello"}])
    return arun(driver.chat(request)).text


def test_the_default_file_loads_and_answers_offline_without_any_variable() -> None:
    assert DEFAULT_FILE.is_file()
    config = load_config(DEFAULT_FILE, env={})
    assert config.source == str(DEFAULT_FILE)
    assert config.drivers[config.llm.driver].kind == "test"
    assert config.system.host == "127.0.0.1"
    assert answer(config) == "echo: hello"


def test_the_defaults_need_no_file_at_all() -> None:
    config = parse_config({}, env={})
    assert config.drivers["default"].kind == "test" and answer(config) == "echo: hello"


def test_variables_are_interpolated_everywhere_with_defaults() -> None:
    raw = {
        "llm": {"driver": "main"},
        "drivers": {
            "main": {"kind": "test", "model": "${MODEL}", "replies": ["${GREETING:-hi there}", "${A}-${B}"]},
        },
        "system": {"admin_port": "${PORT}", "state_dir": "${STATE:-}"},
    }
    env = {"MODEL": "m-1", "PORT": "19777", "A": "x", "B": "", "UNUSED": "u"}
    config = parse_config(raw, source=SOURCE, env=env)
    assert config.drivers["main"].options == {"model": "m-1", "replies": ["hi there", "x-"]}
    assert config.system.admin_port == 19777  # a string from the environment, validated as the key's type
    assert config.system.state_dir == ""
    assert answer(config) == "hi there"


def test_os_environ_is_used_when_no_env_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOVA_TEST_MODEL", "from-environ")
    config = parse_config({"drivers": {"default": {"kind": "test", "model": "${NOVA_TEST_MODEL}"}}})
    assert config.drivers["default"].options["model"] == "from-environ"


def test_a_missing_variable_names_the_key_the_variable_and_the_file() -> None:
    raw = {
        "drivers": {"default": {"kind": "test"}, "openai": {"kind": "openai", "api_key": "${OPENAI_KEY_X}"}}
    }
    message = fails(raw)
    assert "'drivers.openai.api_key'" in message and "OPENAI_KEY_X" in message
    message = fails({"plugins": [{"path": "x"}, {"path": "${PLUGIN_DIR}"}]})
    assert "'plugins[1].path'" in message


@pytest.mark.parametrize(
    ("raw", "key", "hint"),
    [
        ({"system": {"hots": "0.0.0.0"}}, "system.hots", "host"),
        ({"system": {"admin_prt": 1}}, "system.admin_prt", "admin_port"),
        ({"sytem": {}}, "sytem", "system"),
        ({"llm": {"drivr": "default"}}, "llm.drivr", "driver"),
        ({"supervision": {"max_restart": 3}}, "supervision.max_restart", "max_restarts"),
        ({"telemetry": {"metric": True}}, "telemetry.metric", "metrics"),
        ({"cache": {"enabeld": True}}, "cache.enabeld", "enabled"),
        ({"ratelimit": {"enabeld": True}}, "ratelimit.enabeld", "enabled"),
    ],
)
def test_an_unknown_key_names_itself_and_the_close_match(raw: dict[str, Any], key: str, hint: str) -> None:
    message = fails(raw)
    assert f"unknown key '{key}'" in message
    assert f"did you mean '{hint}'?" in message


def test_every_unknown_key_is_reported_at_once() -> None:
    message = fails({"system": {"hots": "x", "admin_prt": 1}})
    assert "'system.hots'" in message and "'system.admin_prt'" in message


def test_an_unknown_key_without_a_close_match_has_no_hint() -> None:
    message = fails({"system": {"zzzzzz": 1}})
    assert "unknown key 'system.zzzzzz'" in message and "did you mean" not in message


def test_a_bad_value_names_the_key() -> None:
    assert "key 'system.admin_port'" in fails({"system": {"admin_port": "abc"}})
    assert "key 'system.admin_port'" in fails({"system": {"admin_port": 70000}})
    assert "key 'drivers.x.kind'" in fails({"drivers": {"x": {"kidn": "test"}}, "llm": {"driver": "x"}})


def test_an_unknown_driver_kind_fails_with_a_close_match() -> None:
    message = fails({"llm": {"driver": "main"}, "drivers": {"main": {"kind": "opnai"}}})
    assert "'drivers.main.kind'" in message and "did you mean 'openai'?" in message


def test_an_unknown_default_driver_suggests_names_and_kinds() -> None:
    message = fails({"llm": {"driver": "opnai"}})
    assert "'llm.driver'" in message and "did you mean 'openai'?" in message
    message = fails({"llm": {"driver": "locl"}, "drivers": {"local": {"kind": "test"}}})
    assert "did you mean 'local'?" in message
    message = fails({"drivers": {"local": {"kind": "test"}}})  # no "default" left to point at
    assert "'llm.driver'" in message and "local" in message


def test_seed_style_driver_and_driver_options() -> None:
    raw = {"llm": {"driver": "test", "driver_options": {"model": "seed-model", "replies": ["from options"]}}}
    config = parse_config(raw, source=SOURCE, env={})
    assert config.drivers["test"].kind == "test"
    assert config.drivers["test"].options == {"model": "seed-model", "replies": ["from options"]}
    assert answer(config) == "from options"


def test_named_driver_options_may_be_flat_or_in_an_options_table() -> None:
    raw = {"drivers": {"default": {"kind": "test", "model": "flat", "options": {"replies": ["nested"]}}}}
    config = parse_config(raw, env={})
    assert config.drivers["default"].options == {"model": "flat", "replies": ["nested"]}


def test_the_config_is_frozen() -> None:
    config = parse_config({}, env={})
    with pytest.raises(ValueError):
        config.system.host = "0.0.0.0"  # type: ignore[misc]


# -- finding the file ----------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_nova_config_picks_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = write(tmp_path / "chosen.toml", '[drivers.default]\nkind = "test"\nmodel = "chosen"\n')
    write(tmp_path / "config.toml", '[drivers.default]\nkind = "test"\nmodel = "cwd"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NOVA_CONFIG", str(chosen))
    config = load_config()
    assert config.source == str(chosen) and config.drivers["default"].options["model"] == "chosen"
    explicit = write(tmp_path / "explicit.toml", "")
    assert config_path(explicit) == explicit  # --config beats NOVA_CONFIG
    monkeypatch.delenv("NOVA_CONFIG")
    assert config_path() == Path("config.toml")  # then ./config.toml
    (tmp_path / "config.toml").unlink()
    assert config_path() == DEFAULT_FILE  # then the embedded default


def test_a_missing_or_broken_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigurationError, match="nowhere.toml: no such configuration file"):
        load_config(tmp_path / "nowhere.toml")
    broken = write(tmp_path / "broken.toml", "[system\nhost = 1\n")
    with pytest.raises(errors.ConfigurationError, match="broken.toml: not valid TOML"):
        load_config(broken)


def test_a_file_that_is_not_text_or_not_a_file_is_named(tmp_path: Path) -> None:
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe[system]\n")
    with pytest.raises(errors.ConfigurationError, match="binary.toml: not a UTF-8 text file"):
        load_config(binary)
    with pytest.raises(errors.ConfigurationError, match=f"{tmp_path}: cannot be read"):
        load_config(tmp_path)


def test_a_driver_option_that_must_be_text_names_its_key() -> None:
    raw = {"drivers": {"default": {"kind": "openai", "api_key": 5, "base_url": ["x"], "model": 4}}}
    with pytest.raises(errors.ConfigurationError) as caught:
        parse_config(raw)
    for option in ("api_key", "base_url", "model"):
        assert f"key 'drivers.default.{option}': must be a string" in caught.value.message


def test_a_rate_limit_for_a_driver_no_call_can_have_is_named_with_the_close_match() -> None:
    limits = {"defualt": {"requests_per_minute": 5}, "default/m": {}, "openai/gpt-4o": {}}
    with pytest.raises(errors.ConfigurationError) as caught:
        parse_config({"drivers": {"default": {"kind": "test"}}, "ratelimit": {"limits": limits}})
    message = caught.value.message
    assert "key 'ratelimit.limits.defualt'" in message and "did you mean 'default'?" in message
    assert "default/m" not in message and "openai/gpt-4o" not in message  # a driver and a kind


def test_an_unknown_key_in_a_file_names_that_file(tmp_path: Path) -> None:
    path = write(tmp_path / "nova.toml", '[system]\nhots = "0.0.0.0"\n')
    with pytest.raises(errors.ConfigurationError) as caught:
        load_config(path, env={})
    assert str(path) in str(caught.value) and "did you mean 'host'?" in str(caught.value)


def test_the_default_file_is_valid_toml_with_only_known_sections() -> None:
    raw = tomllib.loads(DEFAULT_FILE.read_text())
    assert set(raw) <= set(NovaConfig.model_fields)


def test_every_problem_is_reported_at_once_each_with_the_file_and_the_key() -> None:
    raw = {
        "llm": {"timeout_s": "soon"},
        "drivers": {
            "default": {"kind": "test"},
            "openai": {"kind": "openai", "api_key": "${OPENAI_KEY_X}", "base_ulr": "http://127.0.0.1:1/v1"},
        },
        "system": {"admin_prt": 1},
        "fallback": {"retry": {"max_atempts_per_target": 2}},
        "cache": {"ttl_s": "a day"},
    }
    lines = fails(raw).splitlines()
    for expected in (
        "'llm.timeout_s'",
        "'drivers.openai.api_key'",
        "'drivers.openai.base_ulr'",
        "'system.admin_prt'",
        "'fallback.retry.max_atempts_per_target'",
        "'cache.ttl_s'",
    ):
        assert any(expected in line for line in lines), (expected, lines)
    assert all(line.startswith(f"{SOURCE}: ") for line in lines), lines


@pytest.mark.parametrize(
    ("raw", "key", "hint"),
    [
        (
            {"fallback": {"retry": {"max_atempts_per_target": 2}}},
            "fallback.retry.max_atempts_per_target",
            "max_attempts_per_target",
        ),
        ({"fallback": {"circuit": {"cooldwn_s": 5}}}, "fallback.circuit.cooldwn_s", "cooldown_s"),
        (
            {"fallback": {"targets": [{"driver": "default", "modle": "m"}]}},
            "fallback.targets[0].modle",
            "model",
        ),
        ({"context": {"summarise": True}}, "context.summarise", "summarize"),
        (
            {"ratelimit": {"default": {"requests_per_minut": 5}}},
            "ratelimit.default.requests_per_minut",
            "requests_per_minute",
        ),
        ({"cache": {"backnd": "sqlite"}}, "cache.backnd", "backend"),
        ({"telemetry": {"exportr": "otlp"}}, "telemetry.exportr", "exporter"),
    ],
)
def test_an_unknown_nested_key_gets_the_close_match_too(raw: dict[str, Any], key: str, hint: str) -> None:
    message = fails(raw)
    assert f"unknown key '{key}'" in message and f"did you mean '{hint}'?" in message


def test_each_section_is_parsed_once_into_typed_settings() -> None:
    from nova.cache import CacheSettings
    from nova.context import ContextSettings
    from nova.fallback import FallbackSettings
    from nova.models import Target
    from nova.ratelimit import RateLimitSettings

    config = parse_config(
        {
            "cache": {"enabled": True, "backend": "sqlite", "ttl_s": 60},
            "ratelimit": {"limits": {"default": {"requests_per_minute": 5}}},
            "fallback": {"targets": ["default/other"], "retry": {"max_attempts_per_target": 2}},
            "context": {"store": "sqlite", "summarize": True},
            "plugins": [{"use": "redact", "drivers": ["default"], "kinds": ["email"]}],
        },
        env={},
    )
    assert isinstance(config.cache, CacheSettings) and (config.cache.backend, config.cache.ttl_s) == (
        "sqlite",
        60,
    )
    assert isinstance(config.ratelimit, RateLimitSettings)
    assert config.ratelimit.limits["default"].requests_per_minute == 5
    assert isinstance(config.fallback, FallbackSettings) and config.fallback.targets == [
        Target("default", "other")
    ]
    assert config.fallback.retry.max_attempts_per_target == 2
    assert isinstance(config.context, ContextSettings) and config.context.summarize
    assert config.plugins[0].use == "redact"
    assert config.plugins[0].options == {"drivers": ["default"], "kinds": ["email"]}


def test_a_plugin_entry_without_use_names_its_position() -> None:
    message = fails({"plugins": [{"use": "redact"}, {"kinds": ["email"]}]})
    assert "key 'plugins[1].use'" in message


def test_a_misspelt_driver_option_is_named_with_the_close_match() -> None:
    message = fails(
        {"drivers": {"default": {"kind": "openai", "api_key": "sk-x", "base_ulr": "http://h/v1"}}}
    )
    assert "unknown key 'drivers.default.base_ulr'" in message and "did you mean 'base_url'?" in message
    message = fails({"drivers": {"default": {"kind": "test", "options": {"chunk_dealy": 0.1}}}})
    assert "'drivers.default.chunk_dealy'" in message and "did you mean 'chunk_delay'?" in message
    message = fails({"llm": {"driver": "openai", "driver_options": {"api_key": "sk-x", "modle": "m"}}})
    assert "'llm.driver_options.modle'" in message and "did you mean 'model'?" in message


def test_every_option_of_the_built_in_drivers_is_accepted() -> None:
    parse_config(
        {
            "drivers": {
                "default": {"kind": "test", "model": "m", "replies": [], "latency": 0, "chunk_delay": 0},
                "o": {
                    "kind": "openai",
                    "api_key": "sk-x",
                    "base_url": "http://h/v1",
                    "organization": "org",
                    "timeout": 30,
                    "read_timeout": 10,
                    "headers": {"x": "y"},
                    "max_connections": 10,
                    "use_max_completion_tokens": True,
                },
                "a": {"kind": "anthropic", "api_key": "sk-x", "model": "claude", "pool_timeout": 1},
                "l": {"kind": "ollama", "base_url": "http://h:11434", "stream_idle_timeout": 5},
                "c": {"kind": "openai_compatible", "base_url": "http://h/v1", "connect_timeout": 2},
            }
        },
        env={},
    )


def test_telemetry_capture_content_is_rejected_with_where_content_capture_is_switched() -> None:
    message = fails({"telemetry": {"capture_content": True}})
    assert "'telemetry.capture_content' is not supported" in message
    assert "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT" in message


def test_llm_provider_is_nova_or_nothing() -> None:
    assert parse_config({"llm": {"provider": "nova"}}).llm.provider == "nova"
    message = fails({"llm": {"provider": "litellm"}})
    assert "key 'llm.provider'" in message and "'litellm' is not a provider" in message
