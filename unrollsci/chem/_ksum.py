"""The Ewald reciprocal-space part by the explicit k-vector sum, without storing the ``N x K``
structure-factor basis: the separable form for large systems.

For a cell with lattice vectors ``a_d`` (rows) and fractional coordinates ``s_j`` of the
atoms, a reciprocal vector with integer indices ``m`` has the phase ``k . r_j = 2 pi m . s_j``,
so ``exp(i k . r_j) = E1[j, m1] E2[j, m2] E3[j, m3]`` with ``E_d[j, m] = exp(2 pi i m s_jd)``.
The reciprocal potential of charges ``q`` over the half-space set ``{m}`` of
:func:`._geometry.ewald_kvectors`,

    phi_i = sum_m kf(m) Re( E(i, m) sum_j conj(E(j, m)) q_j ),

is then, one plane ``m1 = a`` at a time, two complex matrix products with ``E3`` and two
broadcasts with ``E1[:, a]`` and ``E2``: the same number ``N K`` of terms as the stored basis
(``kc, ks`` of :func:`._hardness.hardness_terms`), as dense GEMMs, in ``O(N (M2 + M3) C)``
memory instead of ``O(N K)``. It is exact (the same sum, to rounding), so it gives the same
charges, energies and forces as the stored basis (``kc, ks``), which is kept for small
systems, below :data:`KSUM_MIN_ELEMENTS` basis entries.

Gradients (:class:`_KSumApply`): with ``S_X(m) = sum_j conj(E(j, m)) X_j`` and
``L = sum_i G_i phi_i``,

    dL/dq_j  = (A_rec G)_j,
    dL/dkf(m) = Re( conj(S_G(m)) S_Q(m) ),
    dL/ds_jd  = -2 pi Im sum_m kf(m) m_d E(j, m) (G_j S_Q(m) + q_j S_G(m)),

and ``s = r inv(cell)``, ``kf(cell)`` carry them to positions and cell by autograd
(checked against the stored basis's autograd in tests/chem/test_ksum.py). A second
derivative (``create_graph=True``: a force loss) goes through the stored basis, built then.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ._geometry import ewald_kvectors

__all__ = [
    "KSUM_MIN_ELEMENTS",
    "KSumReciprocal",
    "ReciprocalOperator",
    "dense_reciprocal",
    "kspace_factors",
]

#: the explicit sum uses this separable form from ``N x K`` of this many basis entries on
#: (below: the stored ``kc, ks`` basis, 8 bytes an entry each)
KSUM_MIN_ELEMENTS = 3_000_000


def kspace_factors(cell: torch.Tensor, m: torch.Tensor, alpha: float, k_e: float) -> torch.Tensor:
    """``kf(m) = k_e (8 pi / V) exp(-k^2 / 4 alpha^2) / k^2`` for integer indices ``m``
    (K, 3) of ``k = 2 pi m inv(cell)^T`` (differentiable in ``cell``)."""
    kvec = m.to(cell.dtype) @ (2.0 * math.pi * torch.linalg.inv(cell).T)
    k2 = (kvec * kvec).sum(-1)
    vol = torch.linalg.det(cell).abs()
    return k_e * (8.0 * math.pi / vol) * torch.exp(-k2 / (4.0 * alpha**2)) / k2


def dense_reciprocal(
    positions: torch.Tensor, cell: torch.Tensor, alpha: float, kmax: float, k_e: float
) -> torch.Tensor:
    """The explicit sum's reciprocal matrix, dense (N, N) float64 (no autograd), by blocks
    of k-vectors: for the definiteness test of small systems."""
    f64 = torch.float64
    with torch.no_grad():
        pos = positions.detach().to(f64)
        cell = cell.detach().to(f64)
        m = torch.from_numpy(ewald_kvectors(cell.cpu().numpy(), kmax)).to(pos.device)
        kvec = m @ (2.0 * math.pi * torch.linalg.inv(cell).T)
        kf = kspace_factors(cell, m, alpha, k_e)
        n = pos.shape[0]
        a = torch.zeros(n, n, dtype=f64, device=pos.device)
        for lo in range(0, kvec.shape[0], 2048):
            phase = pos @ kvec[lo : lo + 2048].T
            for basis in (torch.cos(phase), torch.sin(phase)):
                a.addmm_(basis * kf[lo : lo + 2048], basis.T)
        return 0.5 * (a + a.T)


def _phases(frac: torch.Tensor, lo: list[int], hi: list[int]) -> list[torch.Tensor]:
    """``E_d[j, m] = exp(2 pi i m s_jd)`` for ``m = lo_d .. hi_d`` (complex (N, M_d))."""
    frac = frac - torch.floor(frac)  # exact for integer m; keeps the phases small
    out = []
    for d in range(3):
        m = torch.arange(lo[d], hi[d] + 1, dtype=frac.dtype, device=frac.device)
        phase = (2.0 * math.pi) * frac[:, d, None] * m
        out.append(torch.polar(torch.ones_like(phase), phase))
    return out


class _Planes:
    """Per plane ``m1 = a``: the (m2, m3) box holding its k-vectors, as column slices of
    ``E2`` and ``E3`` and index values."""

    def __init__(self, m: np.ndarray, lo: list[int]) -> None:
        self.slices: list[tuple[int, int, int, int]] = []
        self.m = m  # the k-vector indices (K, 3) and their places in the half box
        m = m.astype(np.int64)
        self.box_index = m - np.asarray(lo)
        for a in range(lo[0], int(m[:, 0].max()) + 1 if len(m) else lo[0]):
            sel = m[m[:, 0] == a]
            if not len(sel):
                self.slices.append((0, 0, 0, 0))
                continue
            self.slices.append(
                (
                    int(sel[:, 1].min()) - lo[1],
                    int(sel[:, 1].max()) - lo[1] + 1,
                    int(sel[:, 2].min()) - lo[2],
                    int(sel[:, 2].max()) - lo[2] + 1,
                )
            )


def _project(e1a: torch.Tensor, e2: torch.Tensor, e3: torch.Tensor, x: torch.Tensor):
    """``S[m2, c, m3] = sum_j conj(E1[j, a] E2[j, m2] E3[j, m3]) x[j, c]`` (x complex (N, C))."""
    n, c = x.shape
    a = (e1a.conj()[:, None, None] * e2.conj()[:, :, None]) * x[:, None, :]  # (N, M2, C)
    s = a.reshape(n, -1).T @ e3.conj()  # (M2 C, M3)
    return s.reshape(e2.shape[1], c, e3.shape[1])


def _back(e1a: torch.Tensor, e2: torch.Tensor, e3: torch.Tensor, t: torch.Tensor):
    """``P[i, c] = E1[i, a] sum_{m2, m3} E2[i, m2] E3[i, m3] t[m2, c, m3]`` (complex (N, C))."""
    m2, c, m3 = t.shape
    b = (e3 @ t.reshape(m2 * c, m3).T).reshape(-1, m2, c)  # (N, M2, C)
    return e1a[:, None] * (e2[:, :, None] * b).sum(1)


def _apply(e, planes, w, q):
    """``phi = Re sum_m w(m) E(i, m) S_q(m)`` for real ``q`` (N, C)."""
    e1, e2, e3 = e
    x = q.to(e1.dtype)
    out = q.new_zeros(q.shape)
    for a, (l2, h2, l3, h3) in enumerate(planes.slices):
        if h2 == l2:
            continue
        e2a, e3a = e2[:, l2:h2], e3[:, l3:h3]
        s = _project(e1[:, a], e2a, e3a, x)
        out += _back(e1[:, a], e2a, e3a, s * w[a, l2:h2, None, l3:h3]).real
    return out


def _stored_vjp(ctx: Any, g: torch.Tensor) -> tuple:
    """The backward as differentiable torch operations on the stored ``N x K`` basis (for
    second derivatives, e.g. a force loss: ``O(N K)`` memory, as the stored basis). With
    ``c, s = cos, sin(2 pi s_j . m_k)``, ``C_x = c^T x``, ``S_x = s^T x``:
    ``dL/dq = A g``, ``dL/dkf_k = C_g C_q + S_g S_q`` and
    ``dL/ds_jd = 2 pi (g_j [c (kf m_d S_q) - s (kf m_d C_q)]_j + q_j [same with g])``."""
    q, frac, w = ctx.saved_tensors
    planes = ctx.planes
    need_q, need_s, need_w = ctx.needs_input_grad[:3]
    m = torch.from_numpy(planes.m).to(device=frac.device, dtype=frac.dtype)
    idx = torch.from_numpy(planes.box_index).to(frac.device)
    kf = w[idx[:, 0], idx[:, 1], idx[:, 2]]
    phase = (2.0 * math.pi) * (frac @ m.T)
    c, s = torch.cos(phase), torch.sin(phase)
    cq, sq, cg, sg = c.T @ q, s.T @ q, c.T @ g, s.T @ g  # (K, C)
    gq = c @ (kf[:, None] * cg) + s @ (kf[:, None] * sg) if need_q else None
    gw = None
    if need_w:
        gkf = (cg * cq + sg * sq).sum(1)
        gw = torch.zeros_like(w).index_put((idx[:, 0], idx[:, 1], idx[:, 2]), gkf)
    gs = None
    if need_s:
        cols = []
        for d in range(3):
            t = (kf * m[:, d])[:, None]
            pq = c @ (t * sq) - s @ (t * cq)
            pg = c @ (t * sg) - s @ (t * cg)
            cols.append((g * pq + q * pg).sum(1))
        gs = (2.0 * math.pi) * torch.stack(cols, 1)
    return gq, gs, gw, None, None, None


class _KSumApply(torch.autograd.Function):
    """``phi(q, s, w)``: the reciprocal potential (see the module docstring), differentiable
    in the charges ``q`` (N, C), fractional coordinates ``s`` (N, 3) and the weights ``w``
    on the half box of indices: the first derivative by the separable form, a second one
    (``create_graph=True``) through the stored basis (:func:`_stored_vjp`)."""

    @staticmethod
    def forward(ctx: Any, q, frac, w, planes, lo, hi):
        e = _phases(frac, lo, hi)
        ctx.save_for_backward(q, frac, w)
        ctx.planes, ctx.lo, ctx.hi = planes, lo, hi
        return _apply(e, planes, w, q)

    @staticmethod
    def backward(ctx: Any, g):
        if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
            return _stored_vjp(ctx, g)
        q, frac, w = ctx.saved_tensors
        planes, lo, hi = ctx.planes, ctx.lo, ctx.hi
        e1, e2, e3 = _phases(frac, lo, hi)
        need_q, need_s, need_w = ctx.needs_input_grad[:3]
        n, c = q.shape
        gq = q.new_zeros(q.shape) if need_q else None
        gs = frac.new_zeros(frac.shape) if need_s else None
        gw = torch.zeros_like(w) if need_w else None
        x = torch.cat([q, g], 1).to(e1.dtype)  # project both at once
        two_pi = 2.0 * math.pi
        for a, (l2, h2, l3, h3) in enumerate(planes.slices):
            if h2 == l2:
                continue
            e2a, e3a, e1a = e2[:, l2:h2], e3[:, l3:h3], e1[:, a]
            s = _project(e1a, e2a, e3a, x)  # (M2, 2C, M3)
            sq, sg = s[:, :c], s[:, c:]
            wa = w[a, l2:h2, None, l3:h3]
            if need_w:
                gw[a, l2:h2, l3:h3] = (sg.conj() * sq).real.sum(1)
            blocks = []
            if need_q:
                blocks.append(wa * sg)
            if need_s:
                m2 = torch.arange(lo[1] + l2, lo[1] + h2, dtype=w.dtype, device=w.device)
                m3 = torch.arange(lo[2] + l3, lo[2] + h3, dtype=w.dtype, device=w.device)
                ws = wa * s  # (M2, 2C, M3)
                blocks += [ws * float(lo[0] + a), ws * m2[:, None, None], ws * m3]
            if not blocks:  # only the weights need a gradient
                continue
            p = _back(e1a, e2a, e3a, torch.cat(blocks, 1))
            if need_q:
                gq += p[:, :c].real
                p = p[:, c:]
            if need_s:
                for d in range(3):
                    pd = p[:, 2 * c * d : 2 * c * (d + 1)].imag  # (N, 2C): P_Q,d | P_G,d
                    gs[:, d] -= two_pi * ((g * pd[:, :c]).sum(1) + (q * pd[:, c:]).sum(1))
        return gq, gs, gw, None, None, None


class ReciprocalOperator:
    """What the hardness operator needs of a reciprocal-space part (``q -> A_rec q`` for
    fixed ``positions`` and ``cell``): ``apply``, ``diagonal``, ``dense`` and
    ``detached()``, the same operator on detached inputs (the no-grad matvec of the CG
    solve), built by the subclass's ``_on(positions, cell)``."""

    positions: torch.Tensor
    cell: torch.Tensor

    def _on(self, positions: torch.Tensor, cell: torch.Tensor) -> ReciprocalOperator:
        raise NotImplementedError

    def detached(self) -> ReciprocalOperator:
        """The same operator on detached positions and cell (no autograd graph)."""
        if not (self.positions.requires_grad or self.cell.requires_grad):
            return self
        return self._on(self.positions.detach(), self.cell.detach())


