"""The pytest plugin of `nova.testing` (registered as the `pytest11` entry point `nova`).

Fixtures only, none autouse: a test run that does not ask for them is not changed and starts
nothing. `nova_config` is the configuration of the isolated system (override it in a conftest.py
to test with your own config.toml); `nova_system` starts that system for one test.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from nova.config import NovaConfig

__all__ = ["nova_config", "nova_system"]


@pytest.fixture
def nova_config() -> NovaConfig:
    """Nova's defaults on the offline test driver, retries without backoff (`test_config()`)."""
    from nova.testing import test_config

    return test_config()


@pytest.fixture
def nova_system(nova_config: NovaConfig, tmp_path: Any) -> Iterator[Any]:
    """An isolated Nova system for one test; `nova.llm` in the test talks to it."""
    from nova.testing import isolated_system

    with isolated_system(nova_config, state_dir=tmp_path / "nova") as system:
        yield system
