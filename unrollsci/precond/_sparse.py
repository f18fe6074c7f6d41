"""Sparse lower-triangular factors: patterns, differentiable triangular solves, mat-vecs.

A factor is stored as a :class:`LowerPattern` (the CSR structure of a lower-triangular
matrix, with the diagonal present in every row) plus a ``values`` tensor in CSR order.
Everything here is differentiable with respect to ``values`` and the right-hand side.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._validation import check_symmetric, detached_from

__all__ = [
    "LowerPattern",
    "lower_pattern",
    "tri_solve",
    "lower_matvec",
    "check_spd_input",
    "first_not_invertible",
]


def first_not_invertible(d: torch.Tensor) -> int | None:
    """The index of the first entry of ``d`` that is not strictly positive with a finite
    reciprocal (the diagonal of a positive definite preconditioner), None if there is none."""
    bad = ~((d > 0) & torch.isfinite(1.0 / d))
    return int(bad.nonzero()[0, 0]) if bool(bad.any()) else None


@dataclass
class LowerPattern:
    """CSR structure of an ``n x n`` lower-triangular matrix with a full diagonal.

    Attributes:
        n: matrix size.
        crow, col: CSR index arrays (int64 tensors), columns sorted per row.
        row: row index of every stored entry.
        diag: position (in CSR order) of the diagonal entry of each row.
    """

    n: int
    crow: torch.Tensor
    col: torch.Tensor
    row: torch.Tensor
    diag: torch.Tensor

    @property
    def nnz(self) -> int:
        return int(self.col.numel())

    def to(self, device: torch.device | str) -> LowerPattern:
        return LowerPattern(
            self.n,
            self.crow.to(device),
            self.col.to(device),
            self.row.to(device),
            self.diag.to(device),
        )

    def csr(self, values: torch.Tensor) -> torch.Tensor:
        """The torch sparse CSR matrix with these values (no autograd)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta")
            return torch.sparse_csr_tensor(
                self.crow.to(values.device),
                self.col.to(values.device),
                values,
                size=(self.n, self.n),
                check_invariants=False,
            )

    def scipy(self, values: torch.Tensor) -> Any:
        import scipy.sparse as sp

        return sp.csr_matrix(
            (values.detach().cpu().numpy(), self.col.cpu().numpy(), self.crow.cpu().numpy()),
            shape=(self.n, self.n),
        )


def lower_pattern(a: Any, *, keep: np.ndarray | None = None) -> tuple[LowerPattern, np.ndarray]:
    """Lower-triangular pattern of a scipy sparse matrix (diagonal always included).

    Args:
        a: scipy sparse ``(n, n)`` matrix.
        keep: optional boolean mask over ``tril(a)``'s CSR entries (diagonal included); dropped
            off-diagonal entries are removed from the pattern.

    Returns:
        the pattern and the values of ``tril(a)`` on it (numpy, CSR order).
    """
    import scipy.sparse as sp

    n = a.shape[0]
    csr = sp.csr_matrix(a)
    if not csr.has_canonical_format:
        csr = csr.copy()
        csr.sum_duplicates()
    rows_all = np.repeat(np.arange(n), np.diff(csr.indptr))
    low = csr.indices <= rows_all
    rows, cols = rows_all[low], csr.indices[low].astype(np.int64)
    vals = np.asarray(csr.data[low], dtype=np.float64)
    has_diag = np.zeros(n, dtype=bool)
    has_diag[rows[cols == rows]] = True
    if not has_diag.all():  # add explicit zeros on the missing diagonal entries
        miss = np.flatnonzero(~has_diag)
        rows = np.concatenate([rows, miss])
        cols = np.concatenate([cols, miss])
        vals = np.concatenate([vals, np.zeros(miss.size)])
        o = np.lexsort((cols, rows))
        rows, cols, vals = rows[o], cols[o], vals[o]
    if keep is not None:
        keep = keep | (cols == rows)
        rows, cols, vals = rows[keep], cols[keep], vals[keep]
    counts = np.bincount(rows, minlength=n)
    crow = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    diag = crow[1:] - 1  # columns sorted, diagonal is last in each row
    pat = LowerPattern(
        n,
        torch.from_numpy(crow),
        torch.from_numpy(cols),
        torch.from_numpy(rows.astype(np.int64)),
        torch.from_numpy(diag),
    )
    return pat, vals


def _solve(
    pat: LowerPattern, values: torch.Tensor, b: torch.Tensor, transpose: bool
) -> torch.Tensor:
    """Solve ``L y = b`` (or ``L^T y = b``) for ``b: (n, k)`` without autograd."""
    mat = pat.csr(values.detach())
    try:
        return torch.triangular_solve(
            b.contiguous(), mat, upper=False, transpose=transpose
        ).solution
    except (RuntimeError, NotImplementedError):  # pragma: no cover - backend without sparse trsv
        import scipy.sparse.linalg as spla

        m = pat.scipy(values)
        m = m.T.tocsr() if transpose else m
        y = spla.spsolve_triangular(m, b.detach().cpu().numpy(), lower=not transpose)
        return torch.from_numpy(np.asarray(y)).to(b)


