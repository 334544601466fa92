"""The import layering of the sicog package, read from the source with `ast` (nothing is imported).

Foundation: config, records, prompts, models, store, errors, retry, console, logs, lineage, data/ — what
every part of sicog builds on. Rooms: annotate/, generate/, curate/, train/, evaluate/, report/,
scorer/, cluster/, world/ — the parts that do the work. The rules checked here:

(a) config, store, records, errors (and retry, console, logs) and the data package import nothing from the
    rooms generate, train, curate, evaluate, report or cluster — neither directly nor through another
    module — at module level or inside a function; more generally, no foundation module reaches any
    room (one import-free table excepted, LEAVES_ALLOWED);
(b) no import cycle among sicog modules.

Every import counts: module level, inside functions, under `if TYPE_CHECKING`. `from P import name`
points at the submodule that defines `name` when P's __init__ only re-exports it, so importing a
package's public API is an arrow to where the code lives. From inside P, though, `from P import name`
stays an arrow to P itself: P's __init__ imports its submodules, so that is a cycle.

The step and CLI modules (sicog.steps, sicog.cli) sit on top of everything, may import anything and
are being rewritten elsewhere: they are left out.
"""

from __future__ import annotations

import ast
from functools import cache, lru_cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
TOP = ("sicog.steps", "sicog.cli")  # left out: see the module docstring
RESTRICTED = ("sicog.config", "sicog.store", "sicog.records", "sicog.errors", "sicog.retry", "sicog.console", "sicog.logs", "sicog.data")
ROOMS_FORBIDDEN = ("sicog.generate", "sicog.train", "sicog.curate", "sicog.evaluate", "sicog.report", "sicog.cluster")
FOUNDATION = (
    "sicog.config",
    "sicog.records",
    "sicog.prompts",
    "sicog.models",
    "sicog.store",
    "sicog.errors",
    "sicog.retry",
    "sicog.console",
    "sicog.logs",
    "sicog.lineage",
    "sicog.data",
)
ROOMS = ("sicog.annotate", "sicog.generate", "sicog.curate", "sicog.train", "sicog.evaluate", "sicog.report", "sicog.scorer", "sicog.cluster", "sicog.world")
# An import-free table in a room that the foundation may read: the benchmark names config validates
# (it lives beside lmms.py, which runs in the eval environment with nothing but the sicog package).
LEAVES_ALLOWED = ("sicog.evaluate.benchmarks",)


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@lru_cache(maxsize=1)
def modules() -> dict[str, tuple[Path, bool]]:
    """Every module under src/sicog: dotted name -> (file, is a package's __init__)."""
    found = {}
    for path in sorted((SRC / "sicog").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if package else parts)] = (path, package)
    return found


@cache
def _tree(name: str) -> ast.Module:
    return ast.parse(modules()[name][0].read_text(encoding="utf-8"), filename=str(modules()[name][0]))


def _owner(name: str) -> str | None:
    """The sicog module a dotted name lies in (a module, or an attribute of one), or None outside sicog."""
    while name and name not in modules():
        name = name.rpartition(".")[0]
    return name or None


