"""The reciprocal-space part of the Ewald sum by particle-particle particle-mesh (P3M)
through torch-pme (optional dependency), as a drop-in for the explicit k-vector sum.

Only the smooth reciprocal part changes: the real-space ``erfc(alpha r) / r`` pairs, the
shielding correction, the self term ``-2 alpha / sqrt(pi)`` and the neutralizing background
stay the library's own (``_hardness.hardness_terms``), with the same ``alpha``. The mesh
potential ``phi = W^T G W q`` (``W``: charge assignment of order :data:`NODES`, ``G``: the
P3M optimal influence function times ``4 pi exp(-k^2 / 4 alpha^2) / k^2``) is linear in
``q`` and symmetric positive semidefinite, so it enters the projected CG as one more term of
the matrix-free ``q -> A q``; positions and cell enter through differentiable torch
operations (forces and stress by autograd, the implicit adjoint unchanged).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from .._validation import UnrollsciWarning
from ._geometry import ewald_kvectors
from ._settings import PME_MIN_ATOMS

__all__ = [
    "NODES",
    "MESH_SPACING",
    "PMEReciprocal",
    "available",
    "mesh_shape",
    "resolve_method",
    "torchpme",
]

#: charge-assignment order (interpolation nodes per axis) of the P3M mesh
NODES = 5
#: mesh spacing ``h = MESH_SPACING / alpha * (ewald_accuracy / 1e-8)^(1/12)``: the P3M error
#: of order-5 assignment falls as ``(alpha h)^6`` (measured: relative charge error ~2e-5
#: against the explicit sum at ``ewald_accuracy=1e-8`` on rock salt, docs/chem.md)
MESH_SPACING = 0.3

_MODULE: dict[str, Any] = {}


def torchpme() -> Any:
    """The ``torchpme`` module, or ``ImportError`` saying how to install it."""
    if "m" not in _MODULE:
        try:
            import torchpme as m
        except ImportError as exc:
            raise ImportError(
                "ewald_method='pme' needs torch-pme, which could not be imported "
                f"({exc}). Install it with `pip install torch-pme` (or "
                "`pip install unrollsci[chem]`)."
            ) from exc
        _MODULE["m"] = m
    return _MODULE["m"]


def available() -> bool:
    """Whether torch-pme can be imported."""
    try:
        torchpme()
    except ImportError:
        return False
    return True


def _good_size(n: int) -> int:
    """The smallest integer >= n whose prime factors are 2, 3 and 5 (fast FFT sizes)."""
    n = max(int(n), 1)
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def mesh_shape(cell_lengths: Any, alpha: float, accuracy: float) -> list[int]:
    """Mesh points per cell vector: spacing at most ``MESH_SPACING / alpha * (accuracy /
    1e-8)^(1/12)``, rounded up to an FFT-friendly size, at least ``2 NODES``."""
    h = MESH_SPACING / alpha * (accuracy / 1e-8) ** (1.0 / 12.0)
    return [max(_good_size(math.ceil(float(length) / h)), 2 * NODES) for length in cell_lengths]


class PMEReciprocal:
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
    ) -> None:
        tp = torchpme()
        from torchpme.lib.kspace_filter import P3MKSpaceFilter

        self.positions, self.cell = positions, cell
        self.alpha, self.kmax, self.k_e = float(alpha), float(kmax), float(coulomb_constant)
        self.accuracy = float(accuracy)
        dtype, device = positions.dtype, positions.device
        cell = cell.to(dtype)
        if shape is None:
            shape = mesh_shape(cell.detach().norm(dim=1).tolist(), self.alpha, self.accuracy)
        self.shape = list(shape)
        ns = torch.tensor(self.shape, device=device)
        smearing = 1.0 / (math.sqrt(2.0) * self.alpha)  # torch-pme's sigma
        pot = tp.CoulombPotential(smearing=smearing).to(device=device, dtype=dtype)
        self._interp = tp.lib.MeshInterpolator(cell, ns, NODES, method="P3M")
        self._filter = P3MKSpaceFilter(
            cell, ns, NODES, pot, mode=0, fft_norm="backward", ifft_norm="forward"
        )
        self._scale = self.k_e / torch.linalg.det(cell).abs()
        self._diag: torch.Tensor | None = None
        # torch-pme's assignment weights, combined once per geometry into one (N, p^3)
        # weight and flat mesh index per atom and node (its points_to_mesh/mesh_to_points
        # rebuild the products at every call: most of the cost of a matvec)
        ip = self._interp
        ip.compute_weights(positions)
        wi = ip.interpolation_weights  # (p, N, 3)
        self._w = (wi[ip.x_shifts, :, 0] * wi[ip.y_shifts, :, 1] * wi[ip.z_shifts, :, 2]).T
        nx, ny, nz = self.shape
        self._idx = ((ip.x_indices * ny + ip.y_indices) * nz + ip.z_indices).T.contiguous()
        self._csr: tuple[torch.Tensor, torch.Tensor] | None = None

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

    def detached(self) -> PMEReciprocal:
        """The same operator on detached positions and cell (no autograd graph)."""
        if not (self.positions.requires_grad or self.cell.requires_grad):
            return self
        return PMEReciprocal(
            self.positions.detach(),
            self.cell.detach(),
            self.alpha,
            self.kmax,
            self.k_e,
            self.accuracy,
            shape=self.shape,
        )

    def _convolve(self, mesh: torch.Tensor) -> torch.Tensor:
        """The k-space filter on a (C, nx, ny, nz) mesh: torch-pme's ``KSpaceFilter.forward``
        (FFT, times the influence function, inverse FFT) without its NaN scan of every
        result, which costs a third of the FFTs (its filter is finite by construction)."""
        kfilter = getattr(self._filter, "_kfilter", None)
        if kfilter is None:  # another torch-pme layout: its own forward
            return self._filter.forward(mesh)
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
        phi = phi * self._scale
        return phi[:, 0] if one else phi

    __call__ = apply

    def diagonal(self) -> torch.Tensor:
        """The diagonal of the operator (N,), detached: the potential of an atom's own
        periodic images, the same for every atom up to the mesh error, so that of atom 0
        (one product) is used for all (it only enters the Jacobi preconditioner)."""
        if self._diag is None:
            with torch.no_grad():
                pos = self.positions
                e0 = torch.zeros(pos.shape[0], dtype=pos.dtype, device=pos.device)
                e0[0] = 1.0
                self._diag = self.apply(e0)[0].expand(pos.shape[0])
        return self._diag

    def dense(self) -> torch.Tensor:
        """The reciprocal-space matrix that the mesh approximates, dense (N, N) float64,
        by the explicit k-vector sum to ``kmax`` (blocks of k-vectors; no autograd): for
        the definiteness test, where N FFTs of the mesh would cost more."""
        f64 = torch.float64
        with torch.no_grad():
            pos = self.positions.detach().to(f64)
            cell = self.cell.detach().to(f64)
            m = torch.from_numpy(ewald_kvectors(cell.cpu().numpy(), self.kmax)).to(pos.device)
            kvec = m @ (2.0 * math.pi * torch.linalg.inv(cell).T)
            k2 = (kvec * kvec).sum(-1)
            vol = torch.linalg.det(cell).abs()
            kf = self.k_e * (8.0 * math.pi / vol) * torch.exp(-k2 / (4.0 * self.alpha**2)) / k2
            n = pos.shape[0]
            a = torch.zeros(n, n, dtype=f64, device=pos.device)
            for lo in range(0, kvec.shape[0], 2048):
                phase = pos @ kvec[lo : lo + 2048].T
                for basis in (torch.cos(phase), torch.sin(phase)):
                    a.addmm_(basis * kf[lo : lo + 2048], basis.T)
            return 0.5 * (a + a.T)


_WARNED: set[str] = set()


def resolve_method(method: str, n_atoms: int, stacklevel: int = 3) -> str:
    """``"ewald"`` or ``"pme"`` for the option ``ewald_method`` and ``n_atoms`` atoms:
    ``"auto"`` is ``"pme"`` from :data:`PME_MIN_ATOMS` atoms on when torch-pme can be
    imported (else ``"ewald"``, with one warning per process); ``"pme"`` without
    torch-pme raises ``ImportError``."""
    if method == "pme":
        torchpme()
        return "pme"
    if method == "auto" and n_atoms >= PME_MIN_ATOMS:
        if available():
            return "pme"
        if "auto" not in _WARNED:
            _WARNED.add("auto")
            warnings.warn(
                f"ewald_method='auto' would use particle-mesh Ewald for {n_atoms} atoms "
                f"(>= {PME_MIN_ATOMS}), but torch-pme is not installed; using the explicit "
                "k-vector sum (O(N^2) time and memory at a fixed cutoff). Install it with "
                "`pip install torch-pme`.",
                UnrollsciWarning,
                stacklevel=stacklevel,
            )
    return "ewald"
