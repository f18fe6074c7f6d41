"""Draw the import graph between unrollsci's subpackages, from the source (``ast``).

Usage: ``python scripts/module_graph.py [--out docs/module_graph.png]``

Every ``import`` / ``from ... import`` in ``unrollsci/**/*.py`` becomes an edge between the
top-level components of the importing and the imported module (``unrollsci.solvers._cg``
-> ``solvers``; ``_validation``, ``_io`` and ``_compat`` are drawn as one ``core`` node).
Imports at module level are solid edges; imports inside a function (lazy: made on first use,
e.g. to avoid a cycle or a heavy optional dependency) and modules named in a string for
``importlib`` (the CLI's sections) are dashed. Imports under
``if TYPE_CHECKING:`` are left out, and so is the root ``unrollsci/__init__.py`` (lazy
re-exports only). Writes the PNG and prints the same graph as mermaid text.
"""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "unrollsci"
CORE = {"_validation", "_io", "_compat", "_threads", "_argtypes"}
#: drawing positions (x, layer), bottom to top: imports point downwards only, except lazy ones
POSITIONS = {
    "operators": (-3.6, 0),
    "prox": (0.0, 0),
    "_prox_checks": (3.6, 0),
    "losses": (1.6, 1),
    "solvers": (-1.6, 1),
    "unrolled": (-6.2, 1.5),
    "train": (6.0, 2),
    "graph": (-4.2, 3),
    "precond": (-1.4, 3),
    "chem": (1.4, 3),
    "imaging": (4.2, 3),
    "bench": (0.0, 4.2),
    "cli": (3.0, 5.2),
    "__main__": (6.0, 5.2),
}
#: drawn as a note, not as edges: every subpackage imports it
FOUNDATION = "core"


def component(module: str) -> str | None:
    """``unrollsci.x.y`` -> ``x`` (``core`` for the private foundation modules)."""
    parts = module.split(".")
    if parts[0] != "unrollsci" or len(parts) < 2:
        return None
    name = parts[1]
    return "core" if name in CORE else name


def module_name(path: Path) -> tuple[str, bool]:
    parts = path.relative_to(ROOT).with_suffix("").parts
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, bool]]:
    """``(absolute module name, lazy)`` for every import statement of a module."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, lazy) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".")
                    drop = child.level - 1 if is_package else child.level
                    base = base[: len(base) - drop]
                    prefix = ".".join(base + ([child.module] if child.module else []))
                else:
                    prefix = child.module or ""
                found.append((prefix, lazy))
                # ``from . import x`` / ``from .. import bench``: names that are modules
                if not child.module:
                    folder = ROOT.joinpath(*prefix.split("."))
                    found.extend(
                        (f"{prefix}.{alias.name}", lazy)
                        for alias in child.names
                        if (folder / alias.name).is_dir() or (folder / f"{alias.name}.py").exists()
                    )
            elif (
                isinstance(child, ast.Constant)
                and isinstance(child.value, str)
                and re.fullmatch(r"unrollsci(\.\w+)+", child.value)
            ):
                # a module named in a string, for importlib (the CLI's sections): lazy
                found.append((child.value, True))
            visit(child, inner)

    visit(tree, False)
    return found


def build_graph() -> dict[tuple[str, str], bool]:
    """``{(importer, imported): lazy}``; an edge is lazy only if every import along it is."""
    edges: dict[tuple[str, str], bool] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module, is_package = module_name(path)
        src = component(module)
        if src is None:  # the root __init__
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for name, lazy in imports(tree, module, is_package):
            dst = component(name)
            if dst is None or dst == src:
                continue
            edges[(src, dst)] = edges.get((src, dst), True) and lazy
    return edges


def mermaid(edges: dict[tuple[str, str], bool]) -> str:
    lines = ["graph BT"]
    for (src, dst), lazy in sorted(edges.items()):
        lines.append(f"    {src} {'-.->' if lazy else '-->'} {dst}")
    return "\n".join(lines)


def draw(edges: dict[tuple[str, str], bool], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    nodes = sorted({n for edge in edges for n in edge} - {FOUNDATION})
    extra = [n for n in nodes if n not in POSITIONS]  # a new subpackage: top row until placed
    pos = {n: (POSITIONS[n][0] * 1.0, POSITIONS[n][1] * 1.7) for n in nodes if n in POSITIONS}
    pos.update({n: (-5.4 + 2.4 * i, 6 * 1.7) for i, n in enumerate(extra)})
    shown = {e: lazy for e, lazy in edges.items() if FOUNDATION not in e}
    g = nx.DiGraph()
    g.add_nodes_from(pos)
    g.add_edges_from(shown)
    fig, ax = plt.subplots(figsize=(12, 9.5))
    colours = {"bench": "#fde0c5", "cli": "#fde0c5"}
    size = 2600
    nx.draw_networkx_nodes(
        g,
        pos,
        ax=ax,
        node_size=size,
        node_shape="s",
        node_color=[colours.get(n, "#cfe2f3") for n in g.nodes],
        edgecolors="#333333",
    )
    nx.draw_networkx_labels(g, pos, ax=ax, font_size=11)
    groups = {
        "library": (lambda e, lazy: not lazy and e[0] != "bench", "#222222", "solid", 1.5),
        "lazy": (lambda e, lazy: lazy and e[0] != "bench", "#c0392b", "dashed", 1.5),
        "bench": (lambda e, lazy: e[0] == "bench", "#9a9a9a", "solid", 0.8),
    }
    for keep, colour, style, width in groups.values():
        chosen = [e for e, lazy in shown.items() if keep(e, lazy)]
        nx.draw_networkx_edges(
            g,
            pos,
            edgelist=chosen,
            ax=ax,
            node_size=size,
            node_shape="s",
            arrowsize=14,
            width=width,
            style=style,
            edge_color=colour,
            connectionstyle="arc3,rad=0.08",
        )
    ax.set_title(
        "unrollsci: imports between subpackages (arrow: importer -> imported)\n"
        "black: at module import; red dashed: lazy (inside a function, or importlib by name); "
        "grey: from bench\n"
        "not drawn: every subpackage imports core (_validation, _io, _compat, _threads, _argtypes)",
        fontsize=11,
    )
    ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "module_graph.png")
    args = parser.parse_args(argv)
    edges = build_graph()
    draw(edges, args.out)
    print(mermaid(edges))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
