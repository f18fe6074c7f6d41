"""The library never imports the benchmarks: no module of unrollsci outside unrollsci/bench
imports ``unrollsci.bench`` or a bench/demo module (``unrollsci.cli`` names them only in
strings, for ``importlib``)."""

from __future__ import annotations

import ast
from pathlib import Path

import unrollsci

PACKAGE = Path(unrollsci.__file__).resolve().parent
#: last components of the per-subpackage modules that unrollsci/bench replaced.
OLD_BENCH_NAMES = ("_bench", "_bench_md", "_bench_radon", "_demo", "_lammps")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(tree: ast.AST, module: str, is_package: bool) -> list[str]:
    """Absolute names of every module (or module attribute) an import statement names."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                drop = node.level - 1 if is_package else node.level
                base = base[: len(base) - drop]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names.append(prefix)
            names += [f"{prefix}.{alias.name}" for alias in node.names]
    return names


def _is_bench(name: str) -> bool:
    return (
        name == "unrollsci.bench"
        or name.startswith("unrollsci.bench.")
        or any(part in OLD_BENCH_NAMES for part in name.split("."))
    )


def _violations(source: str, module: str, is_package: bool = False) -> list[str]:
    tree = ast.parse(source)
    return sorted({n for n in _imported(tree, module, is_package) if _is_bench(n)})


def test_no_library_module_imports_the_benchmarks():
    checked, bad = 0, {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if (PACKAGE / "bench") in path.parents:
            continue
        module = _module_name(path)
        found = _violations(path.read_text(), module, path.name == "__init__.py")
        checked += 1
        if found:
            bad[module] = found
    assert checked > 30  # the whole library was scanned
    assert not bad, bad


def test_the_checker_sees_relative_and_absolute_imports():
    assert _violations("from ..bench import ct", "unrollsci.graph._data") == [
        "unrollsci.bench",
        "unrollsci.bench.ct",
    ]
    assert _violations("from . import bench", "unrollsci", is_package=True) == ["unrollsci.bench"]
    assert _violations("def f():\n    import unrollsci.bench.ct\n", "unrollsci.x") == [
        "unrollsci.bench.ct"
    ]
    assert _violations("from ._bench import make_data", "unrollsci.imaging._demo") != []
    assert _violations("from .._io import atomic_write", "unrollsci.graph._data") == []
    # the CLI names its sections in strings only
    cli = PACKAGE / "cli.py"
    assert _violations(cli.read_text(), "unrollsci.cli") == []
    assert '"unrollsci.bench.ct"' in cli.read_text()
