"""The reciprocal-space part of the Ewald sum by particle-particle particle-mesh (P3M), as
a drop-in for the explicit k-vector sum (the library's own; no torch-pme needed).

Only the smooth reciprocal part changes: the real-space ``erfc(alpha r) / r`` pairs, the
shielding correction, the self term ``-2 alpha / sqrt(pi)`` and the neutralizing background
stay the library's own (``_hardness.hardness_terms``), with the same ``alpha``. The mesh
potential ``phi = W^T G W q`` (``W``: charge assignment of order :data:`NODES`, ``G``: the
P3M optimal influence function times ``4 pi exp(-k^2 / 4 alpha^2) / k^2``) is linear in
``q`` and symmetric positive semidefinite, so it enters the projected CG as one more term of
the matrix-free ``q -> A q``; positions and cell enter through differentiable torch
operations (forces and stress by autograd, the implicit adjoint unchanged).

The mesh, the influence function and its error estimate are in :mod:`._pme_mesh`: the mesh
is the coarsest one whose estimated error meets ``ewald_accuracy``, the assignment of order
:data:`NODES` (7: torch-pme 0.5's P3M stops at 5, and its P3M filter is wrong for
non-orthorhombic cells; its order-5 weights equal ours, tests/chem/test_pme_accuracy.py).
An atom's interaction with itself through the mesh
(which varies with its place in a mesh cell and gives a spurious self force) is replaced
by the exact constant.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch

from . import _settings
from ._geometry import ewald_kvectors
from ._ksum import ReciprocalOperator, dense_reciprocal
from ._pme_mesh import (
    MAX_MESH_POINTS,
    NODES,
    _cached_influence,
    _cached_mesh_shape,
    assignment,
    influence,
    mesh_shape,
    mesh_target,
)

__all__ = [
    "MAX_MESH_POINTS",
    "NODES",
    "influence",
    "mesh_target",
    "PMEReciprocal",
    "mesh_shape",
    "pme_cheaper",
    "resolve_method",
]


class PMEReciprocal(ReciprocalOperator):
    """``q -> k_e phi_rec(q)``: the Ewald reciprocal-space potential of charges ``q`` (N,)
    at the atoms, by P3M on a mesh (``A_rec q`` of the hardness operator).

    Built for fixed positions and cell: with ``positions``/``cell`` requiring grad the
    products are differentiable in them (and always in ``q``). ``detached()`` gives the
    same operator on detached inputs (the no-grad matvec of the CG solve).

    Args:
        positions: (N, 3) Angstrom.
        cell: (3, 3) lattice vectors as rows.
        alpha: Ewald splitting parameter (1/Angstrom).
        kmax: the explicit sum's reciprocal cutoff (for :meth:`dense`).
        accuracy: the ``ewald_accuracy`` (sets the mesh spacing).
        coulomb_constant: k_e (eV Angstrom).
        shape: mesh points per cell vector (default :func:`mesh_shape`).
        filters: :func:`influence`'s output for this cell and mesh, if already computed.
    """

    def __init__(
        self,
        positions: torch.Tensor,
        cell: torch.Tensor,
        alpha: float,
        kmax: float,
        coulomb_constant: float,
        accuracy: float = 1e-8,
        shape: list[int] | None = None,
        filters: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        self.positions, self.cell = positions, cell
        self.alpha, self.kmax, self.k_e = float(alpha), float(kmax), float(coulomb_constant)
        self.accuracy = float(accuracy)
        dtype = positions.dtype
        cell = cell.to(dtype)
        if shape is None:
            shape = _cached_mesh_shape(cell, self.alpha, self.accuracy, positions.shape[0])
        self.shape = list(shape)
        if filters is None:
            filters = _cached_influence(cell, self.shape, self.alpha)
        self._filters = filters
        self._kfilter, self.error_q, self_term = filters
        self._scale = self.k_e / torch.linalg.det(cell).abs()
        self._diag: torch.Tensor | None = None
        # the assignment weights and mesh indices, once per geometry (N, p^3)
        self._w, self._idx, offsets = assignment(positions, cell, self.shape)
        self._csr: tuple[torch.Tensor, torch.Tensor] | None = None
        # self-interaction correction: through the mesh an atom's potential on itself,
        # w_i^T K w_i (K: the mesh kernel between its p^3 nodes), varies with the atom's
        # place in the mesh cell; its gradient is a spurious self force that dominated the
        # force error (measured: ~all of it). Replaced by the exact constant S / V.
        kernel = torch.fft.irfftn(self._kfilter, s=self.shape, norm="forward")
        diff = [(offsets[:, d, None] - offsets[None, :, d]) % self.shape[d] for d in range(3)]
        kss = kernel[diff[0], diff[1], diff[2]]  # (p^3, p^3), the same for every atom
        mesh_self = ((self._w @ kss) * self._w).sum(1)
        self._self_fix = self._scale * (self_term - mesh_self)
        self._self_term = self_term

    def _sparse(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The weights as CSR matrices ``(S, S^T)``, ``S`` (N, M) (no-grad products only;
        an atom's p^3 mesh points are distinct since every mesh side is >= 2p)."""
        if self._csr is None and not self._w.requires_grad:
            n, p3 = self._w.shape
            m = self.shape[0] * self.shape[1] * self.shape[2]
            dev = self._w.device
            w, idx = self._w.reshape(-1), self._idx.reshape(-1)
            crow = torch.arange(0, n * p3 + 1, p3, device=dev)
            order = torch.argsort(idx, stable=True)
            crow_t = torch.zeros(m + 1, dtype=torch.int64, device=dev)
            crow_t[1:] = torch.cumsum(torch.bincount(idx, minlength=m), 0)
            atom = torch.arange(n, device=dev).repeat_interleave(p3)
            # int32 indices halve the index traffic of these memory-bound products
            it = torch.int32 if max(n * p3, m) < 2**31 - 1 else torch.int64
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's beta notice for sparse CSR
                s = torch.sparse_csr_tensor(crow.to(it), idx.to(it), w, (n, m))
                st = torch.sparse_csr_tensor(crow_t.to(it), atom[order].to(it), w[order], (m, n))
            self._csr = (s, st)
        return self._csr

    def _on(self, positions: torch.Tensor, cell: torch.Tensor) -> PMEReciprocal:
        return PMEReciprocal(
            positions,
            cell,
            self.alpha,
            self.kmax,
            self.k_e,
            self.accuracy,
            shape=self.shape,
            filters=tuple(f.detach() for f in self._filters),
        )

    def _convolve(self, mesh: torch.Tensor) -> torch.Tensor:
        """The k-space filter on a (C, nx, ny, nz) mesh: FFT, times the influence
        function, inverse FFT."""
        kfilter = self._kfilter
        dims = (1, 2, 3)
        hat = torch.fft.rfftn(mesh, norm="backward", dim=dims)
        if hat.requires_grad:
            hat = hat * kfilter
        else:  # in place on the real and imaginary parts (no complex copy of the filter)
            torch.view_as_real(hat).mul_(kfilter.unsqueeze(-1))
        return torch.fft.irfftn(hat, norm="forward", dim=dims, s=mesh.shape[-3:])

    def apply(self, q: torch.Tensor) -> torch.Tensor:
        """``k_e phi_rec`` for charges ``q`` of shape (N,) or (N, C) (C charge vectors)."""
        one = q.dim() == 1
        qc = q[:, None] if one else q
        c = qc.shape[1]
        grid = self.shape
        sparse = None if q.requires_grad else self._sparse()
        if sparse is not None and one:
            s, st = sparse
            pot = self._convolve(torch.mv(st, q).reshape(1, *grid)).reshape(-1)
            phi = torch.mv(s, pot)[:, None]
        elif sparse is not None:
            s, st = sparse
            rho = (st @ qc).T.reshape(c, *grid)
            phi = s @ self._convolve(rho).reshape(c, -1).T.contiguous()
        else:
            contrib = (self._w[:, :, None] * qc[:, None, :]).reshape(-1, c)
            m = grid[0] * grid[1] * grid[2]
            rho = qc.new_zeros(m, c).index_add(0, self._idx.reshape(-1), contrib)
            pot = self._convolve(rho.T.reshape(c, *grid)).reshape(c, -1)
            phi = (pot[:, self._idx] * self._w).sum(-1).T
        phi = phi * self._scale + self._self_fix[:, None] * qc
        return phi[:, 0] if one else phi

    __call__ = apply

    def diagonal(self) -> torch.Tensor:
        """The diagonal of the operator (N,), detached: the exact reciprocal self term
        ``k_e S / V`` (see :func:`influence`; the mesh's own self-interaction is replaced by
        it), the same for every atom."""
        if self._diag is None:
            pos = self.positions
            value = (self._scale * self._self_term).detach().to(pos.dtype)
            self._diag = value.expand(pos.shape[0])
        return self._diag

    def dense(self) -> torch.Tensor:
        """The reciprocal-space matrix that the mesh approximates, dense (N, N) float64,
        by the explicit k-vector sum to ``kmax`` (blocks of k-vectors; no autograd): for
        the definiteness test, where N FFTs of the mesh would cost more."""
        return dense_reciprocal(self.positions, self.cell, self.alpha, self.kmax, self.k_e)


