"""The import layers of the code, read from the source with `ast`.

Floors, from the ground up:

0. nova's core: every module of `nova/` but the entry points; imports only floor 0;
1. `actors/` (installed as `nova.actors`): imports actors and the core;
2. `supervisors/` (`nova.supervisors`): imports supervisors, actors and the core;
3. the entry points (`nova.llm`, `nova.cli`, `nova.metrics`, `nova.testing*`,
   `nova.__main__`): may import anything.

Every import counts, those inside functions too (a function-level import is how a cycle is
dodged, not removed); only imports under `if TYPE_CHECKING:` are left out, since they never run.
On top of the floors: there is no import cycle at all, a driver never loads the actor system or
the telemetry libraries, and a provider feature never loads the HTTP client, not even through
the modules it imports.

A known exception is listed by name below with the reason it stays; a new one fails.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source directory -> the package it is installed as (actors/ and supervisors/ ship inside nova).
PACKAGES = {"nova": "nova", "actors": "nova.actors", "supervisors": "nova.supervisors"}
ENTRY_POINTS = ("nova.llm", "nova.cli", "nova.metrics", "nova.__main__")  # and nova.testing*

# Upward imports that stay, each (importer, imported) with the reason.
KNOWN_UPWARD: dict[tuple[str, str], str] = {}

# Import cycles that stay, each as the sorted modules of the cycle, with the reason.
KNOWN_CYCLES: dict[tuple[str, ...], str] = {}

# Third-party packages whose loading defines a layer: (modules it applies to, forbidden roots).
DRIVERS = ("nova.drivers",)
FEATURES = ("nova.cache", "nova.ratelimit", "nova.fallback", "nova.context", "nova.circuit")
FORBIDDEN = {
    "a driver loads no actor system, telemetry or signals": (
        DRIVERS,
        ("thespian", "opentelemetry", "blinker"),
    ),
    "a provider feature loads no HTTP client": (FEATURES, ("httpx", "httpx_aiohttp")),
}
KNOWN_FORBIDDEN: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str  # a module of ours, or the top-level name of a third-party package
    line: int


def _module_name(path: Path) -> str:
    top, *parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join([PACKAGES[top], *(parts[:-1] if parts[-1] == "__init__" else parts)])


def _sources() -> dict[str, Path]:
    linked = [ROOT / "nova" / "actors", ROOT / "nova" / "supervisors"]  # links to the directories above
    return {
        _module_name(p): p
        for top in PACKAGES
        for p in sorted((ROOT / top).rglob("*.py"))
        if not any(p.is_relative_to(link) for link in linked)
    }


MODULES = _sources()


def _ours(name: str) -> bool:
    return name.split(".")[0] == "nova"


def _resolve(name: str) -> str:
    """Our module for a dotted name (the longest known prefix), or a third-party top-level name."""
    if not _ours(name):
        return name.split(".")[0]
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool) -> None:
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.found: list[Import] = []

    def _add(self, name: str, line: int) -> None:
        self.found.append(Import(self.module, _resolve(name), line))

    def visit_If(self, node: ast.If) -> None:
        if "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        for alias in node.names:
            # `from package import submodule` imports the submodule.
            submodule = f"{source}.{alias.name}"
            self._add(submodule if submodule in MODULES else source, node.lineno)

    def visit_Call(self, node: ast.Call) -> None:
        # importlib.import_module("literal") is an import too.
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name == "import_module" and node.args and isinstance(node.args[0], ast.Constant):
            if isinstance(node.args[0].value, str):
                self._add(node.args[0].value, node.lineno)
        self.generic_visit(node)


def _imports() -> list[Import]:
    found: list[Import] = []
    for module, path in MODULES.items():
        collector = _Collector(module, path.name == "__init__.py")
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        found += [i for i in collector.found if i.imported != module]
    return found


IMPORTS = _imports()


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for i in IMPORTS:
        if i.imported in MODULES:
            graph[i.importer].add(i.imported)
    return graph


def floor(module: str) -> int:
    if module in ENTRY_POINTS or module.startswith("nova.testing"):
        return 3
    if module.startswith("nova.supervisors"):
        return 2
    return 1 if module.startswith("nova.actors") else 0


def _where(i: Import) -> str:
    return f"{MODULES[i.importer].relative_to(ROOT)}:{i.line} imports {i.imported}"


def _cycles(graph: dict[str, set[str]]) -> Iterator[tuple[str, ...]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(v: str) -> Iterator[tuple[str, ...]]:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                yield from visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                yield tuple(sorted(component))

    for v in sorted(graph):
        if v not in index:
            yield from visit(v)


def _reachable(start: str, graph: dict[str, set[str]]) -> list[str]:
    """Our modules loaded by importing `start` and calling its functions, `start` first."""
    seen = [start]
    for module in seen:
        # Importing a module runs its package's __init__ first.
        parent = module.rpartition(".")[0]
        loads = graph[module] | ({parent} if parent in MODULES else set())
        seen += sorted(loads - set(seen))
    return seen


def test_the_source_is_read() -> None:
    # A guard for the test itself: a broken walk would pass every check below.
    assert {"nova.llm", "nova.provider", "nova.actors.router", "nova.supervisors.tree"} <= MODULES.keys()
    assert any(i.importer == "nova.llm" and i.imported == "nova.actors.bridge" for i in IMPORTS)
    assert any(i.importer == "nova.drivers.base" and i.imported == "httpx" for i in IMPORTS)


def test_no_module_imports_a_floor_above_its_own() -> None:
    upward = {
        (i.importer, i.imported): _where(i)
        for i in IMPORTS
        if i.imported in MODULES and floor(i.imported) > floor(i.importer)
    }
    new = {pair: where for pair, where in upward.items() if pair not in KNOWN_UPWARD}
    assert not new, "upward imports:\n" + "\n".join(sorted(new.values()))


def test_there_is_no_import_cycle() -> None:
    cycles = set(_cycles(_graph()))
    new = cycles - KNOWN_CYCLES.keys()
    assert not new, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in sorted(new))


def test_novas_core_never_imports_thespian() -> None:
    # The actor runtime lives in actors/ and supervisors/ (supervisors/system.py starts it): the
    # core is a plain library, and by the floors nothing it imports can load Thespian either.
    found = [_where(i) for i in IMPORTS if floor(i.importer) == 0 and i.imported == "thespian"]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("rule", sorted(FORBIDDEN))
def test_layers_load_no_forbidden_package(rule: str) -> None:
    prefixes, roots = FORBIDDEN[rule]
    graph = _graph()
    by_importer: dict[str, list[Import]] = {}
    for i in IMPORTS:
        by_importer.setdefault(i.importer, []).append(i)
    broken: dict[tuple[str, str], str] = {}
    for start in MODULES:
        if not any(start == p or start.startswith(p + ".") for p in prefixes):
            continue
        for module in _reachable(start, graph):
            for i in by_importer.get(module, []):
                if i.imported in roots and (start, i.imported) not in KNOWN_FORBIDDEN:
                    via = "" if module == start else f" (through {module})"
                    broken[(start, i.imported)] = f"{start} loads {i.imported}{via}: {_where(i)}"
    assert not broken, f"{rule}:\n" + "\n".join(sorted(broken.values()))


def test_every_known_exception_still_exists() -> None:
    # An exception that was fixed leaves the list, so that it cannot come back unnoticed.
    pairs = {(i.importer, i.imported) for i in IMPORTS}
    assert not KNOWN_UPWARD.keys() - pairs
    assert not KNOWN_CYCLES.keys() - set(_cycles(_graph()))
    loaded = {
        (start, i.imported)
        for start in MODULES
        for module in _reachable(start, _graph())
        for i in IMPORTS
        if i.importer == module
    }
    assert not KNOWN_FORBIDDEN.keys() - loaded
