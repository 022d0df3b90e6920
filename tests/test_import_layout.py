"""The package's import graph: no module imports one that imports it back, and ingest/ keeps its layers.

The graph is read from the source (`ast`), not from what happens to be imported at run time: every
`import` and `from ... import` anywhere in a file counts, inside functions and `if TYPE_CHECKING:`
blocks too. `from pkg import name` is an import of `pkg.name` when that is a module, else of `pkg`;
relative imports are resolved against the importing module's package. Only imports of modules of the
package itself are edges.

Layers of microstructure/ingest/ (data flows Binance -> collectors -> sink):
- records.py, the shared vocabulary, imports nothing from ingest/;
- health.py, what every stage reports to, imports nothing from ingest/ but records;
- binance/ (how Binance speaks) and sink/ (how rows land) import records and health only, never
  collectors/, cli.py or each other;
- collectors/ (what is collected, when) import binance/, sink/, records and health, never cli.py;
- cli.py may import anything in ingest/.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

PACKAGE = "microstructure"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE
INGEST = f"{PACKAGE}.ingest"

Graph = dict[str, set[str]]


# ---------------------------------------------------------------- building the graph


def module_files(root: Path = ROOT, package: str = PACKAGE) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package) for every .py file under `root`."""
    out: dict[str, tuple[Path, bool]] = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        parts = [package, *rel.parts]
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        out[".".join(parts)] = (path, is_package)
    return out


def _target(name: str, modules: Iterable[str]) -> str | None:
    """`name` if it is a module of the package, else its longest prefix that is; None outside it."""
    known = set(modules)
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def imports_of(module: str, source: str, is_package: bool, modules: Iterable[str]) -> set[str]:
    """The package's modules that `module` (whose text is `source`) imports anywhere in its file."""
    known = set(modules)
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                t = _target(alias.name, known)
                if t is not None:
                    out.add(t)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                if node.level > 1:
                    base = base[: -(node.level - 1)]
                pkg = ".".join([*base, node.module] if node.module else base)
            else:
                pkg = node.module or ""
            for alias in node.names:
                sub = f"{pkg}.{alias.name}"
                t = sub if sub in known else _target(pkg, known)
                if t is not None:
                    out.add(t)
    out.discard(module)
    return out


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> Graph:
    files = module_files(root, package)
    return {
        name: imports_of(name, path.read_text(encoding="utf-8"), is_package, files)
        for name, (path, is_package) in files.items()
    }


def strongly_connected(graph: Graph) -> list[list[str]]:
    """Every group of more than one module that import each other, directly or round a circle
    (Tarjan's algorithm), each sorted, in sorted order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(groups)


def cycle_through(graph: Graph, group: list[str]) -> list[str]:
    """One shortest circle [a, ..., a] from the group's first module back to it, inside the group."""
    members = set(group)
    start = group[0]
    prev: dict[str, str] = {}
    frontier = [start]
    while start not in prev:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w in members and w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    path = [start]
    v = prev[start]
    while v != start:
        path.append(v)
        v = prev[v]
    return [start, *reversed(path)]


def find_cycles(graph: Graph) -> list[str]:
    """One line per group of modules that import each other: the group and one circle through it."""
    out = []
    for group in strongly_connected(graph):
        short = [m.removeprefix(PACKAGE + ".") for m in group]
        circle = " -> ".join(m.removeprefix(PACKAGE + ".") for m in cycle_through(graph, group))
        out.append(f"{{{', '.join(short)}}}: e.g. {circle}")
    return out


# ---------------------------------------------------------------- the ingest layers


def ingest_place(module: str) -> str | None:
    """records | health | cli | binance | collectors | sink | package for modules of ingest/;
    'unplaced' for a module of ingest/ outside them; None outside ingest/."""
    if module == INGEST:
        return "package"
    if not module.startswith(INGEST + "."):
        return None
    first = module[len(INGEST) + 1 :].split(".")[0]
    if first in ("records", "health", "cli", "binance", "collectors", "sink"):
        return first
    return "unplaced"


# what each place of ingest/ may import from ingest/ (other than its own place)
ALLOWED = {
    "records": set(),
    "health": {"records"},
    "binance": {"records", "health"},
    "sink": {"records", "health"},
    "collectors": {"records", "health", "binance", "sink"},
    "cli": {"records", "health", "binance", "sink", "collectors"},
    "package": set(),
}


def layer_violations(graph: Graph) -> list[str]:
    out = []
    for module, targets in sorted(graph.items()):
        place = ingest_place(module)
        if place is None:
            continue
        if place == "unplaced":
            out.append(f"{module}: a module of ingest/ belongs in binance/, collectors/ or sink/")
            continue
        for t in sorted(targets):
            tplace = ingest_place(t)
            if tplace is None or tplace == place:
                continue
            if tplace not in ALLOWED[place]:
                allowed = ", ".join(sorted(ALLOWED[place]))
                rule = f"may import only {allowed} of ingest/" if allowed else "may import nothing of ingest/"
                out.append(f"{module} imports {t}: {place} {rule}")
    return out