def pme_cheaper(
    cell: Any, ewald: tuple[float, float], accuracy: float, n_atoms: int
) -> tuple[bool, int, int]:
    """Whether PME costs less than the explicit sum, by the cost model ``N K >
    PME_COST_RATIO * (M + p^3 N)`` (per product: the explicit sum's ``N x K`` basis against
    the mesh of ``M`` points that :func:`mesh_shape` picks for ``accuracy`` plus the ``p^3``
    assignment weights per atom; the ratio fitted to benchmarks/qeq_pme.py). Returns
    ``(cheaper, K, M)`` (``M = 0`` where the search stopped because the mesh would be too
    fine to be cheaper, or above :data:`MAX_MESH_POINTS`)."""
    alpha, kmax = ewald
    cell_np = np.asarray(cell, dtype=np.float64)
    try:
        n_k = len(ewald_kvectors(cell_np, kmax))
    except ValueError:  # more k-vectors than the explicit sum builds: PME, if any mesh fits
        vol = abs(float(np.linalg.det(cell_np)))
        n_k = int(4.0 / 3.0 * math.pi * kmax**3 * vol / (2.0 * math.pi) ** 3 / 2)
    ratio = _settings.PME_COST_RATIO
    weights = NODES**3 * n_atoms
    limit = MAX_MESH_POINTS if ratio <= 0 else n_atoms * n_k / ratio - weights
    if limit < 2 * NODES:
        return False, n_k, 0
    # the search stops at a mesh fine enough to cost more than the explicit sum (with room:
    # it may step past the final mesh before it settles)
    limit = 3.0 * limit
    try:
        shape = _cached_mesh_shape(
            torch.from_numpy(cell_np), alpha, accuracy, n_atoms, min(limit, MAX_MESH_POINTS)
        )
    except ValueError:
        return False, n_k, 0
    m = math.prod(shape)
    return n_atoms * n_k > ratio * (m + weights), n_k, m


def resolve_method(
    method: str,
    n_atoms: int,
    stacklevel: int = 3,
    *,
    cell: Any = None,
    ewald: tuple[float, float] | None = None,
    accuracy: float = 1e-8,
) -> str:
    """``"ewald"`` or ``"pme"`` for the option ``ewald_method`` and ``n_atoms`` atoms:
    ``"auto"`` is ``"pme"`` from :data:`PME_MIN_ATOMS` atoms on where, given the ``cell``
    and the Ewald ``(alpha, kmax)``, the cost model of :func:`pme_cheaper` says PME is
    cheaper at this ``accuracy`` (without them: from ``PME_MIN_ATOMS`` on).
    ``stacklevel`` is unused (kept for callers)."""
    del stacklevel
    if method == "pme":
        return "pme"
    if method != "auto" or n_atoms < _settings.PME_MIN_ATOMS:
        return "ewald"
    if cell is not None and ewald is not None:
        return "pme" if pme_cheaper(cell, ewald, accuracy, n_atoms)[0] else "ewald"
    return "pme"
