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

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ._base import Preconditioner
from ._poly import SymmetricMatvec
from ._sparse import LowerPattern, lower_pattern, tri_solve

__all__ = ["AMGSetup", "ProlongationHead", "TwoLevelCycle", "amg_setup", "pyamg_preconditioner"]

#: Number of edge features the prolongation head reads.
EDGE_FEATURES = 4


def _seeded(seed: int | None, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` under numpy's global seed (PyAMG's random set-up), restored."""
    if seed is None:
        return fn(*args, **kwargs)
    state = np.random.get_state()
    try:
        np.random.seed(int(seed))
        return fn(*args, **kwargs)
    finally:
        np.random.set_state(state)


@dataclass
class AMGSetup:
    """The non-learned part of a learned-AMG hierarchy for one matrix (built once).

    Attributes:
        a: the matrix (canonical scipy CSR, float64).
        n, nc: fine and coarse sizes.
        p_row, p_col, p_indptr: the pattern of ``P`` (CSR order, row-major).
        p0: ``(nnz_P,)`` the tentative prolongation ``T`` on that pattern.
        target: ``(m,)`` the ``P`` entry each contributing entry of ``A`` updates.
        coef: ``(m,)`` ``a_ik T_k / d_i`` of those entries.
        entry: ``(m,)`` their position among ``A``'s stored entries (CSR order).
        e_row, e_col: ``(nnz_A,)`` row and column of every stored entry of ``A``.
        edge_attr: ``(nnz_A, 4)`` features of every stored entry (the head's input).
        omega0: SA's weight ``omega / rho(D^{-1} A)``, every ``w_ik`` of the untrained model.
        low, low_vals: ``tril(A)`` (the forward Gauss-Seidel factor ``D + L``).
        coarse_b: ``(nc, 1)`` coarse near-nullspace candidates (PyAMG's ``fit_candidates``).
    """

    a: Any
    n: int
    nc: int
    p_row: torch.Tensor
    p_col: torch.Tensor
    p_indptr: np.ndarray
    p0: torch.Tensor
    target: torch.Tensor
    coef: torch.Tensor
    entry: torch.Tensor
    e_row: torch.Tensor
    e_col: torch.Tensor
    edge_attr: torch.Tensor
    omega0: float
    low: LowerPattern
    low_vals: torch.Tensor
    coarse_b: np.ndarray

    def to(self, device: torch.device | str) -> AMGSetup:
        moved = {
            k: (v.to(device) if isinstance(v, (torch.Tensor, LowerPattern)) else v)
            for k, v in vars(self).items()
        }
        return AMGSetup(**moved)


def _lanczos_rho(a: Any, d: np.ndarray, steps: int = 12, seed: int = 0) -> float:
    """Largest eigenvalue of ``D^{-1/2} A D^{-1/2}`` (= ``rho(D^{-1} A)``) by ``steps`` steps
    of Lanczos with full reorthogonalization from a seeded start (the top Ritz value)."""
    n = a.shape[0]
    dis = 1.0 / np.sqrt(d)
    v = np.random.default_rng(seed).standard_normal(n)
    basis = [v / np.linalg.norm(v)]
    alphas, betas = [], []
    for j in range(min(steps, n)):
        w = dis * (a @ (dis * basis[j]))
        alphas.append(float(w @ basis[j]))
        q = np.stack(basis)
        w = w - q.T @ (q @ w)
        beta = float(np.linalg.norm(w))
        if beta <= 1e-12 * abs(alphas[0]) or j == min(steps, n) - 1:
            break
        betas.append(beta)
        basis.append(w / beta)
    t = (
        np.diag(alphas)
        + np.diag(betas[: len(alphas) - 1], 1)
        + np.diag(betas[: len(alphas) - 1], -1)
    )
    return float(np.linalg.eigvalsh(t)[-1])


def amg_setup(
    a: Any, *, omega: float = 4.0 / 3.0, theta: float = 0.0, seed: int = 0, rho: str = "lanczos"
) -> AMGSetup:
    """PyAMG's aggregation of ``a`` (validated canonical CSR) and the index maps of ``P``.

    Strength of connection ``symmetric`` with ``theta``, ``standard`` aggregation and
    ``fit_candidates`` with the constant vector: the defaults of
    ``pyamg.smoothed_aggregation_solver`` (without its candidate improvement, so that
    ``T`` is the aggregates' scaled indicator). ``rho(D^{-1} A)``: ``"pyamg"``, PyAMG's
    ``approximate_spectral_radius`` under ``seed`` (what its SA uses: the untrained ``P``
    is then exactly PyAMG's); ``"lanczos"`` (default), 12 Lanczos steps (a few times
    cheaper, and within a fraction of a percent on the benchmark families).
    """
    if rho not in ("lanczos", "pyamg"):
        raise ValueError(f"Expected rho 'lanczos' or 'pyamg' (got {rho!r}).")
    import scipy.sparse as sp
    from pyamg.aggregation import fit_candidates, standard_aggregation
    from pyamg.strength import symmetric_strength_of_connection
    from pyamg.util.linalg import approximate_spectral_radius

    n = a.shape[0]
    c = symmetric_strength_of_connection(a, theta)
    agg_op = standard_aggregation(c)[0]
    t, coarse_b = fit_candidates(agg_op, np.ones((n, 1)))
    nc = t.shape[1]
    tc = t.tocoo()
    agg = np.full(n, -1, dtype=np.int64)
    tv = np.zeros(n)
    agg[tc.row] = tc.col
    tv[tc.row] = tc.data
    d = a.diagonal()
    rows = np.repeat(np.arange(n), np.diff(a.indptr))
    cols = a.indices.astype(np.int64)
    vals = np.asarray(a.data, dtype=np.float64)
    if rho == "pyamg":
        scaled = sp.csr_matrix((vals / d[rows], a.indices, a.indptr), shape=a.shape)
        rho_value = float(_seeded(seed, approximate_spectral_radius, scaled))
    else:
        rho_value = _lanczos_rho(a, d, seed=seed)
    contrib = np.flatnonzero(agg[cols] >= 0)
    key_c = rows[contrib] * nc + agg[cols[contrib]]
    own = np.flatnonzero(agg >= 0)
    key_t = own * nc + agg[own]
    # unique keys (row-major P pattern) and each key's position, by one stable sort (the
    # keys come nearly sorted by row; faster than np.unique's hash here)
    allk = np.concatenate([key_c, key_t])
    order = np.argsort(allk, kind="stable")
    srt = allk[order]
    new = np.empty(srt.size, dtype=bool)
    new[:1] = True
    new[1:] = srt[1:] != srt[:-1]
    keys = srt[new]
    pos = np.empty(allk.size, dtype=np.int64)
    pos[order] = np.cumsum(new) - 1
    p_row, p_col = keys // nc, keys % nc
    p0 = np.zeros(keys.size)
    p0[pos[key_c.size :]] = tv[own]
    target = pos[: key_c.size]
    coef = vals[contrib] * tv[cols[contrib]] / d[rows[contrib]]
    p_indptr = np.concatenate([[0], np.cumsum(np.bincount(p_row, minlength=n))])
    dis = 1.0 / np.sqrt(d)
    edge_attr = np.stack(
        [
            vals * dis[rows] * dis[cols],
            (rows == cols).astype(np.float64),
            ((agg[rows] == agg[cols]) & (agg[rows] >= 0)).astype(np.float64),
            np.where(tv[rows] > 0, vals * tv[cols] / (d[rows] * np.maximum(tv[rows], 1e-300)), 0),
        ],
        1,
    )
    low, low_vals = lower_pattern(a)

    def tt(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x))

    return AMGSetup(
        a=a,
        n=n,
        nc=nc,
        p_row=tt(p_row.astype(np.int64)),
        p_col=tt(p_col.astype(np.int64)),
        p_indptr=p_indptr.astype(np.int64),
        p0=tt(p0),
        target=tt(target.astype(np.int64)),
        coef=tt(coef),
        entry=tt(contrib.astype(np.int64)),
        e_row=tt(rows.astype(np.int64)),
        e_col=tt(cols),
        edge_attr=tt(edge_attr.astype(np.float32)),
        omega0=float(omega / rho_value),
        low=low,
        low_vals=tt(low_vals),
        coarse_b=coarse_b,
    )


def prolongation_values(setup: AMGSetup, weights: torch.Tensor) -> torch.Tensor:
    """``P = T - D^{-1} (W o A) T`` on the setup's pattern; ``weights``: ``(nnz_A,)``, one per
    stored entry of ``A`` in CSR order (differentiable). float64."""
    w = weights.to(torch.float64).index_select(0, setup.entry.to(weights.device))
    upd = torch.zeros_like(setup.p0, device=weights.device).index_add(
        0, setup.target.to(weights.device), w * setup.coef.to(weights.device)
    )
    return setup.p0.to(weights.device) - upd


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
        pre = self.row(h).index_select(0, setup.e_row.to(dev))
        pre = pre + self.col(h).index_select(0, setup.e_col.to(dev))
        pre = pre + self.edge(setup.edge_attr.to(device=dev, dtype=h.dtype))
        out = self.out(pre).squeeze(-1).to(torch.float64)
        return setup.omega0 * torch.exp(torch.tanh(out))


def _gs_sweep(setup: AMGSetup, v: torch.Tensor, x: torch.Tensor | None, b: torch.Tensor, mv: Any):
    """One symmetric Gauss-Seidel sweep (forward, then backward) on ``A x = b`` from ``x``
    (None: zero)."""
    vals = v
    x = tri_solve(setup.low, vals, b) if x is None else x + tri_solve(setup.low, vals, b - mv(x))
    return x + tri_solve(setup.low, vals, b - mv(x), transpose=True)


class TwoLevelCycle(Preconditioner):
    """One symmetric two-level V-cycle ``r -> z`` with prolongation values ``p_values``.

    Pre- and post-smoothing: one symmetric Gauss-Seidel sweep each (PyAMG's SA default);
    coarse problem: Galerkin ``P^T A P`` by dense Cholesky. Differentiable in ``p_values``
    and ``r``; SPD for any ``p_values`` that give ``P`` full column rank (module docstring).

    Args:
        setup: :func:`amg_setup` of the matrix.
        p_values: ``(nnz_P,)`` values of ``P`` on ``setup``'s pattern.
    """

    def __init__(self, setup: AMGSetup, p_values: torch.Tensor) -> None:
        super().__init__()
        self.setup = setup
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
        lv = s.low_vals.to(device=dev, dtype=r.dtype)
        x = _gs_sweep(s, lv, None, r, self._mv_a)
        res = r - self._mv_a(x)
        # P^T res and P e_c by gather / scatter-add over P's entries (no dense P here)
        rc = res.new_zeros(res.shape[0], s.nc).index_add(1, pcol, res.index_select(1, prow) * pv)
        ec = torch.cholesky_solve(rc.T, self._chol.to(r.dtype)).T
        x = x.index_add(1, prow, ec.index_select(1, pcol) * pv)
        return _gs_sweep(s, lv, x, r, self._mv_a)

    _rmv = _mv


def pyamg_preconditioner(
    setup: AMGSetup,
    p_values: Any,
    *,
    max_coarse: int = 10,
    max_levels: int = 10,
    seed: int | None = 0,
) -> Any:
    """The learned finest level handed to PyAMG; returns an
    :class:`~unrollsci.precond.AMGPreconditioner` (one V-cycle per application).

    Level 0: ``A``, the learned ``P``, ``R = P^T``; level 1: ``A_c = P^T A P``. If
    ``A_c`` is larger than ``max_coarse``, PyAMG's smoothed aggregation (defaults, the
    coarse candidates of ``T``, ``seed`` for its random set-up) builds the levels below it.
    Smoothing: symmetric Gauss-Seidel on every level (PyAMG's default), coarsest: ``pinv``.
    """
    import pyamg
    import scipy.sparse as sp
    from pyamg.multilevel import MultilevelSolver
    from pyamg.relaxation.smoothing import change_smoothers

    from ._classical import AMGPreconditioner

    v = p_values.detach().cpu().double().numpy() if torch.is_tensor(p_values) else p_values
    p = sp.csr_matrix(
        (np.asarray(v, dtype=np.float64), setup.p_col.cpu().numpy(), setup.p_indptr),
        shape=(setup.n, setup.nc),
    )
    r = p.T.tocsr()
    a = setup.a
    ac = (r @ (a @ p)).tocsr()
    ac = ((ac + ac.T) * 0.5).tocsr()
    ac.sort_indices()
    top = MultilevelSolver.Level()
    top.A, top.P, top.R, top.B = a, p, r, np.ones((setup.n, 1))
    if setup.nc <= max_coarse or max_levels <= 2:
        low = MultilevelSolver.Level()
        low.A, low.B = ac, setup.coarse_b
        levels = [top, low]
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
    ml = MultilevelSolver(levels, coarse_solver="pinv")
    smoother = ("block_gauss_seidel", {"sweep": "symmetric"})
    change_smoothers(ml, smoother, smoother)
    return AMGPreconditioner(ml, setup.n)
