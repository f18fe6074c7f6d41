"""The layer rule of docs/architecture.md ("Layers"): each layer imports only its own layer
and the layers below it. An import made when a module is loaded (a module-level ``import`` /
``from ... import``, in a class body or a ``try`` included) never points upwards; an import
inside a function (lazy) may, and the doc names the one that does: ``operators -.-> imaging``
(the lazy alias ``unrollsci.operators.fbp``). Imports under ``if TYPE_CHECKING:`` never run
and are left out, as in ``scripts/module_graph.py``'s picture; so is the root
``unrollsci/__init__.py`` (lazy re-exports only)."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import unrollsci

PACKAGE = Path(unrollsci.__file__).resolve().parent
DOC = PACKAGE.parent / "docs" / "architecture.md"

#: The layer table of docs/architecture.md ("## Layers"), bottom to top: top-level module or
#: subpackage of unrollsci -> layer. Keep it equal to the doc's table
#: (test_the_table_here_is_the_docs_table checks that).
LAYER_TABLE = [
    ("core", ["_validation", "_io", "_compat", "_threads", "_argtypes"]),
    ("algebra", ["operators", "prox", "_prox_checks"]),
    ("classical solvers", ["solvers", "losses"]),
    ("unrolled and training", ["unrolled", "train"]),
    ("problems", ["graph", "precond", "chem", "imaging"]),
    ("benchmarks", ["bench"]),
    ("command line", ["cli", "__main__"]),
]
LAYER = {name: rank for rank, (_, names) in enumerate(LAYER_TABLE) for name in names}
#: the upward edges the doc allows, all lazy (importer, imported)
LAZY_UPWARD = {("operators", "imaging")}


def _load_module_graph():
    """``scripts/module_graph.py``, whose ``imports`` reads the import statements of a module
    (relative, absolute, lazy, ``TYPE_CHECKING`` left out) for the picture: the same reader."""
    path = PACKAGE.parent / "scripts" / "module_graph.py"
    spec = importlib.util.spec_from_file_location("_unrollsci_module_graph", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_MG = _load_module_graph()


def _component(name: str) -> str | None:
    """``unrollsci.solvers._cg`` -> ``solvers``; ``None`` outside unrollsci (or the root)."""
    parts = name.split(".")
    return parts[1] if parts[0] == "unrollsci" and len(parts) > 1 else None


def _imports(source: str, module: str, is_package: bool) -> list[tuple[str, bool]]:
    """``(component imported, lazy)`` for every unrollsci import of a module's source."""
    found = _MG.imports(ast.parse(source), module, is_package)
    return [(c, lazy) for name, lazy in found if (c := _component(name)) is not None]


def _module_name(path: Path) -> tuple[str, bool]:
    return _MG.module_name(path)


def _edges() -> dict[tuple[str, str, bool], set[str]]:
    """``{(importer, imported, lazy): {modules}}`` over every module of unrollsci/."""
    edges: dict[tuple[str, str], set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module, is_package = _module_name(path)
        src = _component(module)
        if src is None:  # the root __init__: lazy re-exports only
            continue
        for dst, lazy in _imports(path.read_text(), module, is_package):
            if dst != src:
                edges.setdefault((src, dst, lazy), set()).add(module)
    return edges


def _upward(edges: dict[tuple[str, str, bool], set[str]], layer: dict[str, int]) -> dict:
    return {e: mods for e, mods in edges.items() if layer[e[0]] < layer[e[1]]}


def test_every_module_has_a_layer():
    edges = _edges()
    assert len(edges) > 20  # the whole library was scanned
    top = {_component(_module_name(p)[0]) for p in PACKAGE.rglob("*.py")} - {None}
    imported = {e[1] for e in edges}
    unknown = sorted((top | imported) - set(LAYER))
    assert not unknown, (
        f"modules with no layer: {unknown}; add them to the table of docs/architecture.md "
        "('Layers') and to LAYER_TABLE here"
    )


def test_no_upward_import_at_module_level():
    bad = {e[:2]: sorted(m) for e, m in _upward(_edges(), LAYER).items() if not e[2]}
    assert not bad, f"upward imports at module level (importer, imported): {bad}"


def test_lazy_upward_imports_are_the_ones_the_doc_names():
    lazy = {e[:2] for e in _upward(_edges(), LAYER) if e[2]}
    assert lazy == LAZY_UPWARD, (
        f"lazy upward edges {sorted(lazy)}; docs/architecture.md names {sorted(LAZY_UPWARD)}"
    )


def test_losses_imports_the_solvers_so_it_sits_with_them():
    # the edge that broke the old table (losses in "algebra", below the classical solvers)
    edges = _edges()
    assert ("losses", "solvers", False) in edges
    moved = dict(LAYER, losses=LAYER["prox"])
    assert ("losses", "solvers", False) in _upward(edges, moved)


def test_the_checker_reads_relative_absolute_and_lazy_imports():
    src = (
        "from typing import TYPE_CHECKING\n"
        "from .solvers import cg\n"
        "from . import prox\n"
        "import unrollsci.operators._base\n"
        "from unrollsci.train import fit\n"
        "if TYPE_CHECKING:\n"
        "    from .graph import UnrolledGraphGD\n"
        "try:\n"
        "    from ._io import atomic_write\n"
        "except ImportError:\n"
        "    pass\n"
        "class A:\n"
        "    from .chem import qeq\n"
        "def f():\n"
        "    from .imaging import fbp\n"
        "import torch\n"
    )
    assert sorted(_imports(src, "unrollsci.losses", False)) == [
        ("_io", False),
        ("chem", False),
        ("imaging", True),
        ("operators", False),
        ("prox", False),
        ("solvers", False),
        ("train", False),
    ]
    assert _imports("from .._validation import x", "unrollsci.graph._data", False) == [
        ("_validation", False)
    ]
    assert _imports("from .. import bench, __version__", "unrollsci.graph", True) == [
        ("bench", False)
    ]


def test_the_table_here_is_the_docs_table():
    text = DOC.read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]  # no header
    doc_table = []
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        names = re.findall(r"`unrollsci\.(\w+)`", cells[1])
        doc_table.append((cells[0], names))
    assert doc_table == LAYER_TABLE
    assert "`operators -.-> imaging`" in section
