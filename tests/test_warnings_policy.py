"""The warnings policy: unrollsci's own warnings are errors in this suite, others are not.

A fresh install on the newest torch/PyG/numpy must pass the suite, so a third-party
deprecation (e.g. torch 2.14's FutureWarning for ``torch.jit.script``, raised while
torch_geometric imports) must never fail it, nor be printed at a user of the library.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import unrollsci
from unrollsci import ConvergenceWarning, UnrollsciWarning

PACKAGE = Path(unrollsci.__file__).parent


def _unrollsci_warning_names() -> set[str]:
    for mod in pkgutil.walk_packages([str(PACKAGE)], prefix="unrollsci."):
        try:
            importlib.import_module(mod.name)
        except ImportError:  # an optional extra that is not installed
            continue
    names, todo = set(), [UnrollsciWarning]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return names


def _warn_calls():
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "warn"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "warnings"
            ):
                yield path, node


def test_every_library_warning_is_an_unrollsci_warning():
    allowed = _unrollsci_warning_names()
    calls = list(_warn_calls())
    assert calls, "expected the package to raise at least one warning"
    bad = []
    for path, node in calls:
        cat = node.args[1] if len(node.args) > 1 else None
        for kw in node.keywords:
            if kw.arg == "category":
                cat = kw.value
        name = getattr(cat, "id", None) or getattr(cat, "attr", None)
        if name not in allowed:
            bad.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} category={name}")
    assert not bad, "warnings.warn calls without an UnrollsciWarning category:\n" + "\n".join(bad)


def test_own_warnings_are_errors_in_the_suite():
    with pytest.raises(ConvergenceWarning, match="stopped"):
        warnings.warn("solver stopped early", ConvergenceWarning, stacklevel=1)


def test_third_party_deprecations_are_not_errors():
    with pytest.warns(FutureWarning):
        warnings.warn_explicit(
            "`torch.jit.something` is deprecated", FutureWarning, "x.py", 1, module="torch.jit"
        )
    with pytest.warns(DeprecationWarning):
        warnings.warn_explicit("old api", DeprecationWarning, "y.py", 1, module="ase.io")


def test_graph_import_prints_no_third_party_warning():
    # A fresh interpreter with Python's default filters, as a user has: importing the graph
    # and precond models (which import torch_geometric) prints nothing on stderr.
    code = "import unrollsci.graph, unrollsci.precond; import unrollsci.precond._model as m; m._make_layer(4)"
    out = subprocess.run(
        [sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert "Warning" not in out.stderr, out.stderr


def test_running_a_graph_model_prints_no_third_party_warning():
    # The controller builds sparse CSR tensors, on whose first use torch prints its "beta"
    # notice; a user running a model with Python's default filters sees nothing on stderr.
    code = (
        "import torch, networkx as nx\n"
        "from unrollsci.graph import GraphInverseProblem, StepController, UnrolledGraphGD\n"
        "y = torch.randn(1, 36, dtype=torch.float64)\n"
        "p = GraphInverseProblem.from_networkx(nx.grid_2d_graph(6, 6), y,"
        " mask=torch.arange(36) % 2 == 0)\n"
        "UnrolledGraphGD(4, StepController(hidden=8, window=4), mode='window').double()(p)\n"
    )
    out = subprocess.run(
        [sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert "Warning" not in out.stderr, out.stderr


def test_public_exceptions_and_warnings_importable_from_the_top_level():
    from unrollsci import (
        ConvergenceError,
        ConvergenceWarning,
        PolarizationCatastropheError,
        UnrollsciWarning,
    )
    from unrollsci.chem import solve_charges

    assert issubclass(ConvergenceWarning, UnrollsciWarning)
    assert issubclass(ConvergenceError, RuntimeError)
    assert issubclass(PolarizationCatastropheError, ValueError)
    import torch

    pos = torch.tensor([[0.0, 0.0, 0.0], [0.74, 0.0, 0.0]], dtype=torch.float64)
    with pytest.raises(PolarizationCatastropheError):
        solve_charges(pos, [1, 1], params={"H": {"eta": 1.0}}, cutoff=None)
    with pytest.raises(AttributeError):
        unrollsci.NoSuchName  # noqa: B018
