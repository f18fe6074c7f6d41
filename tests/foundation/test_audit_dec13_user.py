"""Audit (Dec 13, the docs as a new user reads them): cg with scipy operators and
functions, cg's ``tol=0`` stopping threshold, and the graph data helpers' documented
signatures."""

from __future__ import annotations

import ast
import inspect
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from unrollsci.operators import SparseOperator
from unrollsci.precond import ic0
from unrollsci.solvers import cg

F64 = torch.float64
DOCS = Path(__file__).resolve().parents[2] / "docs"


def _laplace(n: int = 8) -> sp.csr_matrix:
    """The 2D 5-point Laplacian on an ``n x n`` grid (SPD), float64 CSR."""
    t = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(n, n))
    eye = sp.identity(n)
    return (sp.kron(t, eye) + sp.kron(eye, t)).tocsr()


# ------------------------------------------------------------ cg: scipy operators
def test_cg_refuses_scipy_linear_operators_for_A_and_M():
    a = _laplace()
    b = torch.ones(a.shape[0], dtype=F64)
    jacobi = spla.LinearOperator(a.shape, matvec=lambda r: r / a.diagonal(), dtype=np.float64)
    for m in (jacobi, ic0(a).to_scipy()):
        with pytest.raises(TypeError, match=r"Expected 'M' to be an unrollsci LinearOperator"):
            cg(a, b, M=m)
        with pytest.raises(TypeError, match=r"got the scipy LinearOperator .*to_scipy\(\)"):
            cg(a, b, M=m)
    for check in (True, False):
        with pytest.raises(
            TypeError,
            match=r"Expected 'A' to be an unrollsci LinearOperator.*got the scipy "
            r"LinearOperator MatrixLinearOperator",
        ):
            cg(spla.aslinearoperator(a), b, check=check)


def test_cg_callable_M_on_numpy_arrays_is_a_clear_type_error():
    a = _laplace()
    b = torch.ones(a.shape[0], dtype=F64)
    with pytest.raises(TypeError, match=r"callable 'M' to map a torch tensor") as info:
        cg(a, b, M=spla.spilu(a.tocsc()).solve)
    assert "(1, 64)" in str(info.value)
    assert isinstance(info.value.__cause__, TypeError)  # scipy's own error, chained


def test_cg_valid_preconditioners_still_solve():
    """A torch callable, the unrollsci preconditioner and the sparse matrix as ``M``
    (the inputs the new checks let through) solve the system as scipy's direct solver."""
    a = _laplace()
    rng = np.random.default_rng(0)
    b_np = rng.standard_normal((2, a.shape[0]))
    ref = spla.spsolve(a.tocsc(), b_np.T).T
    b = torch.tensor(b_np)
    d = torch.tensor(a.diagonal())
    jac = sp.diags(1.0 / a.diagonal()).tocsr()
    for m in (lambda r: r / d, ic0(a), jac, SparseOperator(jac)):
        x = cg(a, b, M=m, tol=1e-12).x.numpy()
        assert np.abs(x - ref).max() <= 1e-9 * np.abs(ref).max()


# ------------------------------------------------------------ cg: tol=0 threshold
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("scale", [1.0, 1e-30])
def test_cg_tol0_stops_where_the_squared_residual_underflows(dtype, scale):
    """docs/solvers.md: with ``tol=0`` a residual whose squared norm (of the system scaled to
    ``||b|| = 1``) underflows below ``finfo.tiny`` counts as converged: ``||r|| <
    sqrt(tiny) ||b||``. On a 2 x 2 system CG's residual falls by orders of magnitude per
    step after the exact solution is reached, and lands between ``sqrt(tiny * eps)``
    (subnormal square) and ``sqrt(tiny)`` within 20 iterations (float64: 5.5e-156)."""
    a = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=dtype)
    b = torch.tensor([1.0, 1.0], dtype=dtype) * scale
    limit = math.sqrt(torch.finfo(dtype).tiny)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # converged: no ConvergenceWarning
        sol = cg(a, b, tol=0, max_iter=40)
    assert sol.converged
    ref = np.linalg.solve(a.double().numpy(), b.double().numpy())
    rtol = 1e-14 if dtype == torch.float64 else 1e-6
    assert np.abs(sol.x.double().numpy() - ref).max() <= rtol * np.abs(ref).max()
    if dtype == torch.float64:  # (float32 reports the checked true residual, ~eps)
        # stopped at the first residual below the documented threshold, not later
        assert sol.residuals[-1] < limit
        assert all(r >= limit for r in sol.residuals[:-1])


def test_cg_tol0_residual_below_threshold_is_converged_float64():
    """The audit's case: residual 5.5e-156 < 1.5e-154 after 20 iterations was reported as
    not converged (the code waited for r^T r to be exactly 0)."""
    a = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sol = cg(a, torch.ones(2, dtype=F64), tol=0, max_iter=20)
    assert sol.converged and sol.residuals[-1] < math.sqrt(torch.finfo(F64).tiny)


# ------------------------------------------------------ docs/graph.md: data helpers
def _data_helpers_section() -> str:
    text = (DOCS / "graph.md").read_text()
    start = text.index("## Data helpers")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


def test_graph_data_helper_signatures_match_the_docs():
    import unrollsci.graph as graph

    section = _data_helpers_section()
    names = ("sensor_graph", "road_graph", "random_graph", "smooth_signal", "inpainting_problem")
    flat = " ".join(section.split())
    for name in names:
        found = re.search(rf"\* `{name}\(([^`]*)\)`", flat)
        assert found, f"docs/graph.md Data helpers does not show {name}(...)"
        doc = ast.parse(f"def f({found.group(1)}): pass").body[0].args
        sig = inspect.signature(getattr(graph, name)).parameters
        positional = [p.name for p in sig.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
        keyword = [p.name for p in sig.values() if p.kind is p.KEYWORD_ONLY]
        assert [a.arg for a in doc.args] == positional, name
        assert [a.arg for a in doc.kwonlyargs] == keyword[: len(doc.kwonlyargs)], name
        defaults = dict(zip([a.arg for a in doc.args][::-1], doc.defaults[::-1], strict=False))
        defaults.update(
            {a.arg: d for a, d in zip(doc.kwonlyargs, doc.kw_defaults, strict=True) if d}
        )
        for arg, node in defaults.items():
            value = eval(ast.unparse(node), {"torch": torch})  # noqa: S307 - the docs' text
            assert value == sig[arg].default, (name, arg)
    # the two graph builders return (adjacency, coords), as the docs now say
    for name in ("sensor_graph", "road_graph"):
        bullet = flat[flat.index(f"* `{name}(") + 2 :].split("* `")[0]
        assert "(adjacency, coords)" in bullet, name
        adj, coords = getattr(graph, name)(12, seed=1)
        assert sp.issparse(adj) and adj.shape == (12, 12) and np.shape(coords) == (12, 2)
