"""The P3M mesh of :mod:`._pme`: the charge assignment, the optimal influence function,
its error estimate and the choice of the mesh from ``ewald_accuracy``."""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = [
    "MAX_MESH_POINTS",
    "NODES",
    "assignment",
    "influence",
    "mesh_shape",
    "mesh_target",
]

#: charge-assignment order (nodes per axis) of the P3M mesh: at ``ewald_accuracy`` 1e-8
#: order 7 needs ~16x fewer mesh points than order 5 (the error estimate falls as ``h^p``)
NODES = 7
#: the error model's exponent ``RMS error ~ h^(p + 1/2)`` (measured ``h^5.5`` for order 5),
#: only used to step the mesh search (:func:`mesh_shape`), never to accept a mesh
_ERROR_EXPONENT = NODES + 0.5
#: the largest PME mesh :func:`mesh_shape` builds (float64: 2 GiB per mesh)
MAX_MESH_POINTS = 2**28


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
    cell: torch.Tensor,
    alpha: float,
    accuracy: float,
    n_atoms: int,
    max_points: float = MAX_MESH_POINTS,
) -> tuple[list[int], float]:
    """The coarsest FFT-friendly mesh (points per cell vector, each at least ``2 NODES``)
    found whose estimated mesh error meets :func:`mesh_target`, and that estimate ``Q``.

    A search over the spacing ``h``: start at ``alpha h = 0.5``, evaluate ``Q``
    (:func:`influence`), refine by the factor the error model (``Q ~ h^(2 p + 1)``) asks
    for until ``Q`` meets the target, then try one step coarser. ``Q V`` is a sum over
    k-space that depends on the cell's size only through the density of mesh frequencies,
    so a cell longer than ``8 / alpha`` is searched on the same cell scaled down to that
    size (target ``Q V`` unchanged), and the spacing found is used for the real cell (the
    returned ``Q`` is then the scaled cell's ``Q`` times its volume over the real one). The
    mesh is chosen by the estimate, not by a bound: the estimate assumes charges placed
    independently of each other and of the mesh (tests/chem/test_pme_accuracy.py checks
    the result against the explicit sum). Raises ``ValueError`` where the mesh would have
    more than ``max_points`` points."""
    cell = cell.detach().to(torch.float64)
    lengths = cell.norm(dim=1).tolist()
    scale = min(1.0, 8.0 / alpha / min(lengths))
    work = cell * scale
    vol = float(torch.linalg.det(cell).abs())
    vol_work = vol * scale**3
    target = mesh_target(accuracy, alpha, n_atoms) * vol / vol_work

    def shape_for(h: float, ls: list[float]) -> list[int]:
        return [max(_good_size(math.ceil(length / h)), 2 * NODES) for length in ls]

    def q_at(h: float) -> float:
        shape = shape_for(h, lengths)
        if math.prod(shape) > max_points:
            raise ValueError(
                f"PME at ewald_accuracy={accuracy:g} would need a mesh of more than "
                f"{max_points:.2e} points for this cell ({shape} and finer); use "
                "ewald_method='ewald' or a looser ewald_accuracy."
            )
        work_shape = shape if scale == 1.0 else shape_for(h, [x * scale for x in lengths])
        return float(influence(work, work_shape, alpha)[1])

    h = 0.5 / alpha
    for _ in range(40):
        q = q_at(h)
        if q <= target:
            coarse = h * 1.08
            if h < 0.5 / alpha and shape_for(coarse, lengths) != shape_for(h, lengths):
                qc = q_at(coarse)
                if qc <= target:
                    h, q = coarse, qc
            break
        factor = (q / target) ** (1.0 / (2.0 * _ERROR_EXPONENT))
        h = h / max(factor * 1.02, 1.05)
    return shape_for(h, lengths), q * vol_work / vol


_SHAPES: dict[tuple[Any, ...], list[int]] = {}


