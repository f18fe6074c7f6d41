"""The non-learned part of a learned-AMG level: :class:`AMGSetup` and :func:`amg_setup`.

Smoothed aggregation's set-up (PyAMG's strength, aggregation and tentative prolongation),
the features the prolongation head reads, and the index maps that make ``P`` a
differentiable function of the learned weights (built on first use: only training needs
them). The design is described in :mod:`unrollsci.precond._amg`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._sparse import LowerPattern, lower_pattern

__all__ = ["EDGE_FEATURES", "AMGSetup", "amg_setup", "clip_f32", "node_features"]

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

    What :meth:`LearnedPreconditioner.build` needs is built at once; the index maps that
    make ``P`` a differentiable function of the weights (training only) are built on first
    use by :meth:`maps`, and ``tril(A)`` (the torch cycle's smoother) by
    :meth:`smoother_factor`.

    Attributes:
        a: the matrix (canonical scipy CSR, float64).
        n, nc: fine and coarse sizes.
        t: the base prolongation (scipy CSR): SA's tentative ``T`` (``"sa"``), or RS's
            classical interpolation, whose values the weights rescale (``"rs"``).
        e_row, e_col: ``(m,)`` the (fine) row and column of every learned weight: every
            stored entry of ``A`` (``"sa"``) or every F-row entry of ``P`` (``"rs"``).
        edge_attr: ``(m, 4)`` their features (the head's input; a transposed view of a
            feature-major ``(4, m)`` float32 array).
        x: ``(n, 5)`` node features (those of :class:`MatrixGraph`, float32).
        omega0: SA's weight ``omega / rho(D^{-1} A)``, every ``w_ik`` of the untrained model
            (``"rs"``: 1, the weights are factors on RS's values).
        coarse_b: ``(nc, 1)`` coarse near-nullspace candidates (PyAMG's ``fit_candidates``).
        coarsening: ``"sa"`` or ``"rs"`` (:mod:`._amg_rs`).
        p_row, p_col, p_indptr, p0, target, coef, entry: index maps (:meth:`maps`).
        low, low_vals: ``tril(A)`` (:meth:`smoother_factor`).
    """

    a: Any
    n: int
    nc: int
    t: Any
    e_row: torch.Tensor
    e_col: torch.Tensor
    edge_attr: torch.Tensor
    x: torch.Tensor
    omega0: float
    coarse_b: np.ndarray
    coarsening: str = "sa"
    p_row: torch.Tensor | None = None
    p_col: torch.Tensor | None = None
    p_indptr: np.ndarray | None = None
    p0: torch.Tensor | None = None
    target: torch.Tensor | None = None
    coef: torch.Tensor | None = None
    entry: torch.Tensor | None = None
    low: LowerPattern | None = None
    low_vals: torch.Tensor | None = None

    @torch.inference_mode(False)  # index maps are constants: never inference tensors
    def to(self, device: torch.device | str) -> AMGSetup:
        moved = {
            k: (v.to(device) if isinstance(v, (torch.Tensor, LowerPattern)) else v)
            for k, v in vars(self).items()
        }
        return AMGSetup(**moved)

    @torch.inference_mode(False)
    def maps(self) -> AMGSetup:
        """Fill the index maps of ``P`` (on ``e_row``'s device) if missing; returns self.

        ``p_row``, ``p_col``, ``p_indptr``: the pattern of ``P`` (CSR order); ``p0``: the
        base values on it. ``"sa"``: ``P = p0 - scatter(target, w[entry] * coef)`` (the
        terms ``a_ik T_kJ / d_i``); ``"rs"``: ``P[target] = p0[target] * w``.
        """
        if self.p0 is None:
            maps = _sa_maps(self) if self.coarsening == "sa" else _rs_maps(self)
            dev = self.e_row.device
            for k, v in maps.items():
                setattr(self, k, v.to(dev) if isinstance(v, torch.Tensor) else v)
        return self

    @torch.inference_mode(False)
    def smoother_factor(self, device: torch.device | str) -> tuple[LowerPattern, torch.Tensor]:
        """``tril(A)`` (pattern, values) on ``device``, built on first use and kept."""
        if self.low is None or self.low_vals is None:
            low, vals = lower_pattern(self.a)
            self.low, self.low_vals = low, torch.from_numpy(vals)
        if self.low_vals.device != torch.device(device):
            self.low, self.low_vals = self.low.to(device), self.low_vals.to(device)
        return self.low, self.low_vals


