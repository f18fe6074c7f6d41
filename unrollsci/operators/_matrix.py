"""Dense and sparse matrix operators."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from .._compat import quiet_csr
from .._validation import check_device, check_finite, check_tensor
from ._base import LinearOperator, check_dtype_supported, check_real, tensor_key

__all__ = ["MatrixOperator", "SparseOperator", "to_torch_sparse"]


class MatrixOperator(LinearOperator):
    """A dense matrix ``A: (m, n)`` acting on ``x: (batch, n)``.

    Args:
        matrix: ``(m, n)`` real tensor. Pass an ``nn.Parameter`` to learn it. Complex
            matrices are refused (``TypeError``): operators are real-valued.

    ``norm()`` and the matrix's copy in another dtype are cached until the matrix changes:
    replaced, or modified in place through torch (torch's version counter). A change made
    behind torch's back (through a numpy array sharing the memory, ``torch.from_numpy``,
    or ``.data``) is not seen: build a new operator after one.

    Example:
        >>> import torch
        >>> A = MatrixOperator(torch.eye(3))
        >>> A(torch.ones(1, 3))
        tensor([[1., 1., 1.]])
    """

    def __init__(self, matrix: torch.Tensor) -> None:
        super().__init__()
        check_tensor("matrix", matrix, ndim=(2,))
        if matrix.layout != torch.strided:
            raise TypeError(
                f"Expected a dense matrix for MatrixOperator (got layout {matrix.layout}); "
                "use SparseOperator for a sparse one."
            )
        check_real("matrix", matrix)
        check_finite("matrix", matrix)
        if isinstance(matrix, torch.nn.Parameter):
            self.matrix = matrix
            self.cacheable_norm = False
        else:
            self.register_buffer("matrix", matrix)
        self.in_shape, self.out_shape = (matrix.shape[1],), (matrix.shape[0],)

    def _mv(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self._cast("matrix", x).T

    def _rmv(self, y: torch.Tensor) -> torch.Tensor:
        return y @ self._cast("matrix", y)

    def to_dense(
        self, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """A copy of the matrix in ``dtype`` on ``device`` (never the operator's own tensor:
        writing to it leaves the operator alone); differentiable in a learned matrix (see
        :meth:`LinearOperator.to_dense`)."""
        out = self.matrix.to(device=check_device(device) or self.matrix.device, dtype=dtype)
        return out.clone() if out is self.matrix else out


def to_torch_sparse(
    a: Any, *, dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """Convert a scipy sparse matrix or torch sparse/dense tensor to torch sparse CSR."""
    device = check_device(device)
    if isinstance(a, torch.Tensor):
        if a.dim() != 2:
            raise ValueError(
                f"Expected a 2-dimensional matrix for to_torch_sparse (got shape {tuple(a.shape)})."
            )
        with quiet_csr():
            if a.layout == torch.sparse_csr:
                t = a
            elif a.layout == torch.sparse_coo:
                t = a.coalesce().to_sparse_csr()
            elif a.layout == torch.strided:
                t = a.to_sparse_csr()
            else:
                t = a.to_sparse_coo().coalesce().to_sparse_csr()
    else:
        t = _csr_from_scipy(_canonical_csr(a))
    if dtype is not None or device is not None:
        t = t.to(device=device or t.device, dtype=dtype or t.dtype)
    return t


def _canonical_csr(a: Any) -> Any:
    """``a`` as a scipy CSR matrix with sorted, unique column indices per row (a copy only
    where ``a`` is not already one), checked for consistent index arrays."""
    try:
        import scipy.sparse as sp
    except ImportError as exc:  # pragma: no cover - scipy is a dependency
        raise TypeError("scipy is required to convert sparse matrices") from exc
    if not sp.issparse(a):
        raise TypeError(
            f"Expected a scipy sparse matrix or a torch tensor (got {type(a).__name__})."
        )
    csr = sp.csr_matrix(a)
    m, n = csr.shape
    ip, ix = csr.indptr, csr.indices
    # What torch's CSR invariant check would verify, in numpy (several times cheaper).
    if (
        ip.size != m + 1
        or ip[0] != 0
        or ip[-1] > ix.size
        or (m and np.any(np.diff(ip) < 0))
        or (ix.size and (ix.min() < 0 or ix.max() >= n))
    ):
        raise ValueError(f"Expected a valid CSR matrix (inconsistent index arrays, shape {m, n}).")
    if not csr.has_canonical_format:
        csr = csr.copy()  # never reorder the caller's arrays
        csr.sum_duplicates()  # also sorts the indices
    return csr


def _csr_from_scipy(csr: Any) -> torch.Tensor:
    """torch CSR sharing ``csr``'s values (canonical input, see :func:`_canonical_csr`)."""
    data = np.asarray(csr.data)
    if not data.flags.writeable:  # a cached, shared matrix: torch warns on sharing it
        data = data.copy()
    with quiet_csr(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse invariant checks")
        return torch.sparse_csr_tensor(
            torch.from_numpy(csr.indptr.astype(np.int64)),
            torch.from_numpy(csr.indices.astype(np.int64)),
            torch.from_numpy(data),
            size=csr.shape,
            check_invariants=False,
        )


class _ScipyPair:
    """A scipy CSR matrix and its transpose, formed on the first product that needs it
    (an adjoint or a backward pass; never for a forward-only CG). ``key`` is the
    :func:`tensor_key` of the torch matrix it was made from: a pair whose key no longer
    matches (the matrix was modified in place or replaced) is rebuilt."""

    __slots__ = ("a", "_t", "key")

    def __init__(self, a: Any, t: Any = None, key: Any = None) -> None:
        self.a, self._t, self.key = a, t, key

    @property
    def t(self) -> Any:
        if self._t is None:
            self._t = self.a.T.tocsr()
        return self._t


class SparseOperator(LinearOperator):
    """A sparse matrix operator from a ``scipy.sparse`` matrix or a torch sparse tensor.

    Stored as torch CSR (and its transpose, for a fast adjoint). Gradients flow to
    ``x``; the matrix itself is a constant buffer. The operator owns a copy of a scipy
    matrix's entries (changing the caller's matrix afterwards does not change the
    operator); an in-place change of ``op.matrix.values()`` is seen by every product
    and invalidates the cached ``norm()`` and transpose.

    Computes in float32 or float64 only: a float16/bfloat16 matrix or input raises
    ``TypeError`` (the sparse kernels do not support them). Complex matrices are
    refused (``TypeError``): operators are real-valued.

    Args:
        matrix: ``(m, n)`` scipy sparse matrix or torch sparse (COO/CSR) tensor.
        dtype: dtype to store; defaults to the matrix's (float64 for integer data, which
            float32 would round above 2^24).
        copy: ``False`` keeps a canonical scipy matrix's value array instead of copying it
            (for a matrix the caller made for this operator and will not change: a later
            change of its values would change the operator's).

    Example:
        >>> import scipy.sparse as sp, torch
        >>> A = SparseOperator(sp.eye(4, format="csr"))
        >>> A(torch.ones(2, 4, dtype=torch.float64)).sum().item()
        8.0
    """

    supported_dtypes = (torch.float32, torch.float64)
    _derived_buffers = ("matrix_t",)

    def __init__(self, matrix: Any, *, dtype: torch.dtype | None = None, copy: bool = True) -> None:
        super().__init__()
        check_real("matrix", matrix)
        if dtype is not None:
            check_dtype_supported("SparseOperator", dtype, self.supported_dtypes)
        if isinstance(matrix, torch.Tensor):
            if matrix.dim() != 2:
                raise ValueError(
                    f"Expected a 2-dimensional matrix (got shape {tuple(matrix.shape)})."
                )
            if matrix.requires_grad:  # its entries would get no gradient, silently
                raise ValueError(
                    "Expected a sparse matrix that does not require grad: SparseOperator "
                    "holds its matrix as a constant (gradients flow to x only). For "
                    "gradients w.r.t. the entries pass a dense tensor (e.g. to cg), or "
                    "detach it if none are wanted."
                )
            sc, csr = None, to_torch_sparse(matrix, dtype=dtype)
        else:
            sc = _canonical_csr(matrix)
            src = getattr(matrix, "data", None)
            if copy and isinstance(src, np.ndarray) and np.may_share_memory(sc.data, src):
                sc = sc.copy()  # own the entries: the caller may change its matrix later
            csr = to_torch_sparse(_csr_from_scipy(sc), dtype=dtype)
        if sc is None or not np.isfinite(sc.data).all():  # numpy's check is the cheap one
            check_finite("matrix", csr)
        if csr.dim() != 2:
            raise ValueError(f"Expected a 2-dimensional sparse matrix (got {csr.dim()} dims).")
        if not csr.is_floating_point():  # integer entries: float64 keeps them exact
            csr = csr.to(torch.float64)
        check_dtype_supported("SparseOperator", csr.dtype, self.supported_dtypes)
        self.register_buffer("matrix", csr)
        # A^T is formed on the first adjoint product only (CG never needs it, and forming
        # it is not free on large matrices) and is not saved.
        self.register_buffer("matrix_t", None, persistent=False)
        self._matrix_t_key: Any = None
        m, n = csr.shape
        self.in_shape, self.out_shape = (n,), (m,)
        if sc is not None and csr.device.type == "cpu" and csr.dtype in _SCIPY_DTYPES:
            # CPU products go through scipy: reuse the index arrays at hand, with the
            # torch buffer's own values (shared memory) rather than converting the torch
            # copy back on the first product.
            vals = csr.values().detach().numpy()
            pair = sp_csr((vals, sc.indices, sc.indptr), shape=sc.shape)
            self._cast_cache[("scipy", csr.dtype, csr.device)] = _ScipyPair(
                pair, key=tensor_key(csr)
            )

    def _mv(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dtype in _SCIPY_DTYPES:
            return _ScipyMatmul.apply(x, self._scipy_pair(x.dtype), False)
        return _spmm(self._cast("matrix", x), x)

    def _rmv(self, y: torch.Tensor) -> torch.Tensor:
        if y.device.type == "cpu" and y.dtype in _SCIPY_DTYPES:
            return _ScipyMatmul.apply(y, self._scipy_pair(y.dtype), True)
        key = tensor_key(self.matrix)
        if self.matrix_t is None or self._matrix_t_key != key:
            with torch.inference_mode(False):  # kept across calls: never an inference tensor
                self.matrix_t = _transpose_csr(self.matrix)
            self._matrix_t_key = key
        return _spmm(self._cast("matrix_t", y), y)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # checkpoints written before A^T became a lazy, unsaved buffer still carry it
        state_dict.pop(prefix + "matrix_t", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _scipy_pair(self, dtype: torch.dtype) -> _ScipyPair:
        """scipy CSR copy of A in ``dtype`` and its lazy transpose (cached until the matrix
        changes; CPU mat-vecs use them)."""
        key = ("scipy", dtype, self.matrix.device)
        src = tensor_key(self.matrix)
        pair = self._cast_cache.get(key)  # type: ignore[call-overload]
        if pair is None or pair.key != src:
            view = self._scipy_view().astype(_SCIPY_DTYPES[dtype], copy=False)
            pair = _ScipyPair(view, key=src)
            self._cast_cache[key] = pair  # type: ignore[index]
        return pair

    def to_dense(
        self, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """The matrix as a dense tensor in ``dtype`` on ``device`` (see
        :meth:`LinearOperator.to_dense`)."""
        dense = self.matrix.to_dense()
        return dense.to(device=check_device(device) or dense.device, dtype=dtype)

    def to_scipy(self, dtype: Any = None) -> Any:
        """A copy of the matrix as ``scipy.sparse.csr_matrix`` (in ``dtype``, a numpy or torch
        floating dtype, if given; default: the matrix's own). The copy owns its arrays:
        changing it (``B.data *= 2``, ``B.eliminate_zeros()``) leaves the operator alone."""
        from ._scipy import numpy_dtype

        view = self._scipy_view()
        return view.copy() if dtype is None else view.astype(numpy_dtype(dtype), copy=True)

    def _scipy_view(self) -> Any:
        """The matrix as ``scipy.sparse.csr_matrix`` sharing the buffer's arrays where it is
        on the CPU (internal: the products' scipy copy; never hand it out, see
        :meth:`to_scipy`)."""
        import scipy.sparse as sp

        m = self.matrix
        return sp.csr_matrix(
            (
                m.values().detach().cpu().numpy(),
                m.col_indices().cpu().numpy(),
                m.crow_indices().cpu().numpy(),
            ),
            shape=tuple(m.shape),
        )


_SCIPY_DTYPES = {torch.float64: np.float64, torch.float32: np.float32}


def sp_csr(arrays: Any, shape: tuple[int, int]) -> Any:
    """``scipy.sparse.csr_matrix((data, indices, indptr), shape)`` without copies."""
    import scipy.sparse as sp

    return sp.csr_matrix(arrays, shape=shape, copy=False)


class _ScipyMatmul(torch.autograd.Function):
    """``x @ A^T`` for CPU tensors through scipy's CSR kernels, differentiable in ``x``.

    Used because torch's CPU CSR kernels are slower than scipy's and degrade badly with
    several OpenMP threads on a busy machine (measurements: docs/solvers.md, "Sparse
    products on the CPU"). The backward pass is the same product with ``A^T``, itself
    differentiable, so higher derivatives work too.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, pair: _ScipyPair, transpose: bool):  # type: ignore[no-untyped-def, override]
        ctx.pair, ctx.transpose = pair, transpose
        return torch.from_numpy(_rows_times(pair.t if transpose else pair.a, x.detach().numpy()))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[no-untyped-def, override]
        return _ScipyMatmul.apply(grad.contiguous(), ctx.pair, not ctx.transpose), None, None


#: rows of ``x`` per call of scipy's multi-vector CSR kernel in :func:`_rows_times`, for
#: batches of at least ``_BLOCKED_ROWS`` rows and ``_BLOCKED_ENTRIES`` entries (a batch
#: that does not fit in a core's cache); smaller ones: one call
_ROWS_PER_CALL = 4
_BLOCKED_ROWS = 8
_BLOCKED_ENTRIES = 1 << 18


def _rows_times(a: Any, x: np.ndarray) -> np.ndarray:
    """``x @ a.T`` (C-contiguous, ``(batch, m)``) for scipy CSR ``a: (m, n)`` and ``x:
    (batch, n)``, by scipy's multi-vector kernel on :data:`_ROWS_PER_CALL` rows at a time
    (batches of at least :data:`_BLOCKED_ROWS` rows and :data:`_BLOCKED_ENTRIES` entries;
    others in one call on the whole batch).

    The kernel wants the vectors as the columns of a C-contiguous ``(n, k)`` array: on a
    whole large batch the two transposed copies and the kernel's reads over ``k``
    interleaved vectors cost more than the products themselves, while a block of 4 rows
    keeps the copies in cache and still reads the matrix once per 4 vectors (measured:
    ``benchmarks/spmm.py``). Each output entry is the same sum in the same order as the
    kernel over the whole batch (bit-identical results)."""
    b = x.shape[0]
    if b < _BLOCKED_ROWS or x.size < _BLOCKED_ENTRIES:
        return np.ascontiguousarray((a @ x.T).T)
    out = np.empty((b, a.shape[0]), dtype=np.result_type(a.dtype, x.dtype))
    for s in range(0, b, _ROWS_PER_CALL):
        out[s : s + _ROWS_PER_CALL] = (a @ np.ascontiguousarray(x[s : s + _ROWS_PER_CALL].T)).T
    return out


def _transpose_csr(csr: torch.Tensor) -> torch.Tensor:
    return csr.to_sparse_coo().t().coalesce().to_sparse_csr()


def _spmm(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(a @ x.T).T`` for CSR ``a: (m, n)`` and dense ``x: (batch, n)``.

    On the CPU, torch's CSR-times-dense-matrix kernel is slower per column than its CSR
    mat-vec (docs/solvers.md, "Sparse products on the CPU"), so small batches (up to 64
    columns) go column by column there.
    """
    if x.device.type == "cpu" and x.shape[0] <= 64:
        return torch.stack([torch.mv(a, xi) for xi in x])
    return (a @ x.T).T
