"""State a :class:`QEqCalculator` keeps between calls on slowly moving atoms (MD, relaxation).

* :class:`VerletPairs`: the half pair list within ``cutoff + skin``, kept until an atom has
  moved more than ``skin / 2`` (or the cell, periodicity or atoms change), so every pair
  within ``cutoff`` of the current positions is in it; pairs beyond ``cutoff`` get a zero
  kernel value (``hardness_terms`` masks them). With the list: its index tensors on the
  device and the CSR pattern of the matrix (values refilled at each call).
* :class:`DefiniteCertificate`: the polarization-catastrophe check at O(pairs) per call. The
  dense Cholesky of the projected matrix ``Z^T A0 Z - tau I`` proves its smallest eigenvalue
  exceeds ``tau``; for a later ``A`` on the same pair list, ``lambda_min(Z^T A Z) >= tau -
  ||A - A0||_2`` (Weyl), and ``||A - A0||_2`` is at most the largest absolute row sum of
  ``A - A0``, so ``A`` is positive definite on the constraint subspace while that row sum
  stays below ``tau``. Otherwise the dense test runs again (and raises if it fails).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .._compat import quiet_csr
from ._geometry import csr_pattern, half_pairs
from ._hardness import _dense_hardness, _Hardness, _projected_hardness, raise_catastrophe

__all__ = ["VerletPairs", "DefiniteCertificate", "csr_pattern"]

#: lists with fewer pairs keep the scatter mat-vec: a threaded sparse product costs more
#: than it saves on them
CSR_MIN_PAIRS = 4096


class VerletPairs:
    """A half pair list within ``cutoff + skin`` reused while it stays valid (see module)."""

    def __init__(self, cutoff: float, skin: float) -> None:
        self.cutoff, self.skin = float(cutoff), float(skin)
        self.builds = 0
        self._key: Any = None
        self._ref: np.ndarray | None = None
        self.i = self.j = self.shifts = None
        self.pattern: tuple[torch.Tensor, ...] | None = None
        #: per-pair constants, valid as long as this list (cleared at each build)
        self.cache: dict[str, Any] = {}

    def update(
        self,
        pos: np.ndarray,
        cell: np.ndarray,
        pbc: np.ndarray,
        numbers: np.ndarray,
        device: torch.device,
        dtype: torch.dtype,
    ) -> bool:
        """Make the list valid for ``pos``; returns True when it was (re)built."""
        key = (cell.tobytes(), pbc.tobytes(), numbers.tobytes(), device, dtype)
        if self._key == key and self._ref is not None and self._ref.shape == pos.shape:
            d2 = np.einsum("ij,ij->i", pos - self._ref, pos - self._ref).max(initial=0.0)
            if d2 <= (0.5 * self.skin) ** 2 and self.skin > 0:
                return False
        pi, pj, ps = half_pairs(pos, cell, pbc, self.cutoff + self.skin)
        self.i = torch.from_numpy(pi).to(device)
        self.j = torch.from_numpy(pj).to(device)
        self.shifts = torch.from_numpy(ps).to(device=device, dtype=dtype) if ps.any() else None
        self.pattern = None
        if self.i.numel() >= CSR_MIN_PAIRS:
            with quiet_csr():
                self.pattern = csr_pattern(self.i, self.j, len(pos))
        self.cache = {}
        self._ref = pos.copy()
        self._key = key
        self.builds += 1
        return True


def _entry_groups(op: _Hardness) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """How the pairs add into matrix entries, for the certificate's Frobenius norm: None
    when every pair has its own off-diagonal entry; else ``(inv, off, self_pair)``: each
    pair's entry index, which entries are off the diagonal, which pairs are self-images
    (``i == j``, twice on the diagonal as in the matvec)."""
    i, j = op.i, op.j
    self_pair = i == j
    n = int(op.diag0.shape[0])
    key = torch.minimum(i, j) * n + torch.maximum(i, j)
    uniq, inv = torch.unique(key, return_inverse=True)
    if uniq.numel() == key.numel() and not bool(self_pair.any()):
        return None
    return inv, (uniq // n) != (uniq % n), self_pair


class DefiniteCertificate:
    """Proves ``A`` positive definite on ``sum(q) = 0`` before each solve (see module)."""

    #: the dense test tries to certify a margin ``tau = f * min(diag Z^T A Z)``, f in turn
    TAU_FRACTIONS = (0.25, 0.1)

    def __init__(self) -> None:
        self._ref: tuple[Any, ...] | None = None
        self.dense_checks = 0

    def reset(self) -> None:
        self._ref = None

    def check(self, op: _Hardness, same_pairs: bool) -> None:
        """Raise PolarizationCatastropheError unless ``op``'s matrix is certified."""
        w, diag0 = op.w.detach(), op.diag0.detach()
        if self._ref is not None and same_pairs and not op.long_range:
            w0, d0, tau, groups = self._ref
            if w0.shape == w.shape:
                # ||A - A0||_2 <= min(Frobenius norm, max absolute row sum); the Frobenius
                # norm first (two passes), the row sums (scatters) only when it fails
                dw = w - w0
                dd = diag0 - d0
                if groups is None:  # one pair per matrix entry, none on the diagonal
                    frob = torch.sqrt(torch.dot(dd, dd) + 2.0 * torch.dot(dw, dw))
                else:  # periodic images: pairs adding into one entry are summed first
                    inv, off, self_pair = groups
                    entry = dw.new_zeros(off.shape[0]).index_add(0, inv, dw)[off]
                    ddiag = dd.index_add(0, op.i[self_pair], 2.0 * dw[self_pair])
                    frob = torch.sqrt(torch.dot(ddiag, ddiag) + 2.0 * torch.dot(entry, entry))
                if float(frob) < tau:
                    return
                dw, dd = dw.abs(), dd.abs()
                rows = dd.index_add(0, op.i, dw).index_add(0, op.j, dw)
                if float(rows.max()) < tau:
                    return
        self.dense_checks += 1
        n = diag0.shape[0]
        groups = _entry_groups(op)  # for the next calls' Frobenius bound
        if n < 2:
            self._ref = (w.clone(), diag0.clone(), float("inf"), groups)
            return
        m = _projected_hardness(_dense_hardness(op))
        dmin = float(torch.diagonal(m).min())
        eye = torch.eye(n - 1, dtype=m.dtype, device=m.device)
        # one factorization when a margin holds (the usual case): PD with room to spare
        for f in self.TAU_FRACTIONS:
            tau = f * dmin
            if tau > 0 and int(torch.linalg.cholesky_ex(m - tau * eye)[1]) == 0:
                self._ref = (w.clone(), diag0.clone(), tau, groups)
                return
        if int(torch.linalg.cholesky_ex(m)[1]) != 0:
            raise_catastrophe(m, n)
        # PD, no margin: test again next call
        self._ref = (w.clone(), diag0.clone(), 0.0, groups)