def _tt(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


def clip_f32(v: np.ndarray) -> np.ndarray:
    """``v`` clipped to float32's finite range, for a float64 feature about to be cast to
    float32: a value beyond about 3.4e38 (possible on a badly row-scaled matrix) becomes
    the largest finite float32 of its sign, not an overflow to +-inf (with numpy's
    RuntimeWarning); every value inside the range is left as it is."""
    big = float(np.finfo(np.float32).max)
    return np.clip(v, -big, big)


def node_features(a: Any, d: np.ndarray) -> torch.Tensor:
    """``(n, 5)`` float32 node features of canonical CSR ``a`` (``d``: its diagonal, every
    one stored), the same as
    :class:`MatrixGraph`'s for the identity base: row sums of ``S = D^{-1/2} A D^{-1/2}``,
    sums of ``|S_ij|`` (``j != i``), the number of off-diagonal entries / 8, 1, and the mean
    of ``tanh((log d_j - log d_i) / 2) = (d_j - d_i) / (d_j + d_i)`` over them."""
    import scipy.sparse as sp

    n = a.shape[0]
    dis = 1.0 / np.sqrt(d)

    def rowsum(data: np.ndarray, v: np.ndarray) -> np.ndarray:
        return sp.csr_matrix((data, a.indices, a.indptr), shape=a.shape) @ v

    deg = np.diff(a.indptr) - 1.0
    x = np.empty((5, n), dtype=np.float32)
    x[0] = dis * (a @ dis)
    x[1] = dis * rowsum(np.abs(a.data), dis) - 1.0
    x[2] = deg / 8.0
    x[3] = 1.0
    # (d_j - d_i) / (d_j + d_i) per stored entry: formed in float64 from d / 2 (the ratio is
    # scale-free, and no d of a float64 matrix overflows or underflows here, as it would
    # in float32 for |d| beyond about 3e38 or below 1e-38), then cast to the features' float32
    half = 0.5 * np.asarray(d, dtype=np.float64)
    den = np.repeat(half, np.diff(a.indptr))  # d_i / 2 of every entry of row i
    num = half[a.indices]
    num -= den  # (d_j - d_i) / 2
    den *= 2.0
    den += num  # (d_j + d_i) / 2
    num /= den
    x[4] = rowsum(num.astype(np.float32), np.ones(n, dtype=np.float32)) / np.maximum(deg, 1)
    return torch.from_numpy(x).T


def _pattern_positions(n: int, nc: int, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique keys ``row * nc + col`` (sorted: the row-major pattern) and the position of
    each key among them, by one stable sort (the keys come nearly sorted by row)."""
    order = np.argsort(key, kind="stable")
    srt = key[order]
    new = np.empty(srt.size, dtype=bool)
    new[:1] = True
    new[1:] = srt[1:] != srt[:-1]
    pos = np.empty(key.size, dtype=np.int64)
    pos[order] = np.cumsum(new) - 1
    return srt[new], pos


def _sa_maps(s: AMGSetup) -> dict[str, Any]:
    a, n, nc = s.a, s.n, s.nc
    tc = s.t.tocoo()
    agg = np.full(n, -1, dtype=np.int64)
    tv = np.zeros(n)
    agg[tc.row] = tc.col
    tv[tc.row] = tc.data
    rows = s.e_row.cpu().numpy()
    cols = s.e_col.cpu().numpy()
    d = a.diagonal()
    contrib = np.flatnonzero(agg[cols] >= 0)
    key_c = rows[contrib] * nc + agg[cols[contrib]]
    own = np.flatnonzero(agg >= 0)
    keys, pos = _pattern_positions(n, nc, np.concatenate([key_c, own * nc + agg[own]]))
    p_row, p_col = keys // nc, keys % nc
    p0 = np.zeros(keys.size)
    p0[pos[key_c.size :]] = tv[own]
    coef = a.data[contrib] * tv[cols[contrib]] / d[rows[contrib]]
    return {
        "p_row": _tt(p_row),
        "p_col": _tt(p_col),
        "p_indptr": np.concatenate([[0], np.cumsum(np.bincount(p_row, minlength=n))]),
        "p0": _tt(p0),
        "target": _tt(pos[: key_c.size]),
        "coef": _tt(coef),
        "entry": _tt(contrib.astype(np.int64)),
    }


def _rs_maps(s: AMGSetup) -> dict[str, Any]:
    # "target" (the F-row entries of P, the learned ones) is set by rs_setup
    t = s.t
    return {
        "p_row": _tt(np.repeat(np.arange(s.n), np.diff(t.indptr))),
        "p_col": _tt(t.indices.astype(np.int64)),
        "p_indptr": t.indptr.astype(np.int64),
        "p0": _tt(np.asarray(t.data, dtype=np.float64)),
    }


def _lanczos_rho(a: Any, d: np.ndarray, steps: int = 12, seed: int = 0) -> float:
    """Largest eigenvalue of ``D^{-1/2} A D^{-1/2}`` (= ``rho(D^{-1} A)``) by ``steps`` steps
    of Lanczos with full reorthogonalization from a seeded start (the top Ritz value)."""
    n = a.shape[0]
    k = min(steps, n)
    dis = 1.0 / np.sqrt(d)
    basis = np.empty((k, n))
    v = np.random.default_rng(seed).standard_normal(n)
    basis[0] = v / np.linalg.norm(v)
    alphas, betas = [], []
    for j in range(k):
        w = dis * (a @ (dis * basis[j]))
        alphas.append(float(w @ basis[j]))
        q = basis[: j + 1]
        w -= q.T @ (q @ w)
        beta = float(np.linalg.norm(w))
        if beta <= 1e-12 * abs(alphas[0]) or j == k - 1:
            break
        betas.append(beta)
        basis[j + 1] = w / beta
    t = (
        np.diag(alphas)
        + np.diag(betas[: len(alphas) - 1], 1)
        + np.diag(betas[: len(alphas) - 1], -1)
    )
    return float(np.linalg.eigvalsh(t)[-1])


@torch.inference_mode(False)  # built under a caller's inference mode, usable in autograd
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
    t = sp.csr_matrix(t)
    used = np.unique(t.indices)
    if used.size < t.shape[1]:
        # an empty aggregate: PyAMG's T for a matrix without any aggregate (no off-diagonal
        # strong couplings, e.g. a diagonal one) is one zero column, which would make
        # P^T A P singular; dropped, so that nc = 0 there (as Ruge-Stuben's all-F splitting)
        t = sp.csr_matrix(t[:, used])
        coarse_b = coarse_b[used]
    nc = t.shape[1]
    counts = np.diff(t.indptr)
    agg = np.full(n, -1, dtype=np.int64)
    tv = np.zeros(n)
    has = counts > 0  # at most one entry per row (standard aggregation)
    agg[has] = t.indices
    tv[has] = t.data
    d = a.diagonal()
    rows = np.repeat(np.arange(n), np.diff(a.indptr))
    cols = a.indices.astype(np.int64)
    vals = np.asarray(a.data, dtype=np.float64)
    if rho == "pyamg":
        scaled = sp.csr_matrix((vals / d[rows], a.indices, a.indptr), shape=a.shape)
        rho_value = float(_seeded(seed, approximate_spectral_radius, scaled))
    else:
        rho_value = _lanczos_rho(a, d, seed=seed)
    dis = 1.0 / np.sqrt(d)
    # feature-major (4, nnz_A) float32: the head reads it that way round
    edge_attr = np.empty((EDGE_FEATURES, rows.size), dtype=np.float32)
    edge_attr[0] = vals * dis[rows] * dis[cols]
    edge_attr[1] = rows == cols
    agg_r = agg[rows]
    edge_attr[2] = (agg_r == agg[cols]) & (agg_r >= 0)
    # a_ik T_k / (d_i T_i) (0 where i is in no aggregate) is unbounded (e.g. neighbouring
    # rows of very different scales): clipped to float32's range before the cast
    ratio = np.zeros(rows.size)
    on = np.flatnonzero(tv[rows] > 0)
    ri, ci = rows[on], cols[on]
    with np.errstate(over="ignore"):
        ratio[on] = vals[on] * tv[ci] / (d[ri] * tv[ri])
    edge_attr[3] = clip_f32(ratio)
    return AMGSetup(
        a=a,
        n=n,
        nc=nc,
        t=t,
        e_row=_tt(rows),
        e_col=_tt(cols),
        edge_attr=torch.from_numpy(edge_attr).T,
        x=node_features(a, d),
        omega0=float(omega / rho_value),
        coarse_b=coarse_b,
    )