# ---------------------------------------------------------------- the tests


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, "modules that import each other:\n" + "\n".join("  " + c for c in cycles)


def test_ingest_keeps_its_layers() -> None:
    graph = import_graph()
    assert {m for m in graph if ingest_place(m) == "collectors"}, "ingest/collectors/ not found"
    problems = layer_violations(graph)
    assert not problems, "\n".join(problems)


# what the readers of the database may import: features_sql/ and export/ read the database, never the
# collectors (ingest/); the export reads the features, never the other way round
READERS = {f"{PACKAGE}.features_sql": (INGEST, f"{PACKAGE}.export"), f"{PACKAGE}.export": (INGEST,)}


def reader_violations(graph: Graph) -> list[str]:
    out = []
    for module, targets in sorted(graph.items()):
        for reader, forbidden in READERS.items():
            if module != reader and not module.startswith(reader + "."):
                continue
            for t in sorted(targets):
                if any(t == f or t.startswith(f + ".") for f in forbidden):
                    out.append(f"{module} imports {t}: {reader.split('.')[-1]}/ reads the database, not {t}")
    return out


def test_features_and_export_read_the_database_not_the_collectors() -> None:
    graph = import_graph()
    assert f"{PACKAGE}.features_sql.refresher" in graph
    problems = reader_violations(graph)
    assert not problems, "\n".join(problems)
    assert reader_violations({f"{PACKAGE}.features_sql.x": {f"{INGEST}.cli"}}) != []


# ---------------------------------------------------------------- self-checks of the checker


def test_find_cycles_reports_a_cycle_and_only_a_cycle() -> None:
    graph: Graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d"}}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert cycle_through(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]
    assert find_cycles(graph) == ["{a, b, c}: e.g. a -> b -> c -> a"]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    two = {"a": {"b"}, "b": {"a"}, "x": {"y", "z"}, "y": {"x"}, "z": {"x"}}
    assert find_cycles(two) == ["{a, b}: e.g. a -> b -> a", "{x, y, z}: e.g. x -> y -> x"]


def test_imports_are_read_everywhere_in_a_file() -> None:
    modules = {"p", "p.a", "p.b", "p.c", "p.d", "p.sub", "p.sub.e"}
    source = (
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "import os\n"
        "from p import b\n"  # a module of p
        "from p import CONSTANT\n"  # a name of p/__init__.py
        "if TYPE_CHECKING:\n"
        "    from p.c import Thing\n"
        "def f():\n"
        "    import p.d as d\n"
        "from .sub import e\n"
        "from . import a\n"
    )
    assert imports_of("p.a", source, False, modules) == {"p", "p.b", "p.c", "p.d", "p.sub.e"}
    assert imports_of("p.sub.e", "from .. import b\nfrom ..c import X\n", False, modules) == {"p.b", "p.c"}
    assert imports_of("p.sub", "from . import e\n", True, modules) == {"p.sub.e"}


def test_layer_check_catches_a_reversed_import() -> None:
    graph: Graph = {
        f"{INGEST}.records": set(),
        f"{INGEST}.sink.writer": {f"{INGEST}.records", f"{INGEST}.collectors.book"},
        f"{INGEST}.collectors.book": {f"{INGEST}.sink.writer", f"{INGEST}.binance.rest"},
        f"{INGEST}.binance.rest": {f"{INGEST}.sink.writer"},
        f"{INGEST}.stray": set(),
    }
    problems = layer_violations(graph)
    assert len(problems) == 3, problems
    assert any(p.startswith(f"{INGEST}.sink.writer imports {INGEST}.collectors.book") for p in problems)
    assert any(p.startswith(f"{INGEST}.binance.rest imports {INGEST}.sink.writer") for p in problems)
    assert any(p.startswith(f"{INGEST}.stray:") for p in problems)


def test_the_graph_is_read_from_the_real_package() -> None:
    graph = import_graph()
    assert f"{PACKAGE}.cli" in graph and f"{PACKAGE}.config" in graph[f"{PACKAGE}.cli"]
    assert len(graph) > 30


def test_a_circle_hidden_in_a_function_and_under_type_checking_is_found(tmp_path: Path) -> None:
    """The two ways the old ingest/ hid its circles (book <-> orderbook, exchange server <-> rest)."""
    root = tmp_path / "p"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "book.py").write_text("from p.orderbook import DiffBooks\n")
    (root / "orderbook.py").write_text("def sample():\n    from p.book import SnapshotRow\n")
    (root / "server.py").write_text("from p import rest\n")
    (root / "rest.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from p.server import LocalExchange\n"
    )
    (root / "fine.py").write_text("import p.book\nfrom p import rest\n")
    assert find_cycles(import_graph(root, "p")) == [
        "{p.book, p.orderbook}: e.g. p.book -> p.orderbook -> p.book",
        "{p.rest, p.server}: e.g. p.rest -> p.server -> p.rest",
    ]