class _TriSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, b, pat, transpose):  # type: ignore[override]
        y = _solve(pat, values, b, transpose)
        ctx.save_for_backward(values, y)
        ctx.pat, ctx.transpose = pat, transpose
        return y

    @staticmethod
    def backward(ctx, gy):  # type: ignore[override]
        values, y = ctx.saved_tensors
        pat, transpose = ctx.pat, ctx.transpose
        gb = _TriSolve.apply(values, gy, pat, not transpose)
        gv = None
        if ctx.needs_input_grad[0]:
            row, col = pat.row.to(y.device), pat.col.to(y.device)
            # d/dL_ij of L^{-1} b: -(L^{-T} gy)_i y_j; for the transposed solve swap i, j.
            if transpose:
                gv = -(gb[col] * y[row]).sum(-1)
            else:
                gv = -(gb[row] * y[col]).sum(-1)
        return gv, gb if ctx.needs_input_grad[1] else None, None, None


def tri_solve(
    pat: LowerPattern, values: torch.Tensor, b: torch.Tensor, *, transpose: bool = False
) -> torch.Tensor:
    """Differentiable sparse triangular solve ``L y = b`` (``L^T y = b`` if ``transpose``).

    Args:
        pat: the lower pattern of ``L``.
        values: ``(nnz,)`` values in CSR order.
        b: ``(batch, n)`` right-hand sides.

    Returns:
        ``y: (batch, n)``. The backward pass is another triangular solve, with ``L^T``.
    """
    return _TriSolve.apply(values, b.T, pat, transpose).T


def lower_matvec(
    pat: LowerPattern, values: torch.Tensor, x: torch.Tensor, *, transpose: bool = False
) -> torch.Tensor:
    """``L x`` (or ``L^T x``) for ``x: (batch, n)`` by gather / scatter-add (differentiable)."""
    row, col = pat.row.to(x.device), pat.col.to(x.device)
    src, dst = (row, col) if transpose else (col, row)
    out = x.new_zeros(x.shape)
    return out.index_add(1, dst, x[:, src] * values.to(x.dtype))


def check_spd_input(a: Any, name: str = "A") -> Any:
    """Validate a sparse system matrix and return it as scipy CSR (float64).

    Checks: scipy sparse or torch sparse/dense 2-D, real, square and non-empty, finite,
    symmetric, strictly positive diagonal. (Positive definiteness beyond that is detected by
    the factorization / the CG iteration.)
    """
    import scipy.sparse as sp

    if isinstance(a, torch.Tensor):
        if a.is_complex():
            raise TypeError(f"Expected a real '{name}' (got dtype {a.dtype}).")
        if a.layout == torch.strided:
            if a.dim() != 2:
                raise ValueError(
                    f"Expected '{name}' to be a 2-D matrix (got shape {tuple(a.shape)})."
                )
            a = sp.csr_matrix(a.detach().cpu().double().numpy())
        else:
            coo = a.detach().to_sparse_coo().coalesce().cpu()
            if coo.dim() != 2:
                raise ValueError(f"Expected '{name}' to be a 2-D matrix (got {coo.dim()} dims).")
            idx = coo.indices().numpy()
            a = sp.csr_matrix((coo.values().double().numpy(), (idx[0], idx[1])), shape=coo.shape)
    elif sp.issparse(a):
        if np.iscomplexobj(a.data if hasattr(a, "data") else np.zeros(0)):
            raise TypeError(f"Expected a real '{name}' (got dtype {a.dtype}).")
        src, a = a, sp.csr_matrix(a, dtype=np.float64)
        # never the caller's arrays: canonicalized below, and preconditioners keep the
        # matrix (Chebyshev's mat-vecs, PyAMG's finest level): a later in-place edit of the
        # caller's matrix must not change a preconditioner already built
        a = detached_from(a, src)
    else:
        raise TypeError(
            f"Expected '{name}' to be a scipy sparse matrix or a torch tensor "
            f"(got {type(a).__name__})."
        )
    if a.shape[0] != a.shape[1]:
        raise ValueError(f"Expected '{name}' to be square (got shape {a.shape}).")
    if a.shape[0] == 0:
        raise ValueError(
            f"Expected '{name}' to be a non-empty square matrix (got shape {tuple(a.shape)})."
        )
    a.sum_duplicates()
    a.sort_indices()
    if not np.all(np.isfinite(a.data)):
        n_nan = int(np.isnan(a.data).sum())
        raise ValueError(
            f"Expected '{name}' to be finite (got {n_nan} NaN and "
            f"{int(np.isinf(a.data).sum())} Inf entries)."
        )
    check_symmetric(a, name, hint="Preconditioned CG needs a symmetric positive definite matrix.")
    diag = a.diagonal()
    if np.any(diag <= 0):
        bad = int(np.argmin(diag))
        raise ValueError(
            f"Expected '{name}' to have a strictly positive diagonal, as every SPD matrix "
            f"has (got A[{bad}, {bad}] = {diag[bad]:.3e}; {int((diag <= 0).sum())} entries "
            "<= 0). The matrix is not SPD."
        )
    return a
