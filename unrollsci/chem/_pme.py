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
    "MAX_MESH_POINTS",
    "NODES",
    "influence",
    "mesh_target",
    "PMEReciprocal",
    "available",
    "mesh_shape",
    "resolve_method",
    "torchpme",
]

#: charge-assignment order (interpolation nodes per axis) of the P3M mesh
NODES = 5
#: the error model's exponent: the RMS mesh error of order-5 P3M falls about as
#: ``h^5.5`` at the spacings used here (measured on rock salt), only used to step the mesh
#: search (:func:`mesh_shape`), never to accept a mesh
_ERROR_EXPONENT = 5.5
#: the largest PME mesh :func:`mesh_shape` builds (float64: 2 GiB per mesh)
MAX_MESH_POINTS = 2**28

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


def mesh_target(accuracy: float, alpha: float, n_atoms: int) -> float:
    """The largest accepted value of the mesh error functional ``Q`` (see :func:`influence`):
    the RMS mesh error of the potential at an atom, ``sqrt(Q sum q^2)``, at most
    ``accuracy * q_rms / r_c`` (``q_rms^2 = sum q^2 / N``, ``r_c = sqrt(-ln accuracy) /
    alpha`` the real-space cutoff, Coulomb constant 1): the potential of a typical charge
    at the cutoff times ``accuracy``, the size of a real-space pair term that the explicit
    sum's split (``erfc(alpha r_c) ~ accuracy``) drops. So ``Q <= accuracy^2 / (N r_c^2)``."""
    rc = math.sqrt(-math.log(accuracy)) / alpha
    return accuracy**2 / (n_atoms * rc * rc)


def mesh_shape(
    cell: torch.Tensor, alpha: float, accuracy: float, n_atoms: int
) -> tuple[list[int], float]:
    """The coarsest FFT-friendly mesh (points per cell vector, each at least ``2 NODES``)
    found whose estimated mesh error meets :func:`mesh_target`, and that estimate ``Q``.

    A search: start at ``alpha h = 0.5`` per axis, evaluate ``Q`` (:func:`influence`),
    refine all axes by the factor the error model (``Q ~ h^(2 * 5.5)``) asks for, until
    ``Q`` meets the target (then try one step coarser). The mesh is chosen by the estimate,
    not by a bound: the estimate assumes charges placed independently of each other and of
    the mesh (tests/chem/test_pme.py checks the result against the explicit sum)."""
    cell = cell.detach().to(torch.float64)
    lengths = cell.norm(dim=1).tolist()
    target = mesh_target(accuracy, alpha, n_atoms)

    def shape_for(h: float) -> list[int]:
        return [max(_good_size(math.ceil(length / h)), 2 * NODES) for length in lengths]

    h = 0.5 / alpha
    best: tuple[list[int], float] | None = None
    for _ in range(12):
        shape = shape_for(h)
        if math.prod(shape) > MAX_MESH_POINTS:
            raise ValueError(
                f"PME at ewald_accuracy={accuracy:g} would need a mesh of more than "
                f"{MAX_MESH_POINTS:.2e} points for this cell ({shape} and finer); use "
                "ewald_method='ewald' or a looser ewald_accuracy."
            )
        q = float(influence(cell, shape, alpha)[1])
        if q <= target:
            best = (shape, q)
            if h >= 0.5 / alpha:
                break
            h_coarse = h * 1.08
            coarse = shape_for(h_coarse)
            if coarse == shape:
                break
            qc = float(influence(cell, coarse, alpha)[1])
            if qc <= target:
                best = (coarse, qc)
            break
        factor = (q / target) ** (1.0 / (2.0 * _ERROR_EXPONENT))
        h = h / max(factor * 1.02, 1.05)
    if best is None:
        best = (shape, q)
    return best


_SHAPES: dict[tuple[Any, ...], list[int]] = {}


def _cached_mesh_shape(cell: torch.Tensor, alpha: float, accuracy: float, n: int) -> list[int]:
    """:func:`mesh_shape` remembered per cell (to 1e-6 Angstrom), ``alpha``, accuracy and
    atom count: an MD run or a relaxation at fixed cell searches once."""
    c = cell.detach().to(torch.float64).cpu()
    key = (tuple(round(float(v), 6) for v in c.reshape(-1)), alpha, accuracy, n)
    if key not in _SHAPES:
        if len(_SHAPES) > 64:
            _SHAPES.clear()
        _SHAPES[key] = mesh_shape(c, alpha, accuracy, n)[0]
    return _SHAPES[key]


