"""The driver registry: built-in names, close-match hints, and third-party drivers found through
a real `nova.drivers` entry point of an installed distribution."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from nova import errors
from nova.drivers import BUILTIN, available_drivers, create_driver, driver_class
from nova.drivers.base import Driver
from nova.drivers.testing import TestDriver


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_every_builtin_name_gives_its_driver_class(name: str) -> None:
    cls = driver_class(name)
    assert isinstance(cls, type) and issubclass(cls, Driver)
    assert cls.name == name
    assert name in available_drivers()


def test_builtin_names_are_the_documented_ones() -> None:
    assert set(BUILTIN) == {"openai", "anthropic", "ollama", "openai_compatible", "test"}


@pytest.mark.parametrize(
    ("typo", "meant"), [("opnai", "openai"), ("anthropc", "anthropic"), ("olama", "ollama")]
)
def test_an_unknown_name_suggests_the_close_match(typo: str, meant: str) -> None:
    with pytest.raises(errors.UnknownDriverError) as caught:
        driver_class(typo)
    assert f"did you mean {meant!r}?" in str(caught.value)
    assert caught.value.driver == typo
    assert isinstance(caught.value, errors.ConfigurationError)


def test_an_unknown_name_without_a_close_match_lists_the_known_ones() -> None:
    with pytest.raises(errors.UnknownDriverError) as caught:
        driver_class("zzzz")
    assert "did you mean" not in str(caught.value)
    assert "known: anthropic, ollama, openai, openai_compatible, test" in str(caught.value)


def test_create_driver_passes_options_and_rejects_unknown_ones() -> None:
    driver = create_driver("test", model="m", replies=["x"])
    assert isinstance(driver, TestDriver) and driver.default_model == "m"
    with pytest.raises(errors.ConfigurationError, match="colour"):
        create_driver("test", colour="red")


@pytest.fixture(autouse=True)
def forget_probe_module() -> Iterator[None]:
    yield
    sys.modules.pop("nova_probe_driver", None)  # each test installs its own copy


def install_distribution(root: Path, entry_points: str, module: str = "") -> None:
    """An installed distribution as pip leaves it: a module and a dist-info with entry_points.txt."""
    if module:
        (root / "nova_probe_driver.py").write_text(textwrap.dedent(module))
    info = root / "nova_probe_driver-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: nova-probe-driver\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


PROBE = """
    from nova.drivers.testing import TestDriver

    class ProbeDriver(TestDriver):
        name = "probe"

    class NotADriver:
        pass
"""


def test_a_driver_registered_by_entry_point_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_distribution(
        tmp_path,
        """
        [nova.drivers]
        probe = nova_probe_driver:ProbeDriver
        openai = nova_probe_driver:ProbeDriver
        """,
        PROBE,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cls = driver_class("probe")
    assert cls.__name__ == "ProbeDriver" and cls.name == "probe"
    assert "probe" in available_drivers()
    assert create_driver("probe", replies=["from a plugin"]).default_model == "test-model"
    # a plugin cannot take over a built-in name
    assert driver_class("openai").__module__.startswith("nova.drivers.openai")
    with pytest.raises(errors.UnknownDriverError, match="did you mean 'probe'"):
        driver_class("prob")


def test_a_broken_entry_point_is_a_configuration_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_distribution(
        tmp_path,
        """
        [nova.drivers]
        gone = nova_probe_missing_module:Driver
        wrong = nova_probe_driver:NotADriver
        """,
        PROBE,
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        errors.UnknownDriverError, match=r"'gone'.*nova_probe_missing_module:Driver.*failed to load"
    ):
        driver_class("gone")
    with pytest.raises(errors.UnknownDriverError, match="'wrong'.*not a nova Driver class"):
        driver_class("wrong")
