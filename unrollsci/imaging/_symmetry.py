"""Symmetries of the parallel-beam geometry, and self-ensembling a reconstruction network."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._validation import check_batch, check_tensor
from ..operators._radon import Radon

__all__ = ["RadonSymmetry", "radon_symmetries", "self_ensemble"]


@dataclass(frozen=True)
class RadonSymmetry:
    """A symmetry ``g`` of the square about the rotation centre, with ``radon(g x) = P radon(x)``.

    ``image``: permutation of the ``N * N`` pixels (``(g x).flatten()[i] = x.flatten()[image[i]]``);
    ``sinogram``: the matching permutation ``P`` of the ``n_angles * n_det`` bins;
    ``inverse``: the pixel permutation of ``g^-1``.
    """

    name: str
    image: torch.Tensor
    sinogram: torch.Tensor
    inverse: torch.Tensor


def _reflect(n: int, c: int) -> torch.Tensor:
    """Indices of the reflection ``i -> 2c - i`` (mod ``n``) about index ``c``."""
    return (2 * c - torch.arange(n)) % n


def _image_perm(n: int, flip_rows: bool, flip_cols: bool, transpose: bool) -> torch.Tensor:
    idx = torch.arange(n * n).reshape(n, n)
    r = _reflect(n, n // 2)
    if flip_rows:
        idx = idx[r]
    if flip_cols:
        idx = idx[:, r]
    if transpose:
        idx = idx.T
    return idx.reshape(-1)


def radon_symmetries(radon: Radon, *, tol: float = 1e-9, seed: int = 0) -> list[RadonSymmetry]:
    """The symmetries of the square (dihedral group D4) that ``radon`` maps exactly.

    Each candidate ``g`` (reflections of rows and columns about the rotation centre
    ``N // 2``, transposition, and their products) is kept if some permutation ``P``
    of the sinogram bins (each angle taken from one angle, detector axis as is,
    reversed, or reflected about its centre) satisfies ``radon(g x) = P radon(x)`` to
    ``tol`` (relative, float64) on random images supported in the disk of radius
    ``N/2 - 2``. For even ``N`` the reflections about index ``N // 2`` are not
    symmetric at the border (index 0 has no mirror), so the relation is exact for
    images that vanish within two pixels of the reconstruction circle (phantoms of
    :func:`random_ellipses` lie within radius ``0.9 N/2``, inside for ``N >= 40``).
    An even number of angles evenly spaced over 180 degrees gives all 8; an odd
    number the 4 without quarter turns; any angle set the half turn.

    Returns:
        The symmetries found, the identity first.

    Example:
        >>> from unrollsci.imaging import Radon
        >>> len(radon_symmetries(Radon(16, 8)))
        8
    """
    if not isinstance(radon, Radon):
        raise TypeError(f"Expected a Radon operator (got {type(radon).__name__}).")
    n, n_ang, n_det = radon.image_size, radon.n_angles, radon.n_detectors
    gen = torch.Generator().manual_seed(seed)
    i = torch.arange(n) - n // 2
    inner = (i[:, None] ** 2 + i[None, :] ** 2) <= (n / 2 - 2) ** 2
    x = torch.rand(3, n, n, generator=gen, dtype=torch.float64) * inner
    r64 = Radon(n, radon.angles.detach().cpu().double(), circle=radon.circle)
    y = r64(x)
    det = torch.arange(n_det)
    det_maps = (det, det.flip(0), _reflect(n_det, n_det // 2))
    cand = torch.stack([y[:, :, d] for d in det_maps], 2)  # (3, angle, detector map, det)
    scale = float(y.abs().max())
    found = []
    for fr in (False, True):
        for fc in (False, True):
            for tr in (False, True):
                perm = _image_perm(n, fr, fc, tr)
                yg = r64(x.reshape(3, -1)[:, perm].reshape(3, n, n))
                sino = []
                for k in range(n_ang):
                    err = (cand - yg[:, k, None, None, :]).abs().amax(dim=(0, 3))
                    j, d = divmod(int(err.argmin()), len(det_maps))
                    if float(err[j, d]) > tol * scale:
                        break
                    sino.append(j * n_det + det_maps[d])
                else:
                    name = "".join(
                        s for s, on in (("flip_rows ", fr), ("flip_cols ", fc), ("T", tr)) if on
                    ).strip()
                    inv = torch.argsort(perm)
                    found.append(RadonSymmetry(name or "identity", perm, torch.cat(sino), inv))
    return found


def self_ensemble(
    model: torch.nn.Module,
    y: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    symmetries: list[RadonSymmetry] | int | None = None,
) -> torch.Tensor:
    """Average ``g^-1 model(P_g y)`` over symmetries ``g`` of the geometry (test-time ensemble).

    Each symmetry turns the data into the (exact) data of the transformed object
    (:func:`radon_symmetries`), the network reconstructs it, and the result is turned
    back. The ensemble keeps the network's guarantees: every term is zero outside the
    (transformed back) support mask, so the average is too; and since ``P_g`` and
    ``g`` are permutations (isometries), the ensemble's Lipschitz constant is at most
    the network's, so :func:`~unrollsci.imaging.lipschitz_bound` of the model still
    certifies it. It costs one network evaluation per symmetry (batched together).

    Args:
        model: an :class:`~unrollsci.imaging.UnrolledCT` (any module with a ``radon``
            attribute, called as ``model(y, mask=...)``).
        y: sinograms ``(batch, n_angles, n_det)``.
        mask: support masks ``(N, N)`` or ``(batch, N, N)``; default the model's mask.
        symmetries: a list from :func:`radon_symmetries`, or the number of them to use
            (the first ones; default all).

    Example:
        >>> import torch
        >>> from unrollsci.imaging import Radon, UnrolledCT
        >>> op = Radon(16, 8)
        >>> model = UnrolledCT(op, n_layers=1, channels=2)
        >>> self_ensemble(model, torch.rand(2, 8, 16), symmetries=2).shape
        torch.Size([2, 16, 16])
    """
    check_tensor("y", y, ndim=(3,))
    check_batch("y", y)
    radon = getattr(model, "radon", None)
    if not isinstance(radon, Radon):
        raise TypeError(
            f"Expected a model with a 'radon' attribute, e.g. UnrolledCT (got "
            f"{type(model).__name__})."
        )
    if isinstance(symmetries, (bool, float)):
        raise TypeError(
            f"Expected 'symmetries' to be None, an int or a list of symmetries (got "
            f"{symmetries!r})."
        )
    if symmetries is None or isinstance(symmetries, int):
        # computed once per model and geometry (a search over the 8 candidates); keyed on
        # the geometry: a model whose radon changed gets the new geometry's symmetries
        angles = radon.angles.detach().cpu().double().reshape(-1).tolist()
        key = (radon.image_size, radon.n_detectors, bool(radon.circle), tuple(angles))
        memo = getattr(model, "_symmetries", None)
        if isinstance(memo, tuple) and len(memo) == 2 and memo[0] == key:
            cached = memo[1]
        else:
            cached = radon_symmetries(radon)
            model._symmetries = (key, cached)
        count = len(cached) if symmetries is None else int(symmetries)
        if not 1 <= count <= len(cached):
            raise ValueError(f"Expected 1 <= symmetries <= {len(cached)} (got {count}).")
        symmetries = cached[:count]
    b, n = y.shape[0], radon.image_size
    if mask is None:
        mask = model.mask
    from ._unrolled import check_support_mask

    mask = check_support_mask(mask, n, b).to(y.device)
    mask = mask.expand(b, n, n)  # (N, N) and (1, N, N) broadcast over the batch
    flat_y, flat_m = y.reshape(b, -1), mask.reshape(b, -1)
    total = None
    for s in symmetries:  # one batch per symmetry: a k-fold batch runs slower per image
        ys = flat_y[:, s.sinogram.to(y.device)].reshape(y.shape)
        ms = flat_m[:, s.image.to(y.device)].reshape(b, n, n)
        out = model(ys, mask=ms).reshape(b, n * n)[:, s.inverse.to(y.device)]
        total = out if total is None else total + out
    return (total / len(symmetries)).reshape(b, n, n)