def _cached_mesh_shape(
    cell: torch.Tensor, alpha: float, accuracy: float, n: int, max_points: float | None = None
) -> list[int]:
    """:func:`mesh_shape` remembered per cell (to 1e-6 Angstrom), ``alpha``, accuracy and
    atom count: an MD run or a relaxation at fixed cell searches once. ``max_points``:
    raise ``ValueError`` above it (default :data:`MAX_MESH_POINTS`)."""
    limit = MAX_MESH_POINTS if max_points is None else max_points
    c = cell.detach().to(torch.float64).cpu()
    key = (tuple(round(float(v), 6) for v in c.reshape(-1)), alpha, accuracy, n)
    if key not in _SHAPES:
        if len(_SHAPES) > 64:
            _SHAPES.clear()
        _SHAPES[key] = mesh_shape(c, alpha, accuracy, n, limit)[0]
    if math.prod(_SHAPES[key]) > limit:
        raise ValueError(f"the PME mesh {_SHAPES[key]} has more than {limit:.2e} points")
    return _SHAPES[key]


_FILTERS: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _cached_influence(
    cell: torch.Tensor, shape: list[int], alpha: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`influence`, remembered for a cell that needs no gradient (fixed-cell MD and
    relaxations compute it once; the key is the cell's values, dtype and device). The
    filters are built outside ``torch.inference_mode()``: a solve under it leaves later
    autograd calls (forces) on the same cell working."""
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
        with torch.inference_mode(False):  # constants: no inference tensors cached
            _FILTERS[key] = influence(cell.clone(), shape, alpha)
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


def assignment(
    positions: torch.Tensor, cell: torch.Tensor, shape: list[int], order: int = NODES
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The P3M charge assignment of order ``order``: each atom's weights on its
    ``order^3`` mesh points (the product over the cell vectors of the cardinal B-spline
    ``M_p`` of order ``p = order``, centred on the atom: Hockney and Eastwood's assignment
    functions, whose Fourier transform is ``sinc^p`` as :func:`influence` assumes; built by
    the B-spline recurrence ``M_q(x) = (x M_{q-1}(x) + (q - x) M_{q-1}(x - 1)) / (q - 1)``
    as in Essmann et al., J. Chem. Phys. 103, 8577 (1995)), differentiable in positions
    and cell.

    Returns ``(w, idx, offsets)``: ``w`` (N, p^3) the weights (each row sums to 1), ``idx``
    (N, p^3) the flat indices of the mesh points, ``offsets`` (p^3, 3) every node's shift
    per cell vector from the atom's first node (the same for every atom).
    """
    p = order
    device = positions.device
    n = torch.tensor(shape, dtype=positions.dtype, device=device)
    u = positions @ torch.linalg.inv(cell.to(positions.dtype)) * n - 0.5 * p  # (N, 3)
    base = torch.floor(u.detach())
    f = u - base  # in [0, 1): the weight of node k is M_p(f + p - 1 - k)
    c = [torch.ones_like(f)] + [torch.zeros_like(f)] * (p - 1)
    for q in range(2, p + 1):
        c = [((f + m) * c[m] + (q - f - m) * (c[m - 1] if m else 0.0)) / (q - 1) for m in range(p)]
    per_axis = torch.stack(c[::-1], dim=1)  # (N, p, 3): node k = base + 1 + k
    k = torch.arange(p, device=device)
    offsets = torch.stack(torch.meshgrid(k, k, k, indexing="ij"), dim=-1).reshape(-1, 3)
    w = (
        per_axis[:, offsets[:, 0], 0]
        * per_axis[:, offsets[:, 1], 1]
        * per_axis[:, offsets[:, 2], 2]
    )
    first = base.to(torch.int64) + 1  # (N, 3)
    ni = torch.tensor(shape, device=device)
    node = (first[:, None, :] + offsets[None, :, :]) % ni  # (N, p^3, 3)
    idx = (node[..., 0] * shape[1] + node[..., 1]) * shape[2] + node[..., 2]
    return w, idx.contiguous(), offsets
