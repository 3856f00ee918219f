"""The code's layout as checks that can fail (STYLE.md: "layering as a rule you can check").

    source of cellnet/ and search/ ── ast.parse ──┬─ import_edges ─── import_circles ... no circle, inner imports too
                                                  ├─ long_functions ............... no function over 100 lines
                                                  ├─ forbidden_imports ............ cellnet/ imports no ray, no search
                                                  └─ unexplained_inner_imports .... an import inside a function says
                                                                                    why on its line or the one before

Each checker takes a root and package names and returns one message per problem ("path:line: what is wrong"), so
the last test can run every checker on a tiny made-up package that breaks each rule.
"""

from __future__ import annotations

import ast
import io
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cellnet", "search")
MAX_FUNCTION_LINES = 100
FORBIDDEN_IN_CELLNET = ("ray", "search")  # STYLE.md: cellnet/ imports no Ray, nothing in cellnet/ imports search/


@dataclass(frozen=True)
class Module:
    name: str  # dotted: "cellnet.data.sources"
    path: Path
    tree: ast.Module
    is_package: bool  # an __init__.py


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    where: str  # "path:line"


def modules(root: Path, packages: tuple[str, ...]) -> dict[str, Module]:
    """Every .py file under root/<package> by dotted name."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            name = ".".join(parts[:-1] if is_package else parts)
            found[name] = Module(name, path, ast.parse(path.read_text(), filename=str(path)), is_package)
    return found


def imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement in `tree`, inside functions (and methods, and nested ones) too."""
    return (node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom))


def _absolute(module: Module, node: ast.ImportFrom) -> str:
    """The dotted module a `from ... import` names, relative imports resolved against `module`."""
    if node.level == 0:
        return node.module or ""
    base = module.name.split(".")
    base = base if module.is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _where(module: Module, root: Path, line: int) -> str:
    return f"{module.path.relative_to(root)}:{line}"