class KSumReciprocal(ReciprocalOperator):
    """``q -> A_rec q``, the Ewald reciprocal part by the explicit k-vector sum in its
    separable form (no ``N x K`` basis stored; see the module docstring). The same sum as
    the stored basis of :func:`._hardness.hardness_terms`, to rounding.

    Built for fixed positions and cell: with ``positions``/``cell`` requiring grad the
    products are differentiable in them (and always in ``q``; second derivatives build the
    stored basis once, ``O(N K)`` memory). ``detached()``
    gives the same operator on detached inputs (the no-grad matvec of the CG solve).

    Args:
        positions: (N, 3) Angstrom.
        cell: (3, 3) lattice vectors as rows.
        alpha: Ewald splitting parameter (1/Angstrom).
        kmax: reciprocal cutoff (1/Angstrom).
        coulomb_constant: k_e (eV Angstrom).
    """

    shape = None  # no mesh (the solver's statistics read ``shape`` of a PME operator)

    def __init__(
        self,
        positions: torch.Tensor,
        cell: torch.Tensor,
        alpha: float,
        kmax: float,
        coulomb_constant: float,
        _m: np.ndarray | None = None,
    ) -> None:
        self.positions, self.cell = positions, cell.to(positions.dtype)
        self.alpha, self.kmax, self.k_e = float(alpha), float(kmax), float(coulomb_constant)
        m_np = ewald_kvectors(self.cell.detach().cpu().numpy(), self.kmax) if _m is None else _m
        self._m = m_np
        self.n_kvectors = len(m_np)
        mi = m_np.astype(np.int64)
        self._lo = [0, int(mi[:, 1].min()), int(mi[:, 2].min())] if len(mi) else [0, 0, 0]
        self._hi = [int(mi[:, d].max()) for d in range(3)] if len(mi) else [0, 0, 0]
        self._planes = _Planes(m_np, self._lo)
        dev = positions.device
        m = torch.from_numpy(m_np).to(device=dev, dtype=positions.dtype)
        kf = kspace_factors(self.cell, m, self.alpha, self.k_e)
        box = [self._hi[d] - self._lo[d] + 1 for d in range(3)]
        idx = torch.from_numpy(self._planes.box_index).to(dev)
        self._w = kf.new_zeros(box).index_put((idx[:, 0], idx[:, 1], idx[:, 2]), kf)
        self._kf_sum = kf.detach().sum()
        self._frac = positions @ torch.linalg.inv(self.cell)

    def _on(self, positions: torch.Tensor, cell: torch.Tensor) -> KSumReciprocal:
        return KSumReciprocal(positions, cell, self.alpha, self.kmax, self.k_e, _m=self._m)

    def apply(self, q: torch.Tensor) -> torch.Tensor:
        """``A_rec q`` for charges ``q`` of shape (N,) or (N, C)."""
        if self.n_kvectors == 0:
            return torch.zeros_like(q)
        one = q.dim() == 1
        qc = q[:, None] if one else q
        phi = _KSumApply.apply(qc, self._frac, self._w, self._planes, self._lo, self._hi)
        return phi[:, 0] if one else phi

    __call__ = apply

    def diagonal(self) -> torch.Tensor:
        """The diagonal (N,), detached: ``sum_k kf`` for every atom (``|E(j, m)| = 1``)."""
        return self._kf_sum.to(self.positions.dtype).expand(self.positions.shape[0])

    def dense(self) -> torch.Tensor:
        """The matrix, dense (N, N) float64 (no autograd): for the definiteness test."""
        return dense_reciprocal(self.positions, self.cell, self.alpha, self.kmax, self.k_e)
