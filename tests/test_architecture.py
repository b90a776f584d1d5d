"""The package's import graph: layers import downward only, siblings never import each other, no
cycle anywhere, and imports sit at module top unless the line says why. README's "Layout" section
shows the same layers."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "src" / "ploutos"
LAYERS: list[set[str]] = [
    {"errors"},
    {"ploutos", "commandline", "files", "progress"},
    {"config"},
    {"data"},
    {"features"},
    {"node"},
    {"env"},
    {"analytics"},
    {"train", "results"},
    {"pipeline"},
    {"launch", "paper", "bench"},
    {"api"},
    {"cli"},
    {"__main__"},
]
"""Bottom first. A module may import its own part and any lower layer; parts that share a layer
(train and results; launch, paper and bench) never import each other."""
FACADE = ("ploutos", "ploutos.api")
"""The one upward edge: the package root re-exports the Python API (``ploutos.load_run``) from its
``__getattr__``, importing it when a name of it is first used; nothing below imports the root's API."""


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int
    at_top: bool
    """At module level (not inside a function or class)."""
    typing_only: bool
    """Under ``if TYPE_CHECKING:``: no runtime import."""
    text: str


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _targets(node: ast.Import | ast.ImportFrom, source: str) -> list[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: resolve against the importing module's package
            package = source.split(".") if MODULES[source].name == "__init__.py" else source.split(".")[:-1]
            base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
    found = []
    for name in names:
        while name and name not in MODULES:  # `import ploutos.x.y as z`, or a name inside a module
            name = name.rpartition(".")[0]
        if name:
            found.append(name)
    return sorted(set(found))


def imports_of(name: str) -> list[Import]:
    source = MODULES[name].read_text()
    lines = source.splitlines()
    tree = ast.parse(source)
    top, typing_only = set(), set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only |= {id(n) for n in ast.walk(node)}
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            top |= {id(n) for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for target in _targets(node, name) or [""]:
                found.append(
                    Import(name, target, node.lineno, id(node) in top, id(node) in typing_only, lines[node.lineno - 1])
                )
    return found


ALL_IMPORTS = [imp for name in MODULES for imp in imports_of(name)]
OWN_IMPORTS = [imp for imp in ALL_IMPORTS if imp.target]


def part(module: str) -> str:
    """The part of the package a module belongs to: ``ploutos.train.folds`` -> ``train``."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "ploutos"


def layer(module: str) -> int:
    return next(i for i, parts in enumerate(LAYERS) if part(module) in parts)


def test_every_module_has_a_layer():
    unplaced = sorted({part(m) for m in MODULES} - set().union(*LAYERS))
    assert not unplaced, f"add these parts of the package to LAYERS: {unplaced}"


def test_imports_run_downward_only():
    wrong = [
        f"{imp.source}:{imp.line} imports {imp.target}"
        for imp in OWN_IMPORTS
        if part(imp.source) != part(imp.target)
        and layer(imp.target) >= layer(imp.source)
        and (imp.source, imp.target) != FACADE
    ]
    assert not wrong, "upward or sideways imports:\n" + "\n".join(wrong)


def test_train_and_results_meet_only_in_the_pipeline():
    between = [
        f"{imp.source} imports {imp.target}"
        for imp in OWN_IMPORTS
        if {part(imp.source), part(imp.target)} == {"train", "results"}
    ]
    assert not between


def test_no_import_cycle():
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for imp in OWN_IMPORTS:
        if not imp.typing_only and imp.target != imp.source and (imp.source, imp.target) != FACADE:
            graph[imp.source].add(imp.target)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_imports_sit_at_module_top_unless_the_line_says_why():
    hidden = [
        f"{imp.source}:{imp.line}: {imp.text.strip()}" for imp in ALL_IMPORTS if not imp.at_top and "#" not in imp.text
    ]
    assert not hidden, "imports inside functions need a comment on the line saying why:\n" + "\n".join(hidden)


def test_the_graph_test_sees_what_it_should():
    """The checks above are only as good as the parser: it must see real edges, lazy ones included."""
    edges = {(imp.source, imp.target) for imp in OWN_IMPORTS}
    assert ("ploutos.pipeline.task", "ploutos.train.trainer") in edges
    assert ("ploutos.results.hdf5", "ploutos.analytics.evaluation") in edges
    assert ("ploutos.cli", "ploutos.pipeline.run") in edges  # an import inside a command handler
    assert layer("ploutos.results.aggregate") == layer("ploutos.train.folds") > layer("ploutos.analytics.metrics")


def test_readme_layout_names_every_part_of_the_package():
    readme = (REPO / "README.md").read_text()
    layout = readme.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    for name in sorted({part(m) for m in MODULES} - {"ploutos", "__main__"}):
        shown = f"{name}/" if (PACKAGE / name).is_dir() else f"{name}.py"
        assert shown in layout, f"README's layout section does not show {shown}"
