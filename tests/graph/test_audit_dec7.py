"""Audit of the graph module (December 7): stale PyG bounds, NaN steps at large finite
weights, dense lambda_min bounds of ill-conditioned problems, problems aliasing the
caller's tensors, lam assignment, x0 checks and float32 rounding of bounds. Each test
fails on the code before the fix."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.utils import from_networkx

from unrollsci import DtypeMismatchError
from unrollsci.graph import (
    CertifiedBounds,
    GraphInverseProblem,
    StepController,
    UnrolledGraphGD,
    problem_from_data,
)


def _star(n: int = 21, seed: int = 0, mask: torch.Tensor | None = None, lam: float = 1.0) -> Data:
    g = torch.Generator().manual_seed(seed)
    return Data(
        edge_index=from_networkx(nx.star_graph(n - 1)).edge_index,
        y=torch.randn(n, dtype=torch.float64, generator=g),
        mask=torch.arange(n) % 2 == 0 if mask is None else mask,
        lam=lam,
        num_nodes=n,
    )


def _dense_eigs(p: GraphInverseProblem) -> np.ndarray:
    return np.linalg.eigvalsh(p.hessian_scipy(0).toarray())


def test_certified_bounds_keep_their_laplacian_kind():
    """Bounds of the normalized Laplacian were put into a combinatorial problem (what
    model(data) builds): Lip 2.9 against lambda_max 22. Now the problem takes the kind
    the transform stored, and a problem of another kind recomputes its bounds."""
    d = CertifiedBounds(laplacian="normalized")(_star())
    p = problem_from_data(d)  # what model(data) does
    assert p.laplacian_kind == "normalized"
    ev = _dense_eigs(p)
    assert p.lipschitz().item() >= ev[-1] and p.lambda_min_bound().item() <= ev[0]
    q = problem_from_data(d, laplacian="combinatorial")
    ev = _dense_eigs(q)
    assert q.lipschitz().item() >= ev[-1] and q.lambda_min_bound().item() <= ev[0]
    assert q.gradient(q.solve_exact()).abs().max().item() < 1e-8
    # the scalar mode with every weight 0 (step 2 (floor + (1 - margin - floor) / 2) / Lip)
    # on the data: the energy error decreases at every layer (it diverged to 1e32)
    model = UnrolledGraphGD(20, StepController(hidden=8), mode="scalar").double()
    with torch.no_grad():
        for prm in model.parameters():
            prm.zero_()
    out = model(d)
    xs = p.solve_exact()
    e = [p.energy_norm_sq(x - xs).item() for x in out.iterates]
    assert all(b <= a * (1 + 1e-12) for a, b in zip(e, e[1:], strict=False)) and e[-1] < e[0]


def test_certified_bounds_not_reused_after_y_mask_or_lam_change():
    n = 21
    d = CertifiedBounds()(_star(n, mask=torch.ones(n, dtype=torch.bool)))
    m = torch.zeros(n, dtype=torch.bool)
    m[0] = True
    changed = d.clone()
    changed.mask, changed.y = m, d.y + 1.0  # a random-mask transform after pre_transform
    p = problem_from_data(changed)
    assert p.lambda_min_bound().item() <= _dense_eigs(p)[0]
    assert p.gradient(p.solve_exact()).abs().max().item() < 1e-8
    changed = d.clone()
    changed.lam = 50.0
    p = problem_from_data(changed)
    assert p.lipschitz().item() >= _dense_eigs(p)[-1]
    assert p.gradient(p.solve_exact()).abs().max().item() < 1e-8


def test_batch_of_certified_graphs_keeps_lam_and_reuses_the_bounds(monkeypatch):
    """PyG batches a Python float lam as float32 (0.7 -> 0.69999999): the transform stores
    lam as a float64 tensor, so a batch keeps it exactly and its graphs still match their
    fingerprints (the bounds are reused); a batch with one changed graph recomputes."""
    graphs = [CertifiedBounds()(_star(15 + i, seed=i, lam=0.7)) for i in range(3)]
    batch = Batch.from_data_list(graphs)
    fresh = GraphInverseProblem.from_pyg(batch, batch.y[None], mask=batch.mask, lam=0.7)
    ref = (fresh.lipschitz(), fresh.lambda_min_bound(), *fresh.jacobi_interval())
    import unrollsci.graph._spectral as spectral

    def fail(*a, **k):
        raise AssertionError("a spectral bound was recomputed")

    monkeypatch.setattr(spectral, "spectrum_mask", fail)
    monkeypatch.setattr(spectral, "gershgorin_np", fail)
    p = problem_from_data(batch)
    assert p.lam == 0.7
    got = (p.lipschitz(), p.lambda_min_bound(), *p.jacobi_interval())
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b)
    monkeypatch.undo()
    graphs[1].y = graphs[1].y * 3.0
    p = problem_from_data(Batch.from_data_list(graphs))
    torch.testing.assert_close(p.solve_exact(), GraphInverseProblem.from_pyg(
        Batch.from_data_list(graphs), mask=batch.mask, lam=0.7
    ).solve_exact())  # fmt: skip
    with pytest.raises(ValueError, match="one Laplacian kind"):
        problem_from_data(Batch.from_data_list([graphs[0], CertifiedBounds("normalized")(_star())]))


def test_problem_copies_the_callers_y_and_mask():
    A = sp.csr_matrix(nx.to_scipy_sparse_array(nx.path_graph(10)), dtype=float)  # noqa: N806
    y = torch.randn(10, dtype=torch.float64)
    mask = torch.ones(10, dtype=torch.float64)
    p = GraphInverseProblem.from_scipy(A, y, mask=mask, lam=1.0)
    lo, xs = p.lambda_min_bound().item(), p.solve_exact().clone()
    mask[1:] = 0.0
    y.mul_(2.0)
    assert torch.equal(p.mask[0], torch.ones(10, dtype=torch.float64))
    assert torch.equal(p.y[0], y / 2)
    assert p.lambda_min_bound().item() == lo <= _dense_eigs(p)[0]
    assert torch.equal(p.solve_exact(), xs)
    assert p.gradient(xs).abs().max().item() < 1e-10


def test_lam_is_read_only():
    A = sp.csr_matrix(nx.to_scipy_sparse_array(nx.path_graph(10)), dtype=float)  # noqa: N806
    p = GraphInverseProblem.from_scipy(A, torch.randn(10, dtype=torch.float64), lam=1.0)
    p.lipschitz()
    with pytest.raises(AttributeError, match="new problem"):
        p.lam = 100.0
    assert p.lam == 1.0


@pytest.mark.parametrize("mode", ["scalar", "diagonal"])
@pytest.mark.parametrize("dtype,scale", [(torch.float32, 1e10), (torch.float64, 1e100)])
def test_finite_weights_never_give_nan_steps(mode, dtype, scale):
    p = GraphInverseProblem.from_networkx(
        nx.cycle_graph(12), torch.randn(12, dtype=dtype), mask=torch.arange(12) % 2 == 0
    )
    torch.manual_seed(1)
    model = UnrolledGraphGD(3, StepController(hidden=4), mode=mode).to(dtype)
    with torch.no_grad():
        for prm in model.parameters():
            prm.copy_(torch.randn_like(prm) * scale)
    assert all(torch.isfinite(q).all() for q in model.parameters())
    out = model(p)
    xs = p.solve_exact()
    e = [p.energy_norm_sq(x - xs).item() for x in out.iterates]
    assert all(np.isfinite(e)) and all(b <= a * (1 + 1e-6) for a, b in zip(e, e[1:], strict=False))
    # finite logits are mapped as before, bit for bit
    z = torch.tensor([-1e30, -3.0, 0.0, 0.5, 40.0, float("inf"), float("nan")], dtype=dtype)
    c = 1.0 - model.margin - model.floor
    ref = model.floor + c * torch.sigmoid(z[:-1])
    assert torch.equal(model._squash(z)[:-1], ref)
    assert model._squash(z)[-1] == model.floor + c * 0.5


def test_dense_lambda_min_bound_is_a_bound_when_ill_conditioned():
    """A 5-node observed path bridged (1e-6) to an unobserved K10 of weights 1e8:
    eigvalsh's absolute error exceeds lambda_min, 0.95 times it was 4x too large."""
    n_a, n_b = 5, 10
    n = n_a + n_b
    W = np.zeros((n, n))  # noqa: N806
    for i in range(n_a - 1):
        W[i, i + 1] = W[i + 1, i] = 1.0
    W[n_a:, n_a:] = 1e8
    np.fill_diagonal(W, 0.0)
    W[n_a - 1, n_a] = W[n_a, n_a - 1] = 1e-6
    m = torch.tensor(np.r_[np.ones(n_a), np.zeros(n_b)])
    p = GraphInverseProblem.from_scipy(
        sp.csr_matrix(W), torch.ones(n, dtype=torch.float64), mask=m, lam=1.0
    )
    # Rayleigh quotient of the heavy cluster's indicator: lambda_min(H) <= 1e-6 / n_b
    assert 0 <= p.lambda_min_bound().item() <= 1e-6 / n_b
    # a well-conditioned problem keeps 0.95 times the dense eigenvalue exactly
    q = GraphInverseProblem.from_networkx(nx.path_graph(8), torch.ones(8, dtype=torch.float64))
    assert q.lambda_min_bound().item() == max(_dense_eigs(q)[0], 0.0) * 0.95


