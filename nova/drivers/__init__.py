"""The driver registry: a driver's name maps to its class, imported only when first used.

Built-in names: openai, anthropic, ollama, openai_compatible, test. Third-party drivers register a
class under the `nova.drivers` entry point group and are found by the same `driver_class(name)`.
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from nova.errors import UnknownDriverError

if TYPE_CHECKING:
    from nova.drivers.base import Driver

__all__ = ["available_drivers", "create_driver", "driver_class"]

BUILTIN: dict[str, str] = {
    "anthropic": "nova.drivers.anthropic:AnthropicDriver",
    "ollama": "nova.drivers.ollama:OllamaDriver",
    "openai": "nova.drivers.openai:OpenAIDriver",
    "openai_compatible": "nova.drivers.openai_compatible:OpenAICompatibleDriver",
    "test": "nova.drivers.testing:TestDriver",
}


def _plugin_drivers() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group="nova.drivers")}


def available_drivers() -> list[str]:
    return sorted(set(BUILTIN) | set(_plugin_drivers()))


def driver_class(name: str) -> type[Driver]:
    if name in BUILTIN:
        module, _, attr = BUILTIN[name].partition(":")
        return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]
    plugins = _plugin_drivers()
    if name in plugins:
        return _load_plugin(name, plugins[name])
    known = available_drivers()
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise UnknownDriverError(f"unknown driver {name!r}{hint} (known: {', '.join(known)})", driver=name)


def _load_plugin(name: str, entry_point: Any) -> type[Driver]:
    # A broken third-party package must fail as configuration, naming what to fix.
    from nova.drivers.base import Driver

    where = f"entry point {entry_point.value!r} (group nova.drivers)"
    try:
        cls = entry_point.load()
    except Exception as exc:
        raise UnknownDriverError(
            f"driver {name!r}: {where} failed to load: {type(exc).__name__}: {exc}", driver=name
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise UnknownDriverError(f"driver {name!r}: {where} is not a nova Driver class", driver=name)
    return cls


def create_driver(kind: str, **options: Any) -> Driver:
    return driver_class(kind)(**options)
