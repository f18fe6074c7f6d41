"""Learned algebraic multigrid: prolongation weights from a GNN, PyAMG as the hierarchy engine.

After Luz, Galun, Maron, Basri and Yavneh, "Learning algebraic multigrid using graph neural
networks" (ICML 2020): the sparsity of the prolongation is fixed by classical smoothed
aggregation and a GNN over the matrix graph predicts its values. Here the finest level's

    P = T - D^{-1} (W o A) T,

with ``T`` PyAMG's tentative prolongation (standard aggregation of the symmetric strength
graph, constant candidate) and ``W`` one learned weight per stored entry of ``A``
(diagonal included). With every ``w_ik = omega / rho(D^{-1} A)`` this is PyAMG's
smoothed-aggregation prolongation (``jacobi_prolongation_smoother``); the GNN's output layer
starts at zero, so an untrained model is that. Each entry ``P_{iJ}`` is ``T_{iJ}`` minus its
own set of weighted terms ``a_ik T_kJ / d_i`` (``k`` in aggregate ``J``), so the weights set
the values of ``P`` on SA's pattern freely.

Two cycles share these values:

* :class:`TwoLevelCycle` (torch, differentiable, used in training): symmetric Gauss-Seidel
  pre- and post-smoothing (forward then backward sweep), and the Galerkin coarse problem
  ``P^T A P`` solved exactly (dense Cholesky), so gradients reach the weights through the
  hierarchy and the unrolled PCG;
* :func:`pyamg_preconditioner` (what ``LearnedPreconditioner("amg").build(A)`` returns): the
  same finest level handed to PyAMG (``MultilevelSolver`` with the learned ``P``,
  ``R = P^T``, Galerkin ``A_c``), whose coarser levels PyAMG builds by smoothed
  aggregation of ``A_c``; the V-cycle then runs in PyAMG's compiled kernels. With two levels
  both cycles are the same operator (tested).

SPD for any weights: with a forward Gauss-Seidel pre-sweep ``S = (D + L)^{-1}`` and its
adjoint as post-sweep, a symmetric two-level cycle is
``B = S_sym + (I - S^T A) P C P^T (I - A S)``: the symmetrized smoother
``S_sym = S + S^T - S^T A S = (D + L)^{-T} D (D + L)^{-1}`` is SPD for every SPD ``A``, and
the coarse term is positive semi-definite for any ``P`` and any SPD coarse solve ``C``
(exact, or a symmetric V-cycle on ``A_c``). A symmetric sweep (forward + backward) is the
composition of two such sweeps, with the same conclusion.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ._amg_rs import pow2_scaled
from ._amg_setup import (  # noqa: F401  (re-exported: the set-up is part of this design)
    EDGE_FEATURES,
    AMGSetup,
    _seeded,
    _tt,
    amg_setup,
    node_features,
)
from ._base import Preconditioner
from ._poly import SymmetricMatvec
from ._sparse import LowerPattern, tri_solve

__all__ = [
    "AMGSetup",
    "ProlongationHead",
    "TwoLevelCycle",
    "amg_setup",
    "prolongation_matrix",
    "prolongation_values",
    "pyamg_preconditioner",
]


def prolongation_values(setup: AMGSetup, weights: torch.Tensor) -> torch.Tensor:
    """The values of ``P`` on the setup's pattern (:meth:`AMGSetup.maps`), float64,
    differentiable in ``weights`` (``(m,)``, one per learned entry: every stored entry of
    ``A`` in CSR order for ``"sa"``, ``P = T - D^{-1} (W o A) T``; every F-row entry of
    ``P`` for ``"rs"``, ``P_ij = w_ij P0_ij``)."""
    s = setup.maps()
    dev = weights.device
    w = weights.to(torch.float64)
    p0 = s.p0.to(dev)
    if s.coarsening == "rs":
        tg = s.target.to(dev)
        return p0.index_put((tg,), p0.index_select(0, tg) * w)
    w = w.index_select(0, s.entry.to(dev))
    upd = torch.zeros_like(p0).index_add(0, s.target.to(dev), w * s.coef.to(dev))
    return p0 - upd


def prolongation_matrix(setup: AMGSetup, weights: Any) -> Any:
    """``P`` as scipy CSR from the weights (numpy or tensor, no gradient): the same
    matrix as :func:`prolongation_values`, by sparse products (no index maps)."""
    import scipy.sparse as sp

    w = weights.detach().cpu().double().numpy() if torch.is_tensor(weights) else weights
    w = np.asarray(w, dtype=np.float64)
    t = setup.t
    if setup.coarsening == "rs":
        data = np.array(t.data, dtype=np.float64)
        tg = setup.target.cpu().numpy()
        data[tg] *= w
        return sp.csr_matrix((data, t.indices, t.indptr), shape=t.shape)
    a = setup.a
    rows = np.repeat(np.arange(a.shape[0]), np.diff(a.indptr))
    wa = sp.csr_matrix((w * a.data / a.diagonal()[rows], a.indices, a.indptr), shape=a.shape)
    p = (t - wa @ t).tocsr()
    p.sort_indices()
    return p


class ProlongationHead(nn.Module):
    """Per stored entry ``(i, k)`` of ``A``: ``w_ik = omega0 exp(tanh(f(h_i, h_k, e_ik)))``,
    ``f`` an MLP on the two node states and the entry's features (output layer at zero, so
    ``w = omega0``: smoothed aggregation)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.row = nn.Linear(hidden, hidden, bias=False)
        self.col = nn.Linear(hidden, hidden, bias=False)
        self.edge = nn.Linear(EDGE_FEATURES, hidden)
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 1))
        self.zero_output()

    def zero_output(self) -> None:
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, h: torch.Tensor, setup: AMGSetup) -> torch.Tensor:
        dev = h.device
        # Feature-major ((hidden, entries)): with a small width, the products and gathers
        # run faster on the CPU this way round; the same function as the Linear layers.
        ht = h.T
        pre = (self.row.weight @ ht).index_select(1, setup.e_row.to(dev))
        pre = pre.add_((self.col.weight @ ht).index_select(1, setup.e_col.to(dev)))
        feats = setup.edge_attr.T.to(device=dev, dtype=h.dtype)
        pre = pre.addmm_(self.edge.weight, feats).add_(self.edge.bias[:, None])
        last = self.out[-1]
        out = torch.addmm(last.bias[:, None], last.weight, self.out[0](pre))
        # a NaN head output (an overflow inside the network at huge but finite weights)
        # reads as 0: the weights stay in (omega0 / e, omega0 e), as for any finite output
        raw = torch.nan_to_num(out.squeeze(0).to(torch.float64), nan=0.0)
        return setup.omega0 * torch.exp(torch.tanh(raw))


