"""The public names: every `__all__` is sorted and importable, and `import nova` starts nothing and
pulls in none of the heavy libraries."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
from types import ModuleType

import pytest

import nova

PUBLIC = ["nova", "nova.types", "nova.errors", "nova.messages"]


def all_modules() -> list[str]:
    return ["nova", *(m.name for m in pkgutil.walk_packages(nova.__path__, "nova."))]


def isort_order(name: str) -> tuple[int, str]:
    """The order ruff's RUF022 keeps: CONSTANTS, then Classes, then functions."""
    kind = 0 if name.isupper() else 1 if name[:1].isupper() else 2
    return kind, name


@pytest.mark.parametrize("name", PUBLIC)
def test_public_modules_have_a_sorted_all_of_importable_names(name: str) -> None:
    module = importlib.import_module(name)
    assert list(module.__all__) == sorted(module.__all__)
    assert len(set(module.__all__)) == len(module.__all__)
    for attr in module.__all__:
        assert getattr(module, attr) is not None, f"{name}.{attr}"


@pytest.mark.parametrize("name", all_modules())
def test_every_module_has_a_sorted_and_true_all(name: str) -> None:
    module: ModuleType = importlib.import_module(name)
    names = getattr(module, "__all__", None)
    assert names is not None, f"{name} declares no __all__"
    assert list(names) in (sorted(names), sorted(names, key=isort_order)), f"{name}.__all__ is not sorted"
    missing = [n for n in names if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what it lacks: {missing}"


def test_the_documented_top_level_names() -> None:
    expected = {"ChatRequest", "CompletionRequest", "Message", "Response", "Chunk", "Usage", "ToolCall",
                "NovaError", "errors", "llm", "messages"}  # fmt: skip
    assert expected <= set(nova.__all__)
    assert nova.errors.NovaError is nova.NovaError
    assert set(nova.errors.__all__) >= {"RateLimitError", "AuthenticationError", "error_from_status"}


HEAVY = ("thespian", "httpx", "aiohttp", "blinker", "opentelemetry")

PROBE = """
import json, sys, threading
before = set(sys.modules)
{imports}
import psutil
loaded = sorted({{m.split(".")[0] for m in set(sys.modules) - before}})
print(json.dumps({{
    "heavy": [m for m in loaded if m in {heavy!r}],
    "threads": [t.name for t in threading.enumerate()],
    "children": len(psutil.Process().children(recursive=True)),
}}))
"""


def probe(imports: str, heavy: tuple[str, ...]) -> dict[str, object]:
    code = PROBE.format(imports=imports, heavy=heavy)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_import_nova_loads_nothing_heavy_and_starts_nothing() -> None:
    report = probe("import nova\nfrom nova import ChatRequest, NovaError", HEAVY)
    assert report == {"heavy": [], "threads": ["MainThread"], "children": 0}


def test_drivers_import_neither_actors_nor_events_nor_telemetry() -> None:
    drivers = [m for m in all_modules() if m.startswith("nova.drivers")]
    imports = "\n".join(f"import {m}" for m in drivers)
    report = probe(imports, ("thespian", "blinker", "opentelemetry", "actors", "supervisors"))
    assert report["heavy"] == [], report
    assert report["threads"] == ["MainThread"] and report["children"] == 0