_FILTERS: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _cached_influence(
    cell: torch.Tensor, shape: list[int], alpha: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`influence`, remembered for a cell that needs no gradient (fixed-cell MD and
    relaxations compute it once; the key is the cell's values, dtype and device)."""
    if cell.requires_grad:
        return influence(cell, shape, alpha)
    key = (
        tuple(float(v) for v in cell.detach().cpu().reshape(-1)),
        tuple(shape),
        alpha,
        str(cell.dtype),
        str(cell.device),
    )
    if key not in _FILTERS:
        if len(_FILTERS) >= 4:
            _FILTERS.pop(next(iter(_FILTERS)))
        _FILTERS[key] = influence(cell, shape, alpha)
    return _FILTERS[key]


def _mesh_indices(shape: list[int], device: torch.device) -> list[torch.Tensor]:
    """Integer frequencies of the real FFT of a mesh of ``shape``, broadcastable (per axis)."""
    out = []
    for axis, n in enumerate(shape):
        m = torch.fft.rfftfreq(n, 1.0 / n) if axis == 2 else torch.fft.fftfreq(n, 1.0 / n)
        view = [1, 1, 1]
        view[axis] = -1
        out.append(m.to(device=device, dtype=torch.float64).reshape(view))
    return out


def influence(
    cell: torch.Tensor, shape: list[int], alpha: float, order: int = NODES
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The optimal P3M influence function for the potential on a real-FFT mesh, the
    estimated mean squared mesh error of the potential per unit charge squared, and the
    exact reciprocal self term.

    ``G(k) = sum_j U^2(k_j) R(k_j) / (sum_j U^2(k_j))^2`` with ``R(k) = 4 pi exp(-k^2 /
    4 alpha^2) / k^2`` (the Ewald reciprocal kernel), ``U`` the Fourier transform of the
    order-``order`` charge assignment and ``k_j`` the aliases of the mesh frequency ``k``
    (Hockney and Eastwood, *Computer Simulation Using Particles*, 1988, ch. 8; the form for
    energies and potentials: Ballenegger, Cerda and Holm, J. Chem. Theory Comput. 8, 936
    (2012)). Reciprocal vectors come from the integer mesh indices through the inverse
    cell, so triclinic cells are handled (torch-pme 0.5's own P3M filter multiplies the
    Cartesian k by the cell-vector lengths, right only for axis-aligned orthorhombic cells:
    it is not used here).

    The error estimate is the same functional at its minimum, ``Q = V^-2 sum_k [sum_j
    R(k_j)^2 - (sum_j U^2 R)^2 / (sum_j U^2)^2]`` (sum over the full mesh): the mean squared
    mesh error of the potential at a point per unit source charge squared, averaged over the
    positions of source and point relative to the mesh. For charges with ``sum q^2 = Q2``
    placed independently, the RMS potential error at an atom is about ``sqrt(Q2 Q)``.

    The ``U^2`` sum runs over aliases ``|j_i| <= 4`` per axis (it factorizes); the ``R``
    sums over ``|j_i| <= 1`` along the axes where an alias's kernel is not negligible
    (``exp(-(pi n_i / |a_i|)^2 / 4 alpha^2) > 1e-25``; else only ``j_i = 0``).

    Returns ``(G, Q, S)``: ``G`` of shape ``(n1, n2, n3 // 2 + 1)`` in the cell's dtype
    (differentiable in the cell), ``Q`` a float64 scalar (detached), ``S = sum_k R(k)``
    over the mesh frequencies and the aliases summed (the potential of a unit charge's own
    periodic images times ``V``, differentiable in the cell; the Gaussian factor makes the
    omitted frequencies negligible at meshes that meet :func:`mesh_target`).
    """
    device, f64 = cell.device, torch.float64
    base = _mesh_indices(shape, device)
    lengths = cell.detach().to(f64).norm(dim=1).tolist()
    u0, alias, axis_images = [], [], []
    for m, n, length in zip(base, shape, lengths, strict=True):
        u0.append(torch.sinc(m / n) ** (2 * order))
        alias.append(sum(torch.sinc((m + n * j) / n) ** (2 * order) for j in range(-4, 5) if j))
        kmin = math.pi * n / length  # the smallest |k| of an alias along this axis
        span = 1 if (kmin / (2.0 * alpha)) ** 2 < 57.5 else 0
        axis_images.append(
            [
                (m + n * j, torch.sinc((m + n * j) / n) ** (2 * order))
                for j in range(-span, span + 1)
            ]
        )
    # sum over aliases of U^2 and, without cancellation, the part from j != 0:
    # prod S_i - prod u_i = (S1 - u1) S2 S3 + u1 (S2 - u2) S3 + u1 u2 (S3 - u3)
    full = [u + a for u, a in zip(u0, alias, strict=True)]
    u2sum = full[0] * full[1] * full[2]
    u2alias = alias[0] * full[1] * full[2] + u0[0] * alias[1] * full[2] + u0[0] * u0[1] * alias[2]
    recip = 2.0 * math.pi * torch.linalg.inv(cell.to(f64)).T  # rows b_i, a_i . b_j = 2 pi d_ij
    a2 = 4.0 * alpha**2
    num = torch.zeros((), dtype=f64, device=device)
    r2sum = torch.zeros((), dtype=f64, device=device)
    r0 = None
    rsum = torch.zeros((), dtype=f64, device=device)
    for mx, ux in axis_images[0]:
        for my, uy in axis_images[1]:
            for mz, uz in axis_images[2]:
                kvec = (
                    mx[..., None] * recip[0] + my[..., None] * recip[1] + mz[..., None] * recip[2]
                )
                k2 = (kvec * kvec).sum(-1)
                safe = torch.where(k2 > 0, k2, torch.ones_like(k2))
                r = torch.where(k2 > 0, 4.0 * math.pi * torch.exp(-k2 / a2) / safe, 0.0 * k2)
                num = num + (ux * uy * uz) * r
                r2sum = r2sum + (r * r).detach()
                rsum = rsum + r
                if (
                    r0 is None
                    and len(axis_images[0]) * len(axis_images[1]) * len(axis_images[2]) == 1
                ):
                    r0 = r.detach()
    den = u2sum * u2sum
    g = num / den
    if r0 is not None:  # no kernel aliases: R^2 (1 - U0^4 / S^2), in a form without cancellation
        u00 = u0[0] * u0[1] * u0[2]
        per = r0 * r0 * u2alias * (u2sum + u00) / den
    else:
        per = (r2sum - num.detach() ** 2 / den).clamp_min(0.0)
    # Q over the full mesh from the half (real-FFT) mesh: the interior of the last axis twice
    weight = torch.full((shape[2] // 2 + 1,), 2.0, dtype=f64, device=device)
    weight[0] = 1.0
    if shape[2] % 2 == 0:
        weight[-1] = 1.0
    vol = torch.linalg.det(cell.detach().to(f64)).abs()
    q = (per * weight).sum() / vol**2
    self_term = (rsum * weight).sum()
    return g.to(cell.dtype), q, self_term.to(cell.dtype)


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
        tp = torchpme()
        self.positions, self.cell = positions, cell
        self.alpha, self.kmax, self.k_e = float(alpha), float(kmax), float(coulomb_constant)
        self.accuracy = float(accuracy)
        dtype, device = positions.dtype, positions.device
        cell = cell.to(dtype)
        if shape is None:
            shape = _cached_mesh_shape(cell, self.alpha, self.accuracy, positions.shape[0])
        self.shape = list(shape)
        ns = torch.tensor(self.shape, device=device)
        self._interp = tp.lib.MeshInterpolator(cell, ns, NODES, method="P3M")
        if filters is None:
            filters = _cached_influence(cell, self.shape, self.alpha)
        self._filters = filters
        self._kfilter, self.error_q, self_term = filters
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
        # self-interaction correction: through the mesh an atom's potential on itself,
        # w_i^T K w_i (K: the mesh kernel between its p^3 nodes), varies with the atom's
        # place in the mesh cell; its gradient is a spurious self force that dominated the
        # force error (measured: ~all of it). Replaced by the exact constant S / V.
        kernel = torch.fft.irfftn(self._kfilter, s=self.shape, norm="forward")
        nodes = (ip.x_indices[:, 0], ip.y_indices[:, 0], ip.z_indices[:, 0])
        diff = [(a[:, None] - a[None, :]) % n for a, n in zip(nodes, self.shape, strict=True)]
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
            filters=tuple(f.detach() for f in self._filters),
        )

    def _convolve(self, mesh: torch.Tensor) -> torch.Tensor:
        """The k-space filter on a (C, nx, ny, nz) mesh: torch-pme's ``KSpaceFilter.forward``
        (FFT, times the influence function, inverse FFT) without its NaN scan of every
        result, which costs a third of the FFTs (its filter is finite by construction)."""
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