def test_model_checks_x0():
    p = GraphInverseProblem.from_networkx(nx.path_graph(5), torch.randn(5, dtype=torch.float64))
    model = UnrolledGraphGD(3, StepController(hidden=4)).double()
    x0 = torch.zeros(1, 5, dtype=torch.float64)
    x0[0, 1] = float("nan")
    with pytest.raises(ValueError, match="x0"):
        model(p, x0=x0)
    with pytest.raises(DtypeMismatchError, match="x0"):
        model(p, x0=torch.zeros(1, 5))
    model(p, x0=torch.zeros(1, 5, dtype=torch.float64))


def test_float32_bounds_round_outwards():
    """float32 bounds rounded to nearest could fall 1 ulp on the wrong side (Gershgorin
    binds: 1 + 4 lam with lam = 0.1 rounds down in float32)."""
    G = nx.path_graph(6)  # noqa: N806
    y = torch.randn(6, dtype=torch.float64)
    p64 = GraphInverseProblem.from_networkx(G, y, lam=0.1)
    p32 = GraphInverseProblem.from_networkx(G, y.float(), lam=0.1)
    for method in ("gershgorin", "auto"):
        assert float(p32.lipschitz(method)) >= float(p64.lipschitz(method))
    assert float(p32.gershgorin_rows().max()) >= float(p64.gershgorin_rows().max())
    assert float(p32.lambda_min_bound()) <= float(p64.lambda_min_bound())
    lo32, hi32 = p32.jacobi_interval()
    lo64, hi64 = p64.jacobi_interval()
    assert float(lo32) <= float(lo64) and float(hi32) >= float(hi64)
    assert float(p32.lipschitz("gershgorin")) > float(torch.tensor(1.4, dtype=torch.float32))