def _gs_sweep(low: LowerPattern, v: torch.Tensor, x: torch.Tensor | None, b: torch.Tensor, mv: Any):
    """One symmetric Gauss-Seidel sweep (forward, then backward) on ``A x = b`` from ``x``
    (None: zero); ``low``, ``v``: the pattern and values of ``tril(A)``."""
    x = tri_solve(low, v, b) if x is None else x + tri_solve(low, v, b - mv(x))
    return x + tri_solve(low, v, b - mv(x), transpose=True)


class TwoLevelCycle(Preconditioner):
    """One symmetric two-level V-cycle ``r -> z`` with prolongation values ``p_values``.

    Pre- and post-smoothing: one symmetric Gauss-Seidel sweep each (PyAMG's SA default);
    coarse problem: Galerkin ``P^T A P`` by dense Cholesky. Differentiable in ``p_values``
    and ``r``; SPD for any ``p_values`` that give ``P`` full column rank (module docstring).

    Args:
        setup: :func:`amg_setup` of the matrix.
        p_values: ``(nnz_P,)`` values of ``P`` on ``setup``'s pattern.
        sweeps: symmetric Gauss-Seidel sweeps before and after the coarse correction.
    """

    def __init__(self, setup: AMGSetup, p_values: torch.Tensor, sweeps: int = 1) -> None:
        super().__init__()
        self.sweeps = int(sweeps)
        self.setup = setup = setup.maps()
        self.p_values = p_values
        self.in_shape = self.out_shape = (setup.n,)
        self.cacheable_norm = False
        self._mv_a = SymmetricMatvec(setup.a)
        dev = p_values.device
        p = torch.zeros(setup.n, setup.nc, dtype=p_values.dtype, device=dev)
        p = p.index_put((setup.p_row.to(dev), setup.p_col.to(dev)), p_values, accumulate=True)
        pta = self._mv_a(p.T.contiguous())  # P^T A (A symmetric)
        ac = pta @ p
        ac = 0.5 * (ac + ac.T)
        chol, info = torch.linalg.cholesky_ex(ac)
        if int(info) != 0:
            raise ValueError(
                "The coarse matrix P^T A P is not positive definite (P is rank deficient); "
                "the prolongation weights are degenerate."
            )
        self._chol = chol

    @property
    def nnz(self) -> int:
        """Stored entries of ``P``."""
        return int(self.p_values.numel())

    def prolongation(self) -> Any:
        """``P`` as scipy CSR."""
        import scipy.sparse as sp

        s = self.setup
        v = self.p_values.detach().cpu().double().numpy()
        return sp.csr_matrix((v, s.p_col.cpu().numpy(), s.p_indptr), shape=(s.n, s.nc))

    def _mv(self, r: torch.Tensor) -> torch.Tensor:
        s = self.setup
        dev = r.device
        pv = self.p_values.to(device=dev, dtype=r.dtype)
        prow, pcol = s.p_row.to(dev), s.p_col.to(dev)
        low, lv = s.smoother_factor(dev)
        lv = lv.to(r.dtype)
        x = None
        for _ in range(self.sweeps):
            x = _gs_sweep(low, lv, x, r, self._mv_a)
        res = r - self._mv_a(x)
        # P^T res and P e_c by gather / scatter-add over P's entries (no dense P here)
        rc = res.new_zeros(res.shape[0], s.nc).index_add(1, pcol, res.index_select(1, prow) * pv)
        ec = torch.cholesky_solve(rc.T, self._chol.to(r.dtype)).T
        x = x.index_add(1, prow, ec.index_select(1, pcol) * pv)
        for _ in range(self.sweeps):
            x = _gs_sweep(low, lv, x, r, self._mv_a)
        return x

    _rmv = _mv


