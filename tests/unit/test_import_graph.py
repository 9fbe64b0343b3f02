"""The house stays drawn: which package may import which, read from the source with ``ast``.

Every import counts — at module level, inside a function, or under ``if TYPE_CHECKING:`` (a
type-only import still ties the two packages together for whoever reads or moves them). The
arrows allowed (README, "Layout"):

- ``prepared_sql`` and ``contracts`` sit at the bottom and import nothing of the project;
- ``engine`` → ``prepared_sql``;
- ``workflows`` → ``contracts`` and the engine's public modules only (no I/O of their own);
- ``activities`` → ``contracts``, ``prepared_sql``;
- ``choreography_pattern`` → ``activities``, ``contracts``, ``prepared_sql``;
- ``orchestration_pattern`` → ``engine``, ``workflows``, ``activities``, ``contracts``;
- ``services`` → the engine's public modules, ``activities``, ``contracts``, ``prepared_sql`` and
  both patterns, which it composes;
- ``cloudmart`` (the command line) composes everything.

A module is private when any part of its dotted name starts with ``_``; a package may import
another package's private modules only where the table says so (never the engine's).
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PACKAGES = (
    "prepared_sql",
    "contracts",
    "engine",
    "workflows",
    "activities",
    "choreography_pattern",
    "orchestration_pattern",
    "services",
    "cloudmart",
)

# package -> the packages it may import (public modules only, unless named in PRIVATE_OK)
ALLOWED: dict[str, frozenset[str]] = {
    "prepared_sql": frozenset(),
    "contracts": frozenset(),
    "engine": frozenset({"prepared_sql"}),
    "workflows": frozenset({"engine", "contracts"}),
    "activities": frozenset({"contracts", "prepared_sql"}),
    "choreography_pattern": frozenset({"activities", "contracts", "prepared_sql"}),
    "orchestration_pattern": frozenset({"engine", "workflows", "activities", "contracts"}),
    "services": frozenset(
        {
            "engine",
            "activities",
            "contracts",
            "prepared_sql",
            "orchestration_pattern",
            "choreography_pattern",
        }
    ),
    "cloudmart": frozenset(PACKAGES) - {"cloudmart"},
}
# (importer, imported) pairs allowed to reach private modules: the activities' inbox is shared
# with the choreography, which runs the same operations' transactions.
PRIVATE_OK = frozenset({("choreography_pattern", "activities"), ("cloudmart", "services")})


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> Iterator[str]:
    """Every module ``path`` imports, as absolute dotted names."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield target
            # ``from engine import api`` imports the module engine.api
            yield from (f"{target}.{alias.name}" for alias in node.names)


def _edges(packages: tuple[str, ...] = PACKAGES) -> Iterator[tuple[str, str, str]]:
    """(importing module, imported module, file) for every import between project packages."""
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            importer = _module_name(path)
            for target in _imports(path):
                top = target.split(".")[0]
                if top in PACKAGES and top != package:
                    yield importer, target, str(path.relative_to(ROOT))


def _existing(target: str) -> str:
    """The longest prefix of ``target`` that is a module or package of the project
    (``from engine import Engine`` names ``engine.Engine``, which is no module)."""
    parts = target.split(".")
    while len(parts) > 1:
        candidate = ROOT.joinpath(*parts)
        if candidate.with_suffix(".py").exists() or (candidate / "__init__.py").exists():
            break
        parts.pop()
    return ".".join(parts)


def violations(edges: list[tuple[str, str, str]]) -> list[str]:
    """The imports among ``edges`` that the table forbids, one line each."""
    found = []
    for importer, target, where in edges:
        source, imported = importer.split(".")[0], target.split(".")[0]
        if imported not in ALLOWED[source]:
            found.append(f"{where}: {source} may not import {imported} ({_existing(target)})")
            continue
        private = any(part.startswith("_") for part in _existing(target).split("."))
        if private and (source, imported) not in PRIVATE_OK:
            found.append(f"{where}: {source} may not import the private module {target}")
    return sorted(set(found))


def cycles(edges: list[tuple[str, str, str]]) -> list[list[str]]:
    """Cycles in the graph of packages (every strongly connected set of more than one)."""
    graph: dict[str, set[str]] = {}
    for importer, target, _ in edges:
        graph.setdefault(importer.split(".")[0], set()).add(target.split(".")[0])
        graph.setdefault(target.split(".")[0], set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for package in sorted(graph):
        if package not in index:
            visit(package)
    return found


@pytest.fixture(scope="module")
def edges() -> list[tuple[str, str, str]]:
    return list(_edges())


def test_every_package_is_in_the_table() -> None:
    on_disk = {
        path.parent.name
        for path in ROOT.glob("*/__init__.py")
        if path.parent.name not in {"tests", "notebooks"}
    }
    assert on_disk == set(PACKAGES)
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["coverage"]["run"]
    assert set(listed["source"]) == set(PACKAGES)  # the list the scripts type-check


def test_no_package_imports_against_the_arrows(edges: list[tuple[str, str, str]]) -> None:
    assert violations(edges) == []


def test_packages_import_each_other_in_no_cycle(edges: list[tuple[str, str, str]]) -> None:
    assert cycles(edges) == []


@pytest.mark.parametrize(
    ("importer", "target"),
    [
        ("engine.api", "services._kit.settings"),
        ("engine.api", "workflows.order_saga"),
        ("activities.orders", "engine.adapters.sql_store"),
        ("workflows.order_saga", "activities.db"),
        ("choreography_pattern.relay", "engine.errors"),
        ("orchestration_pattern.orchestrator", "services._kit.failpoints"),
        ("services.order.api", "engine._runtime"),
        ("prepared_sql", "engine.errors"),
    ],
)
def test_a_forbidden_arrow_is_caught(importer: str, target: str) -> None:
    assert violations([(importer, target, "scratch.py")]) != []


def test_a_cycle_is_caught() -> None:
    loop = [
        ("activities.orders", "contracts.commands", "a.py"),
        ("contracts.commands", "activities.orders", "b.py"),
    ]
    assert cycles(loop) == [["activities", "contracts"]]