def _base(importer: str, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom reads from (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    package = importer if modules()[importer][1] else importer.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


@cache
def _reexports(package: str) -> dict[str, str]:
    """name -> the sicog module it comes from, for names a package's __init__ imports from elsewhere."""
    names = {}
    for node in ast.walk(_tree(package)):
        if isinstance(node, ast.ImportFrom):
            base = _base(package, node)
            for alias in node.names:
                source = _owner(f"{base}.{alias.name}") if f"{base}.{alias.name}" in modules() else _owner(base)
                if source and source != package:
                    names[alias.asname or alias.name] = source
    return names


def _target(importer: str, base: str, name: str) -> str | None:
    """Where `from base import name` points (see the module docstring)."""
    if f"{base}.{name}" in modules():
        return f"{base}.{name}"  # a submodule
    owner = _owner(base)
    if owner is None:
        return None
    inside = importer == owner or importer.startswith(owner + ".")
    seen = set()
    while not inside and modules()[owner][1] and name in _reexports(owner) and owner not in seen:
        seen.add(owner)
        owner = _reexports(owner)[name]
    return owner


@lru_cache(maxsize=1)
def graph() -> dict[str, set[str]]:
    """module -> the sicog modules it imports (anywhere in its source), itself excluded."""
    edges: dict[str, set[str]] = {}
    for name in modules():
        deps = set()
        for node in ast.walk(_tree(name)):
            if isinstance(node, ast.Import):
                deps.update(filter(None, (_owner(alias.name) for alias in node.names)))
            elif isinstance(node, ast.ImportFrom):
                base = _base(name, node)
                deps.update(filter(None, (_target(name, base, alias.name) for alias in node.names)))
        edges[name] = {d for d in deps if d != name and d.startswith("sicog")}
    return edges


def _reach(start: str, edges: dict[str, set[str]]) -> dict[str, str]:
    """Every module reachable from `start`: module -> the module it was reached from."""
    via, todo = {}, [start]
    while todo:
        here = todo.pop()
        for dep in sorted(edges.get(here, ())):
            if dep not in via and dep != start:
                via[dep] = here
                todo.append(dep)
    return via


def _path(start: str, end: str, via: dict[str, str]) -> str:
    chain = [end]
    while chain[-1] != start:
        chain.append(via[chain[-1]])
    return " -> ".join(reversed(chain))


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
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
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _checked() -> dict[str, set[str]]:
    """The graph without the top layer (sicog.steps, sicog.cli) and without arrows into it."""
    return {m: {d for d in deps if not _under(d, TOP)} for m, deps in graph().items() if not _under(m, TOP)}


def test_the_parser_sees_every_kind_of_import():
    """The graph is only as good as its reading: spot-check arrows of each kind."""
    edges = graph()
    assert "sicog.store" in edges["sicog.data.catalog"]  # from sicog import store
    assert "sicog.errors" in edges["sicog.data.catalog"]  # from sicog.errors import UserError
    assert "sicog.evaluate.heldout" in edges["sicog.evaluate.lmms"]  # an import inside a function
    assert "sicog.data.catalog" in edges["sicog.data"]  # a package's __init__ and its submodules
    assert "sicog.prompts.steps" in edges["sicog.curate.select"]  # sicog.prompts.FormatError: defined in prompts.steps
    assert len(modules()) > 60


@pytest.mark.parametrize("module", [m for m in modules() if _under(m, RESTRICTED)])
def test_the_foundation_imports_no_room(module):
    edges = _checked()
    assert not _under(module, ROOMS_FORBIDDEN)
    via = _reach(module, {m: {d for d in deps if not _under(d, LEAVES_ALLOWED)} for m, deps in edges.items()})
    bad = sorted(d for d in via if _under(d, ROOMS_FORBIDDEN))
    assert not bad, f"{module} reaches a room: " + "; ".join(_path(module, d, via) for d in bad)


@pytest.mark.parametrize("module", [m for m in modules() if _under(m, FOUNDATION)])
def test_no_foundation_module_reaches_a_room(module):
    edges = _checked()
    via = _reach(module, {m: {d for d in deps if not _under(d, LEAVES_ALLOWED)} for m, deps in edges.items()})
    bad = sorted(d for d in via if _under(d, ROOMS))
    assert not bad, f"{module} reaches a room: " + "; ".join(_path(module, d, via) for d in bad)


def test_every_module_has_a_layer():
    """A new top-level module must be placed: in the foundation, in a room, or on top (steps, cli)."""
    unplaced = [m for m in modules() if m != "sicog" and not _under(m, FOUNDATION + ROOMS + TOP)]
    assert not unplaced, f"modules in no layer: {unplaced} (add them to FOUNDATION or ROOMS in {Path(__file__).name})"


def test_allowed_leaves_import_nothing():
    """What the foundation may read from a room must stay a leaf: no sicog import at all, and a package
    __init__ above it that imports nothing either (importing the leaf runs it)."""
    for leaf in LEAVES_ALLOWED:
        assert graph()[leaf] == set(), f"{leaf} imports {sorted(graph()[leaf])}"
        package = leaf.rpartition(".")[0]
        assert graph()[package] == set(), f"{package}/__init__.py imports {sorted(graph()[package])}"


def test_no_import_cycles():
    cycles = _cycles(_checked())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