def pyamg_preconditioner(
    setup: AMGSetup,
    p_values: Any,
    *,
    max_coarse: int = 10,
    max_levels: int = 10,
    seed: int | None = 0,
    sweeps: int = 1,
) -> Any:
    """The learned finest level handed to PyAMG; returns an
    :class:`~unrollsci.precond.AMGPreconditioner` (one V-cycle per application).

    Level 0: ``A``, the learned ``P`` (``p_values`` on the setup's pattern, or a scipy
    matrix from :func:`prolongation_matrix`), ``R = P^T``; level 1: ``A_c = P^T A P``. If
    ``A_c`` is larger than ``max_coarse``, PyAMG builds the levels below it with the
    setup's coarsening: smoothed aggregation (defaults, the coarse candidates of ``T``,
    ``seed`` for its random set-up) or Ruge-Stuben (defaults). Smoothing: symmetric
    Gauss-Seidel on every level (the default of both; ``sweeps`` sweeps before and after
    the coarse correction on level 0, one below), coarsest: ``pinv``. Every level is
    stored as CSR (PyAMG's SA stores BSR with 1 x 1 blocks, whose products are slower).
    The levels below level 0 are built for ``s A_c`` and level 0 restricts with ``s P^T``
    (``s`` a power of two near ``1 / max|a_ij|``, :func:`._amg_rs.pow2_scaled`): the same
    cycle at any scale of ``A``.

    Raises:
        ValueError: a non-finite ``A_c`` (``P``'s values overflow against ``A``).
    """
    import pyamg
    import scipy.sparse as sp
    from pyamg.multilevel import MultilevelSolver
    from pyamg.relaxation.smoothing import change_smoothers

    from ._classical import AMGPreconditioner

    if sp.issparse(p_values):
        p = sp.csr_matrix(p_values)
    else:
        v = p_values.detach().cpu().double().numpy() if torch.is_tensor(p_values) else p_values
        s = setup.maps()
        p = sp.csr_matrix(
            (np.asarray(v, dtype=np.float64), s.p_col.cpu().numpy(), s.p_indptr),
            shape=(setup.n, setup.nc),
        )
    r = p.T.tocsr()
    a = setup.a
    # The levels below the first are built for s P^T A P, s a power of two near
    # 1 / max|a_ij| (exact: pow2_scaled), and the first level restricts with s P^T, so the
    # cycle is that for A at any scale of A (P^T A P overflowed near float64's maximum)
    a_s, scale = pow2_scaled(a)
    ac = (r @ (a_s @ p)).tocsr()  # Galerkin, as PyAMG forms it (symmetric to round-off)
    ac.sort_indices()
    if not np.isfinite(ac.data).all():
        raise ValueError(
            "Expected a finite coarse matrix P^T A P (got NaN or Inf entries): the "
            "prolongation's values overflow against A."
        )
    top = MultilevelSolver.Level()
    top.A, top.P, top.R, top.B = a, p, r if scale == 1.0 else r * scale, np.ones((setup.n, 1))
    if setup.nc <= max_coarse or max_levels <= 2:
        low = MultilevelSolver.Level()
        low.A, low.B = ac, setup.coarse_b
        levels = [top, low]
    elif setup.coarsening == "rs":
        sub = pyamg.ruge_stuben_solver(ac, max_coarse=max_coarse, max_levels=max_levels - 1)
        levels = [top, *sub.levels]
    else:
        sub = _seeded(
            seed,
            pyamg.smoothed_aggregation_solver,
            ac,
            B=setup.coarse_b,
            max_coarse=max_coarse,
            max_levels=max_levels - 1,
        )
        levels = [top, *sub.levels]
    for lev in levels[1:]:  # PyAMG's SA keeps BSR (1 x 1 blocks) levels: slower cycles
        lev.A = sp.csr_matrix(lev.A)
        if hasattr(lev, "P"):
            lev.P, lev.R = sp.csr_matrix(lev.P), sp.csr_matrix(lev.R)
    ml = MultilevelSolver(levels, coarse_solver="pinv")
    smoother = [
        ("block_gauss_seidel", {"sweep": "symmetric", "iterations": int(sweeps)}),
        ("block_gauss_seidel", {"sweep": "symmetric"}),
    ]
    change_smoothers(ml, smoother, smoother)
    return AMGPreconditioner(ml, setup.n)
