"""The QEq hardness matrix ``A(R)``: its pieces, the operator ``q -> A q``, its dense form
and the polarization-catastrophe check (``A`` positive definite on ``sum(q) = 0``)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._geometry import (  # MIN_DISTANCE: pairs closer (Angstrom) are overlapping atoms
    MIN_DISTANCE,
    csr_pattern,
    ewald_kvectors,
    half_pairs,
    pair_kernel,
    shielded_pair_constant,
    shielded_tapered,
)
from ._ksum import KSUM_MIN_ELEMENTS, KSumReciprocal, kspace_factors
from ._pme import PMEReciprocal

__all__ = [
    "MIN_DISTANCE",
    "HardnessTerms",
    "PolarizationCatastropheError",
    "hardness_terms",
]


class PolarizationCatastropheError(ValueError):
    """The hardness matrix is not positive definite on the charge-constraint subspace."""


# --------------------------------------------------------------------------- operator


class _Hardness:
    """q -> A q with A = diag(diag0) + pair part (half list i, j, w) + Ewald reciprocal part
    (explicit k-vectors ``kc, ks, kf``, or ``recip``: a :class:`._pme.PMEReciprocal`).

        With ``csr_min_pairs`` given and at least that many pairs, the pair part is applied as
        two CSR products (for the no-grad matvec of the solve; not differentiable).
    """

    def __init__(
        self,
        i,
        j,
        w,
        diag0,
        kc=None,
        ks=None,
        kf=None,
        csr_min_pairs=None,
        pattern=None,
        recip=None,
    ):
        self.i, self.j, self.w, self.diag0 = i, j, w, diag0
        self.kc, self.ks, self.kf = kc, ks, kf
        self.recip = recip
        self.csr = self.dense = None
        n = diag0.shape[0]
        if pattern is not None and n * n <= 8 * w.numel():
            # small and crowded: a dense matrix (one scatter) beats any sparse product
            a = torch.diag(diag0)
            a.index_put_((i, j), w, accumulate=True)
            a.index_put_((j, i), w, accumulate=True)
            self.dense = a
        elif pattern is not None:
            # the CSR index arrays of a kept pair list (_verlet.csr_pattern): values only
            crow_u, col_u, crow_l, col_l, order = pattern
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                upper = torch.sparse_csr_tensor(crow_u, col_u, w, (n, n))
                lower = torch.sparse_csr_tensor(crow_l, col_l, w.index_select(0, order), (n, n))
            self.csr = (upper, lower)
        elif csr_min_pairs is not None and w.numel() >= csr_min_pairs:
            # A = diag + U + U^T with U the half list as CSR; int32 indices halve the index
            # traffic of this memory-bound product
            crow_u, col_u, crow_l, col_l, order = csr_pattern(i, j, n)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                upper = torch.sparse_csr_tensor(crow_u, col_u, w, (n, n))
                lower = torch.sparse_csr_tensor(crow_l, col_l, w.index_select(0, order), (n, n))
            self.csr = (upper, lower)

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        if self.dense is not None:
            out = self.dense @ q
        elif self.csr is not None:
            up, lo = self.csr
            out = self.diag0 * q + torch.mv(up, q) + torch.mv(lo, q)
        else:
            out = self.diag0 * q
            out = out.index_add(0, self.i, self.w * q.index_select(0, self.j))
            out = out.index_add(0, self.j, self.w * q.index_select(0, self.i))
        if self.kf is not None:
            out = out + self.kc @ (self.kf * (q @ self.kc)) + self.ks @ (self.kf * (q @ self.ks))
        if self.recip is not None:
            out = out + self.recip(q)
        return out

    @property
    def long_range(self) -> bool:
        """Whether a reciprocal-space (Ewald) part is applied."""
        return self.kf is not None or self.recip is not None

    def diagonal(self) -> torch.Tensor:
        d = self.diag0
        self_img = self.i == self.j
        if bool(self_img.any()):
            d = d.index_add(0, self.i[self_img], 2.0 * self.w[self_img])
        if self.kf is not None:
            d = d + (self.kc**2 + self.ks**2) @ self.kf
        if self.recip is not None:
            d = d + self.recip.diagonal()
        return d


@dataclass(frozen=True)
class HardnessTerms:
    """The pieces of ``A(R)`` for one structure (differentiable where marked).

    Attributes:
        i, j: half pair list (P,) (an atom with its own periodic image: ``i == j``).
        r: pair distances (P,), differentiable in positions and cell.
        w: pair entries ``k_e J_ij(r)`` times the taper (P,), differentiable.
        diag0: diagonal (eta, Gaussian self-energy, Ewald self term) (N,), differentiable.
        base: the hardness part of the diagonal (no Ewald self term), detached: the floor
            of the Jacobi preconditioner.
        kc, ks, kf: Ewald reciprocal part ``kc diag(kf) kc^T + ks diag(kf) ks^T`` (or None).
        e_const: constant energy (Ewald neutralizing background; 0 without Ewald).
        pme: the reciprocal part as an operator instead of ``kc, ks, kf``, differentiable
            in positions and cell: P3M (a :class:`._pme.PMEReciprocal`), or the explicit
            sum in its separable form for large systems (a :class:`._ksum.KSumReciprocal`,
            from :data:`._ksum.KSUM_MIN_ELEMENTS` basis entries on); or None.
    """

    i: torch.Tensor
    j: torch.Tensor
    r: torch.Tensor
    w: torch.Tensor
    diag0: torch.Tensor
    base: torch.Tensor
    kc: torch.Tensor | None
    ks: torch.Tensor | None
    kf: torch.Tensor | None
    e_const: Any
    pme: Any = None

    @property
    def ewald(self) -> bool:
        return self.kf is not None or self.pme is not None

    def operator(
        self,
        *,
        detach: bool = False,
        csr_min_pairs: int | None = None,
        pattern: tuple[torch.Tensor, ...] | None = None,
    ) -> _Hardness:
        """``q -> A q`` (``detach``: on detached copies of the differentiable pieces;
        ``pattern``: CSR index arrays of the pair list, for the no-grad products)."""
        ts = (self.w, self.diag0, self.kc, self.ks, self.kf)
        if detach:
            ts = tuple(t.detach() if t is not None else None for t in ts)
        w, diag0, kc, ks, kf = ts
        recip = None
        if self.pme is not None:
            recip = self.pme.detached() if detach else self.pme
        return _Hardness(
            self.i,
            self.j,
            w,
            diag0,
            kc,
            ks,
            kf,
            csr_min_pairs=csr_min_pairs,
            pattern=pattern,
            recip=recip,
        )


def hardness_terms(
    positions: torch.Tensor,
    cell: torch.Tensor | None,
    cell_np: np.ndarray,
    pbc: np.ndarray,
    symbols: list[str],
    table: dict[str, torch.Tensor],
    *,
    kernel: str,
    cutoff: float | None,
    coulomb_constant: float,
    ewald: tuple[float, float] | None,
    total_charge: float,
    pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None,
    pair_cache: dict[str, Any] | None = None,
    ewald_method: str = "ewald",
    accuracy: float = 1e-8,
) -> HardnessTerms:
    """Pairs within ``cutoff``, kernel values and (``ewald=(alpha, kmax)``) the Ewald terms,
    the reciprocal part by explicit k-vectors (``ewald_method="ewald"``) or P3M (``"pme"``,
    its mesh set by the Ewald ``accuracy``).

    ``pairs``: a kept half list ``(i, j, shifts)`` (tensors on the device; ``shifts`` (P, 3)
    in the positions' dtype or None) that contains every pair within ``cutoff``, possibly
    more (a Verlet list): the pairs beyond ``cutoff`` get a zero value. None: the pairs
    are found here. ``pair_cache``: a dict that lives as long as ``pairs`` (per-pair
    constants are kept there). Raises ``ValueError`` for atoms closer than :data:`MIN_DISTANCE`.
    """
    dtype, device = positions.dtype, positions.device
    k_e = float(coulomb_constant)
    alpha = None if ewald is None else ewald[0]
    if pairs is None:
        pos_np = positions.detach().cpu().numpy().astype(np.float64)
        pi, pj, ps = half_pairs(pos_np, cell_np, pbc, cutoff)
        i = torch.from_numpy(pi).to(device)
        j = torch.from_numpy(pj).to(device)
        shifts = torch.from_numpy(ps).to(device=device, dtype=dtype) if ps.any() else None
    else:
        i, j, shifts = pairs
    # in the positions' dtype: every term (the background's volume too) is computed in it
    cell_t = cell.to(dtype) if cell is not None else torch.zeros(3, 3, dtype=dtype, device=device)
    # index_select: its backward is index_add, cheaper than advanced indexing's
    # in place (autograd allows it here): fewer temporaries of (P, 3) values
    vec = positions.index_select(0, j)
    vec -= positions.index_select(0, i)
    if shifts is not None:
        vec.addmm_(shifts, cell_t)
    r = torch.linalg.vector_norm(vec, dim=-1)
    if r.numel():
        rmin, at = torch.min(r.detach(), 0)
        if float(rmin) < MIN_DISTANCE:
            a, b = int(i[int(at)]), int(j[int(at)])
            raise ValueError(
                f"Overlapping atoms: atoms {a} ({symbols[a]}) and {b} ({symbols[b]}) are "
                f"{float(rmin):.3g} Angstrom apart (< {MIN_DISTANCE}). Check the positions."
            )
    shape = table["sigma"] if kernel == "gaussian" else table["gamma"]
    if kernel == "shielded" and alpha is None and cutoff is not None and not shape.requires_grad:
        # shielded kernel, fixed gamma: the per-pair constant (kept with a kept list) and
        # an analytic dw/dr instead of the graph of the pow and taper operations
        w = shielded_tapered(r, shielded_pair_constant(shape, i, j, pair_cache), cutoff, k_e)
    else:
        w = k_e * pair_kernel(kernel, r, shape[i], shape[j], cutoff, alpha)
        if pairs is not None and cutoff is not None:
            w = torch.where(r < cutoff, w, torch.zeros((), dtype=dtype, device=device))
    diag0 = table["eta"]
    if kernel == "gaussian":  # Gaussian self-energy k_e * lim_{r->0} J_ii(r)
        diag0 = diag0 + k_e * math.sqrt(2.0 / math.pi) / table["sigma"]
    base = diag0.detach()
    kc = ks = kf = pme = None
    e_const = positions.new_zeros(())
    if ewald is not None:
        alpha, kmax = ewald
        diag0 = diag0 - k_e * 2.0 * alpha / math.sqrt(math.pi)
        vol = torch.linalg.det(cell_t).abs()
        # neutralizing background
        e_const = -k_e * math.pi * total_charge**2 / (2.0 * vol * alpha**2)
    if ewald is not None and ewald_method == "pme":
        pme = PMEReciprocal(positions, cell_t, alpha, kmax, k_e, accuracy)
    elif ewald is not None:
        m_np = ewald_kvectors(cell_np, kmax)
        if positions.shape[0] * len(m_np) >= KSUM_MIN_ELEMENTS:  # no N x K basis stored
            pme = KSumReciprocal(positions, cell_t, alpha, kmax, k_e, _m=m_np)
        else:
            m = torch.from_numpy(m_np).to(device=device, dtype=dtype)
            kf = kspace_factors(cell_t, m, alpha, k_e)
            phase = positions @ (m @ (2.0 * math.pi * torch.linalg.inv(cell_t).T)).T
            kc, ks = torch.cos(phase), torch.sin(phase)
    return HardnessTerms(i, j, r, w, diag0, base, kc, ks, kf, e_const, pme)


# --------------------------------------------------------------------------- definiteness


def _dense_hardness(op: _Hardness, reciprocal: bool = True) -> torch.Tensor:
    """The matrix that ``op`` applies, as a dense float64 (N, N) tensor (no autograd);
    ``reciprocal=False``: without the Ewald reciprocal-space part."""
    f64 = torch.float64
    with torch.no_grad():
        a = torch.diag(op.diag0.detach().to(f64))
        w = op.w.detach().to(f64)
        # a self-image pair (i == j) lands twice on the diagonal, as in the matvec
        a.index_put_((op.i, op.j), w, accumulate=True)
        a.index_put_((op.j, op.i), w, accumulate=True)
        if reciprocal and op.kf is not None:
            kf = op.kf.detach().to(f64)
            for basis in (op.kc, op.ks):
                b = basis.detach().to(f64)
                a.addmm_(b * kf, b.T)
            a = 0.5 * (a + a.T)
        if reciprocal and op.recip is not None:
            a = a + op.recip.dense().to(f64)
    return a


#: the Householder basis serves while ``max|A_ii| <= SPREAD_MAX * min|A_ii|``: its rounding
#: then stays within this factor of the ordered basis' (see :class:`ConstraintBasis`)
SPREAD_MAX = 1e3


class ConstraintBasis:
    """An orthonormal basis ``Z`` (N, N-1) of ``{q : sum(q) = 0}`` chosen for the dense
    matrix ``a``: ``Z^T A Z`` has the eigenvalues of A restricted to the subspace.

    * Columns 2..N of the Householder reflector ``H = I - beta v v^T``, ``v = 1 + sqrt(N)
      e_1`` (first column ``-1 / sqrt(N)``), while the diagonal's spread is at most
      :data:`SPREAD_MAX`. With ``w = beta A v - (beta^2 / 2) (v^T A v) v``, ``H A H = A -
      v w^T - w v^T`` and ``v_k = 1`` for k >= 2, so the trailing block costs O(N^2).
    * Otherwise the Helmert basis over the atoms by increasing ``A_ii``: column k is
      ``(e_1 + ... + e_k - k e_{k+1}) / sqrt(k (k + 1))`` (cumulative sums, O(N^2)). A
      column holds only atoms no harder than its last one, so the rounding of an entry of
      ``Z^T A Z`` is at the scale of the smaller of its two diagonal entries. The
      Householder columns hold every atom: with one element's eta 1e16 times the others'
      their rounding hides the sign of the soft atoms' eigenvalues.
    """

    def __init__(self, a: torch.Tensor) -> None:
        n = a.shape[0]
        d = torch.diagonal(a)
        spread = d.abs().max() <= SPREAD_MAX * d.abs().min()
        #: the atoms in the Helmert order, or None (Householder)
        self.order = None if bool(spread) else torch.argsort(d, stable=True)
        s = math.sqrt(n)
        self._beta = 1.0 / (s * (s + 1.0))  # 2 / ||v||^2
        self._v = torch.ones(n, dtype=a.dtype, device=a.device)
        self._v[0] += s
        k = torch.arange(1, n, dtype=a.dtype, device=a.device)
        self._k, self._s = k, torch.rsqrt(k * (k + 1.0))

    def t(self, x: torch.Tensor) -> torch.Tensor:
        """``Z^T x`` for ``x`` (N,) or (N, M) (along dim 0)."""
        if self.order is None:
            return x[1:] - self._beta * (self._v @ x)
        xs = x.index_select(0, self.order)
        k, s = (self._k, self._s) if xs.dim() == 1 else (self._k[:, None], self._s[:, None])
        return torch.cumsum(xs, 0)[:-1].addcmul_(k, xs[1:], value=-1.0).mul_(s)

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        """``Z y`` for ``y`` (N-1,)."""
        if self.order is None:
            return torch.cat([y.new_zeros(1), y]) - (self._beta * y.sum()) * self._v
        g = y * self._s
        out = torch.cat([torch.flip(torch.cumsum(torch.flip(g, (0,)), 0), (0,)), g.new_zeros(1)])
        out[1:] -= self._k * g  # out[a] = sum_{k > a} g_k - a g_a
        return torch.empty_like(out).index_copy_(0, self.order, out)

    def project(self, a: torch.Tensor) -> torch.Tensor:
        """``Z^T A Z`` (N-1, N-1) for the symmetric ``a``."""
        if self.order is None:
            beta, v = self._beta, self._v
            p = beta * (a @ v)
            w = (p - (0.5 * beta * (v @ p)) * v)[1:]
            return a[1:, 1:] - w[None, :] - w[:, None]
        return self.t(self.t(a).T)


def _projected_hardness(a: torch.Tensor) -> torch.Tensor:
    """``Z^T A Z`` (N-1, N-1) for the orthonormal basis Z of ``{q : sum(q) = 0}`` of
    :class:`ConstraintBasis`; the eigenvalues of the result are those of A restricted to
    the constraint subspace."""
    return ConstraintBasis(a).project(a)


def _check_projected_definite(op: _Hardness) -> None:
    """Raise PolarizationCatastropheError unless A is positive definite on sum(q) = 0.

    Dense float64 Cholesky of the projected matrix: it succeeds exactly when the matrix
    is (numerically) positive definite, independently of chi and of the total charge.
    With Ewald the matrix without its reciprocal part is tried first: the reciprocal part
    (explicit or PME) is positive semidefinite, so that one being positive definite
    suffices, and it costs no O(N^2 K) reciprocal matrix; otherwise the whole matrix.
    """
    n = op.diag0.shape[0]
    if n < 2:
        return
    if op.long_range:
        short = _projected_hardness(_dense_hardness(op, reciprocal=False))
        if int(torch.linalg.cholesky_ex(short)[1]) == 0:
            return
    m = _projected_hardness(_dense_hardness(op))
    if int(torch.linalg.cholesky_ex(m)[1]) != 0:
        raise_catastrophe(m, n)


def raise_catastrophe(m: torch.Tensor, n: int) -> None:
    """Raise the PolarizationCatastropheError for the projected matrix ``m`` (whose
    Cholesky factorization failed) of ``n`` atoms."""
    pivot = int(torch.linalg.cholesky_ex(m)[1])
    lam = float(torch.linalg.eigvalsh(m)[0])
    raise PolarizationCatastropheError(
        "QEq hardness matrix is not positive definite on the charge-constraint subspace "
        f"sum(q) = const: its smallest eigenvalue there is {lam:.3e} eV <= 0 (the Cholesky "
        f"factorization of the projected {n - 1}x{n - 1} matrix fails at pivot {pivot}). "
        "This is a polarization catastrophe: the energy is unbounded below along a "
        "charge-transfer direction, whatever chi is. Increase the hardness eta, use the "
        "shielded kernel (or a larger gamma), or check for too-close atoms."
    )


# --------------------------------------------------------------------------- preconditioner


def _precond_diag(op: _Hardness, base: torch.Tensor, ewald: bool) -> torch.Tensor:
    """Positive Jacobi diagonal for the projected CG.

    Without Ewald it is diag(A). With Ewald, diag(A) contains the potential of an atom's
    own periodic images (nearly the same for every atom, and possibly negative in small
    cells); a uniform shift of the diagonal does not change the problem on the constraint
    subspace, so it is shifted to make ``d_i >= base_i`` (the hardness, > 0).
    """
    _check_diag(base)
    d = op.diagonal()
    if ewald:
        d = d - (d - base).min().clamp(max=0.0)
    else:
        _check_diag(d)
    return d


def _check_diag(d: torch.Tensor) -> None:
    d = d.detach()
    bad = ~(d > 0) | torch.isinf(d)
    if bool(bad.any()):
        idx = int(torch.nonzero(bad)[0, 0])
        if not math.isfinite(float(d[idx])):  # not a catastrophe: a value out of range
            raise ValueError(
                f"QEq hardness matrix diagonal entry {idx} is {float(d[idx])} (eta plus "
                f"self-interaction terms): out of the range of {d.dtype}. Use dtype "
                "float64 or a smaller eta."
            )
        raise PolarizationCatastropheError(
            f"QEq hardness matrix is not positive definite: diagonal entry {idx} is "
            f"{float(d[idx]):.3e} <= 0 (eta plus self-interaction terms). Increase eta."
        )
