"""nova.models: targets, context windows from genai-prices / overrides / the built-in table."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest

from nova import errors, models
from nova.models import ModelCatalog, Target


def test_target_forms() -> None:
    t = Target("openai", "gpt-4o")
    assert t == Target(driver="openai", model="gpt-4o") == Target.parse("openai/gpt-4o")
    assert Target.parse("anthropic") == Target("anthropic") and Target("anthropic").model == ""
    assert Target.parse("openai_compatible/meta-llama/Llama-3-8b").model == "meta-llama/Llama-3-8b"
    assert str(t) == "openai/gpt-4o" and str(Target("test")) == "test"
    assert Target.parse(t) is t
    assert pickle.loads(pickle.dumps(t)) == t and len({t, Target.parse("openai/gpt-4o")}) == 1


@pytest.mark.parametrize("bad", ["", "/gpt-4o", " ", "open ai/x"])
def test_bad_target_is_a_typed_error(bad: str) -> None:
    with pytest.raises(errors.InvalidInputError, match="target"):
        Target.parse(bad)


def test_context_window_from_genai_prices() -> None:
    catalog = ModelCatalog()
    assert catalog.context_window("openai", "gpt-4o-mini") == 128_000
    assert catalog.context_window(Target("anthropic", "claude-3-opus-20240229")) == 200_000
    assert catalog.context_window("openai/gpt-4") == 8_192
    # a driver name genai-prices does not know: found by the model name
    assert catalog.context_window("openai_compatible", "gpt-4o") == 128_000


def test_builtin_table_without_genai_prices() -> None:
    catalog = ModelCatalog(use_genai_prices=False)
    assert catalog.context_window("openai", "gpt-4o-mini-2024-07-18") == 128_000
    assert catalog.context_window("openai", "gpt-4-0613") == 8_192
    assert catalog.context_window("anthropic", "claude-3-5-sonnet-20241022") == 200_000
    assert catalog.context_window("openai_compatible", "openai/gpt-4o") == 128_000  # router-style name
    # a prefix must end at a separator: gpt-4.5 is not gpt-4, gpt-4o-audio is not gpt-4o-mini
    assert catalog.context_window("openai", "gpt-4.5-preview") is None
    assert catalog.max_output_tokens("openai", "gpt-4o-audio-preview") == 16_384
    assert catalog.max_output_tokens("anthropic", "claude-3-opus-20240229") == 4_096


def test_unknown_models_and_default_model_are_none() -> None:
    catalog = ModelCatalog()
    assert catalog.context_window("test", "test-model") is None
    assert catalog.context_window("openai", "") is None
    assert catalog.max_output_tokens("test", "test-model") is None


def test_ollama_window_is_only_believed_from_config() -> None:
    catalog = ModelCatalog()
    assert catalog.context_window("ollama", "llama3.1") is None
    catalog.register("ollama", "llama3.1", 8_192)
    assert catalog.context_window("ollama", "llama3.1") == 8_192


def test_overrides_win_and_wildcard_driver() -> None:
    catalog = ModelCatalog()
    catalog.register("openai", "gpt-4o", 64_000, max_output_tokens=1_000)
    catalog.register("*", "my-finetune", 32_000)
    assert catalog.context_window("openai", "gpt-4o") == 64_000
    assert catalog.max_output_tokens("openai", "gpt-4o") == 1_000
    assert catalog.context_window("openai_compatible", "gpt-4o") == 128_000  # other drivers untouched
    assert catalog.context_window("vllm", "my-finetune") == 32_000
    catalog.register("openai", "gpt-4o-mini", None, max_output_tokens=500)  # output only
    assert catalog.context_window("openai", "gpt-4o-mini") == 128_000
    with pytest.raises(ValueError):
        catalog.register("openai", "x", 0)


def test_module_functions_use_the_default_catalog() -> None:
    models.register_context_window("test", "nova-test-model-windows", 4_000, max_output_tokens=100)
    assert models.context_window("test", "nova-test-model-windows") == 4_000
    assert models.max_output_tokens(Target("test", "nova-test-model-windows")) == 100


def test_import_is_lazy_and_offline() -> None:
    code = (
        "import sys, socket\n"
        "def no_net(*a, **k): raise AssertionError('network used')\n"
        "socket.socket.connect = no_net\n"
        "socket.create_connection = no_net\n"
        "import nova.models, nova.fallback, nova.circuit\n"
        "assert 'genai_prices' not in sys.modules, 'genai-prices loaded at import'\n"
        "assert nova.models.context_window('openai', 'gpt-4o') == 128000\n"
        "assert 'genai_prices.data' in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