def imported_names(module: Module, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The dotted names an import statement loads: `from pkg import name` is pkg.name (maybe a submodule) and pkg."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = _absolute(module, node)
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def import_edges(found: dict[str, Module], root: Path) -> list[Edge]:
    """Module -> module edges, imports inside functions included. `from pkg import name` is an edge to the submodule
    pkg.name where there is one, else to pkg; `import a.b.c` an edge to a.b.c (its parents' __init__ run first but
    do not import it back)."""
    edges = []
    for module in found.values():
        for node in imports(module.tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _absolute(module, node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in found else base for a in node.names]
            for target in dict.fromkeys(targets):
                if target in found and target != module.name:
                    edges.append(Edge(module.name, target, _where(module, root, node.lineno)))
    return edges


def import_circles(root: Path, packages: tuple[str, ...]) -> list[str]:
    """One message per knot of modules that import each other (a strongly connected component): a shortest circle
    through its first module, each edge with the file and line of its import."""
    graph: dict[str, list[Edge]] = {}
    for edge in import_edges(modules(root, packages), root):
        graph.setdefault(edge.source, []).append(edge)
    circles = []
    for knot in _knots(graph):
        start = min(knot)
        ring = _shortest_ring(graph, start, knot)
        steps = " -> ".join(f"{e.source} ({e.where})" for e in ring)
        circles.append(f"import circle: {steps} -> {start}")
    return sorted(circles)


def _knots(graph: dict[str, list[Edge]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    knots: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for edge in graph.get(node, []):
            if edge.target not in index:
                visit(edge.target)
                low[node] = min(low[node], low[edge.target])
            elif edge.target in stack:
                low[node] = min(low[node], index[edge.target])
        if low[node] == index[node]:
            knot = set()
            while True:
                member = stack.pop()
                knot.add(member)
                if member == node:
                    break
            if len(knot) > 1:
                knots.append(knot)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return knots


def _shortest_ring(graph: dict[str, list[Edge]], start: str, knot: set[str]) -> list[Edge]:
    """The edges of a shortest path from `start` back to itself inside `knot` (breadth first)."""
    came_by: dict[str, Edge] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for edge in graph.get(node, []):
                if edge.target == start:
                    ring = [edge]
                    while ring[0].source != start:
                        ring.insert(0, came_by[ring[0].source])
                    return ring
                if edge.target in knot and edge.target not in came_by:
                    came_by[edge.target] = edge
                    following.append(edge.target)
        frontier = following
    raise AssertionError(f"{start} is in a knot but no circle returns to it")


def long_functions(root: Path, packages: tuple[str, ...]) -> list[str]:
    """Functions and methods (nested ones too) longer than MAX_FUNCTION_LINES, decorators not counted."""
    problems = []
    for module in modules(root, packages).values():
        for node in ast.walk(module.tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                assert node.end_lineno is not None
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    problems.append(
                        f"{_where(module, root, node.lineno)}: function {node.name} is {length} lines long "
                        f"(at most {MAX_FUNCTION_LINES}: split it into named helpers)"
                    )
    return problems


def forbidden_imports(root: Path, package: str, forbidden: tuple[str, ...]) -> list[str]:
    """Imports (anywhere in a module, inside functions too) of a top-level package in `forbidden`."""
    problems = []
    for module in modules(root, (package,)).values():
        for node in imports(module.tree):
            for name in imported_names(module, node):
                if name.split(".")[0] in forbidden:
                    problems.append(f"{_where(module, root, node.lineno)}: {package}/ imports {name}")
                    break
    return problems


def comment_lines(source: str) -> set[int]:
    """The numbers of the lines that hold a comment."""
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return {tok.start[0] for tok in tokens if tok.type == tokenize.COMMENT}


def _import_runs(node: ast.AST, function: str | None = None) -> Iterator[tuple[str, list[ast.Import | ast.ImportFrom]]]:
    """Runs of consecutive import statements inside functions (blank lines between them allowed, as isort's groups
    have), each with the innermost function it is in."""
    for field in ("body", "orelse", "finalbody", "handlers"):
        statements = getattr(node, field, None)
        if not isinstance(statements, list):
            continue
        run: list[ast.Import | ast.ImportFrom] = []
        for statement in [*statements, None]:
            if isinstance(statement, ast.Import | ast.ImportFrom):
                run.append(statement)
                continue
            if run and function is not None:
                yield function, run
            run = []
            if statement is not None:
                inner = statement.name if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef) else function
                yield from _import_runs(statement, inner)


def unexplained_inner_imports(root: Path, packages: tuple[str, ...]) -> list[str]:
    """Imports inside functions without a comment on their lines or the line before; the imports that follow an
    explained one with nothing but blank lines between (a block of consecutive imports) share its comment."""
    problems = []
    for module in modules(root, packages).values():
        comments = comment_lines(module.path.read_text())
        for function, run in _import_runs(module.tree):
            explained = False
            for node in run:
                assert node.end_lineno is not None
                explained = explained or any(line in comments for line in range(node.lineno - 1, node.end_lineno + 1))
                if explained:
                    continue
                names = ", ".join(alias.name for alias in node.names)
                source = f"from {_absolute(module, node)} import {names}" if isinstance(node, ast.ImportFrom) else names
                problems.append(
                    f"{_where(module, root, node.lineno)}: `{source}` inside {function}() says nowhere why it is "
                    "not at module level (defer a heavy or optional dependency, with a comment; else move it up)"
                )
    return sorted(problems, key=lambda p: (p.split(":")[0], int(p.split(":")[1])))


def test_no_import_circle() -> None:
    assert import_circles(ROOT, PACKAGES) == []


def test_no_function_over_100_lines() -> None:
    assert long_functions(ROOT, PACKAGES) == []


def test_cellnet_imports_no_ray_and_no_search() -> None:
    assert forbidden_imports(ROOT, "cellnet", FORBIDDEN_IN_CELLNET) == []


def test_every_import_inside_a_function_says_why() -> None:
    assert unexplained_inner_imports(ROOT, PACKAGES) == []


BROKEN = {
    "pkg/__init__.py": "from pkg import a\n",
    "pkg/a.py": "VALUE = 1\n\n\ndef f():\n    import torch  # heavy\n\n    from pkg.b import g\n\n    return g\n",
    "pkg/b.py": "import os\n\n\ndef g():\n    from pkg import VALUE\n    return VALUE\n",
    "pkg/c.py": "class K:\n    def m(self):\n        if self:\n            import json\n        return json\n",
    "pkg/long.py": "def long():\n" + "    x = 1\n" * MAX_FUNCTION_LINES,
    "pkg/sub/__init__.py": "",
    "pkg/sub/ray_user.py": "def h():\n    # heavy\n    import ray.tune\n    from ..sub import ray_user\n",
    "pkg/sub/search_user.py": "from search.run import main\n",
}


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    """A tiny package that breaks each rule (and keeps some, to show what passes): a circle through the package
    made by an import inside a function, a 101-line function, imports of ray and search, two unexplained imports
    inside functions (one in a method, under an `if`) and explained ones (a comment covering a block)."""
    for name, text in BROKEN.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_checkers_catch_a_broken_package(broken: Path) -> None:
    assert import_circles(broken, ("pkg",)) == [
        "import circle: pkg (pkg/__init__.py:1) -> pkg.a (pkg/a.py:7) -> pkg.b (pkg/b.py:5) -> pkg"
    ]
    assert long_functions(broken, ("pkg",)) == [
        f"pkg/long.py:1: function long is {MAX_FUNCTION_LINES + 1} lines long (at most 100: split it into named "
        "helpers)"
    ]
    assert forbidden_imports(broken, "pkg", FORBIDDEN_IN_CELLNET) == [
        "pkg/sub/ray_user.py:3: pkg/ imports ray.tune",
        "pkg/sub/search_user.py:1: pkg/ imports search.run",
    ]
    unexplained = unexplained_inner_imports(broken, ("pkg",))
    assert [line.split(":")[:2] for line in unexplained] == [["pkg/b.py", "5"], ["pkg/c.py", "4"]], unexplained
    assert "`from pkg import VALUE` inside g()" in unexplained[0] and "`json` inside m()" in unexplained[1]


def test_import_edges_follow_the_rules(broken: Path) -> None:
    """`from pkg import a` is an edge to the submodule pkg.a, `from pkg import VALUE` one to the package;
    `from ..sub import ray_user` inside pkg.sub.ray_user resolves to itself (no edge); third-party imports none."""
    edges = import_edges(modules(broken, ("pkg",)), broken)
    assert {(e.source, e.target) for e in edges} == {("pkg", "pkg.a"), ("pkg.a", "pkg.b"), ("pkg.b", "pkg")}
