"""The linear operator abstraction: ``op(x)``, ``op.adjoint(y)``, ``op.norm()``.

The composition operators that ``A @ B``, ``A + B``, ``c * A`` and ``A.T`` return live
in :mod:`._compose` (imported when first used: they subclass :class:`LinearOperator`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .._validation import (
    check_batch,
    check_count,
    check_device,
    check_positive,
    check_same_device,
    check_tensor,
)
from ._checks import check_dtype_supported, check_real, tensor_key
from ._compressed import pack_tree, unpack_tree
from ._lanczos import lanczos_top


class LinearOperator(nn.Module):
    """A batched linear map ``A: R^{in_shape} -> R^{out_shape}``.

    Signals carry a leading batch dimension: ``op(x)`` takes ``x`` of shape
    ``(batch, *in_shape)`` and returns ``(batch, *out_shape)``; ``op.adjoint(y)``
    goes back; both validate their input on every call. Solver internals that already
    validated at their public entry use :meth:`mv` / :meth:`rmv` (no checks). Subclasses
    implement :meth:`_mv` and :meth:`_rmv`, and
    set ``in_shape`` / ``out_shape`` (per-sample shapes, without the batch
    dimension). Device and dtype follow the input: buffers are cast to the input's
    device and dtype on the fly (see :meth:`_cast`).

    Operators compose: ``A @ B`` (apply B then A), ``A + B``, ``2.0 * A``, ``A.T``.

    Example:
        >>> import torch
        >>> from unrollsci.operators import MatrixOperator
        >>> A = MatrixOperator(torch.randn(3, 5, dtype=torch.float64))
        >>> A(torch.ones(2, 5, dtype=torch.float64)).shape
        torch.Size([2, 3])
    """

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    #: Whether ``norm()`` may cache its value (false for operators with trainable state).
    cacheable_norm: bool = True
    #: dtypes the operator can compute in (None: any real floating dtype).
    supported_dtypes: tuple[torch.dtype, ...] | None = None
    #: Buffers derived from the others (formed lazily), left out of the norm cache's key.
    _derived_buffers: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self._norm_cache: tuple[Any, float] | None = None
        self._cast_cache: dict[Any, dict[str, torch.Tensor]] = {}

    # ----------------------------------------------------------------- shapes
    @property
    def shape(self) -> tuple[int, int]:
        """``(m, n)``: number of output and input entries per sample."""
        return (math.prod(self.out_shape), math.prod(self.in_shape))

    @property
    def device(self) -> torch.device | None:
        """Device of the operator's own tensors, or None if it holds none."""
        for t in list(self.buffers()) + list(self.parameters()):
            return t.device
        return None

    @property
    def dtype(self) -> torch.dtype | None:
        """dtype of the operator's first floating-point tensor, or None if it holds none.

        Boolean and integer tensors (a :class:`~unrollsci.operators.Mask`'s pattern, an index)
        do not count: ``Mask(...) @ Convolution(float64 kernel)`` is float64, not bool."""
        for t in list(self.buffers()) + list(self.parameters()):
            if t.is_floating_point():
                return t.dtype
        return None

    # ------------------------------------------------------------ application
    def _mv(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _rmv(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mv(self, x: torch.Tensor) -> torch.Tensor:
        """``A x`` with no checks: for use inside solvers after the public entry validated.

        ``op(x)`` checks on every call that ``x`` is a real floating tensor of shape
        ``(batch, *in_shape)`` with ``batch >= 1``, of a supported dtype and on the
        operator's device (and runs ``nn.Module`` hooks). ``mv`` skips all of that (and
        the hooks): ``x`` must already be such a tensor, exactly ``(batch, *in_shape)``
        (no channel axis). Same numbers as ``op(x)``; differentiable.
        """
        return self._mv(x)

    def rmv(self, y: torch.Tensor) -> torch.Tensor:
        """``A^T y`` with no checks (see :meth:`mv`): ``y`` exactly ``(batch, *out_shape)``."""
        return self._rmv(y)

    def _check_input(self, name: str, x: torch.Tensor, shape: tuple[int, ...]) -> None:
        check_tensor(name, x)
        check_real(name, x)
        if tuple(x.shape[1:]) != tuple(shape):
            raise ValueError(
                f"Expected '{name}' of shape (batch, {', '.join(map(str, shape))}) for "
                f"{type(self).__name__} (got shape {tuple(x.shape)})."
            )
        check_batch(name, x)
        check_dtype_supported(type(self).__name__, x.dtype, self.supported_dtypes)
        dev = self.device
        if dev is not None and dev != x.device:
            check_same_device(operator=torch.empty(0, device=dev), **{name: x})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the operator to ``x: (batch, *in_shape)``."""
        self._check_input("x", x, self.in_shape)
        return self._mv(x)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Apply the adjoint to ``y: (batch, *out_shape)``."""
        self._check_input("y", y, self.out_shape)
        return self._rmv(y)

    def gram(self, x: torch.Tensor) -> torch.Tensor:
        """``A^T A x``."""
        return self.adjoint(self(x))

    @property
    def T(self) -> LinearOperator:  # noqa: N802 - mathematical notation
        """The adjoint as an operator."""
        from ._compose import AdjointOperator

        return AdjointOperator(self)

    def _cast(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """Return buffer ``name`` on ``like``'s device and dtype (cached).

        The cached copy is made outside ``torch.inference_mode()``: a copy first made
        under it would be an inference tensor, which later autograd calls cannot save
        for backward (the cache is keyed on the source buffer, not on the grad mode).
        """
        t = getattr(self, name)
        if t.device == like.device and t.dtype == like.dtype:
            return t
        if t.requires_grad:  # trainable: cast inside the graph, never cache
            return t.to(device=like.device, dtype=like.dtype)
        key = (like.device, like.dtype)
        slot = self._cast_cache.setdefault(key, {})
        cached = slot.get(name)
        src = tensor_key(t)  # identity and version: a replaced or modified buffer is recast
        if cached is None or getattr(cached, "_src_key", None) != src:
            with torch.inference_mode(False):  # no inference tensor in the cache
                cached = t.detach().to(device=like.device, dtype=like.dtype)
            cached._src_key = src  # type: ignore[attr-defined]
            slot[name] = cached
        return cached

    def __getstate__(self) -> dict[str, Any]:
        """Pickled and deep-copied state (``torch.save`` of an operator, format-1
        checkpoints, DataLoader workers, ``copy.deepcopy``): without the caches of casts
        and of ``norm()``, which are keyed on this operator's tensors. Sparse CSR/CSC
        buffers, which torch can neither deep-copy (they have no storage) nor rebuild in
        another process without printing its sparse-CSR notices, are stored as their index
        and value tensors and rebuilt by :meth:`__setstate__`: a copy shares no tensor
        with the original and computes the same products."""
        state = dict(super().__getstate__())
        state["_cast_cache"], state["_norm_cache"] = {}, None
        if state.get("_buffers"):
            state["_buffers"] = type(state["_buffers"])(pack_tree(dict(state["_buffers"])))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore a pickled state (see :meth:`__getstate__`)."""
        if state.get("_buffers"):
            state = dict(state)
            state["_buffers"] = type(state["_buffers"])(unpack_tree(dict(state["_buffers"])))
        super().__setstate__(state)

    def _norm_key(self) -> tuple[Any, ...]:
        """What ``norm()``'s cached value depends on: identity, version counter, storage,
        shape, dtype and device of every tensor of this operator and its sub-operators
        (an in-place change such as ``matrix.mul_(10)`` bumps the version counter), plus
        the scalars of :meth:`_norm_state`."""
        parts: list[Any] = []
        for mod in self.modules():
            skip = getattr(mod, "_derived_buffers", ())
            for name, t in list(mod._buffers.items()) + list(mod._parameters.items()):
                if t is not None and name not in skip:
                    parts.append((name, tensor_key(t)))
            if isinstance(mod, LinearOperator):
                parts.append(mod._norm_state())
        return tuple(parts)

    def _norm_state(self) -> Any:
        """Non-tensor state the operator's norm depends on (e.g. a scale factor)."""
        return ()

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def,override]
        # nn.Module._apply backs .to()/.double()/.cuda(): moving invalidates cached casts.
        # Operators are not models (docs/architecture.md, "dtypes"): a dtype cast of a
        # model holding this operator (model.float()) must not round the operator's stored
        # matrix, which other models and solvers may share; the operator computes in each
        # input's dtype through its cached casts anyway. So its own floating buffers move
        # device but keep their dtype; learned parameters follow the cast as any weight.
        self._cast_cache = {}
        mine = {id(t) for t in self._buffers.values() if t is not None and t.is_floating_point()}

        def keep_dtype(t: torch.Tensor) -> torch.Tensor:
            if id(t) not in mine:
                return fn(t)
            # where fn would take it, learned on an empty tensor: no cast copy of the matrix
            probe = fn(torch.empty(0, dtype=t.dtype, device=t.device))
            return fn(t) if probe.dtype == t.dtype else t.to(device=probe.device)

        return super()._apply(keep_dtype, recurse)

    # ------------------------------------------------------------------ norm
    def norm(
        self,
        *,
        max_iter: int = 2000,
        tol: float = 1e-8,
        krylov_dim: int = 40,
        recompute: bool = False,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
    ) -> float:
        """Largest singular value ``||A||_2`` by restarted Lanczos on ``A^T A``.

        Each cycle builds a Krylov basis of ``krylov_dim`` vectors (fully
        re-orthogonalized) and restarts from the top Ritz vector; it stops when the
        Ritz residual ``||A^T A v - s^2 v|| <= tol * s^2``, which bounds the error of
        ``s^2`` by ``tol * s^2`` (Weyl), so clustered singular values cannot stop it
        early as a change-based power iteration would. ``max_iter`` counts
        applications of ``A^T A``. The value is cached unless the operator has
        trainable state or ``recompute=True``. A run that ends at ``max_iter`` warns
        (``ConvergenceWarning``) and returns the estimate, a lower bound. Where
        ``||A||^2`` overflows or underflows ``dtype``, the run is repeated on ``s A`` with
        ``s`` a power of two near ``1 / max|A v|`` (exact scaling) and ``||s A|| / s``
        returned; a result that is still not finite raises ``ValueError``.
        """
        max_iter = check_count("max_iter", max_iter)
        tol = check_positive("tol", tol, allow_zero=True)
        key = self._norm_key() if self.cacheable_norm else None
        if (
            self._norm_cache is not None
            and self.cacheable_norm
            and not recompute
            and self._norm_cache[0] == key
        ):
            return self._norm_cache[1]
        device = self.device or torch.device("cpu")
        gen = torch.Generator(device="cpu").manual_seed(seed)
        n = math.prod(self.in_shape)
        kdim = max(1, min(krylov_dim, n))
        v = torch.randn(n, generator=gen, dtype=dtype).to(device)
        shape = (1, *self.in_shape)

        def gram(u: torch.Tensor) -> torch.Tensor:
            return self.adjoint(self(u.reshape(shape))).reshape(-1)

        opts = {"max_iter": max_iter, "tol": tol, "kdim": kdim}
        est, converged = lanczos_top(gram, v, **opts)
        scale = 1.0
        if not math.isfinite(est) or est < torch.finfo(dtype).tiny ** 0.5:
            # ||A||^2 overflowed or (nearly) underflowed in dtype: run again on (s A)^T (s A)
            # with s a power of two near 1 / max|A v| (exact scaling: the same iterations;
            # the largest entry, as a 2-norm would over- or underflow itself)
            with torch.no_grad():
                probe = float(self(v.reshape(shape) / v.norm()).abs().max())
            if not math.isfinite(probe):
                raise ValueError(
                    f"{type(self).__name__}.norm(): A v is not finite (max |A v| = {probe}) "
                    f"for a unit vector v in {dtype}: the operator is too large for {dtype} "
                    "or produces NaN/Inf."
                )
            if probe > 0.0:
                scale = math.ldexp(1.0, -math.frexp(probe)[1])

                def gram(u: torch.Tensor) -> torch.Tensor:
                    au = self(u.reshape(shape))
                    return (scale * self.adjoint(scale * au)).reshape(-1)

                est, converged = lanczos_top(gram, v, **opts)
            elif est == 0.0 or not math.isfinite(est):
                est, converged = 0.0, True  # A v = 0: A is zero (to dtype's range)
        if not math.isfinite(est):
            raise ValueError(
                f"{type(self).__name__}.norm(): the estimate of ||A||^2 is not finite "
                f"({est}) in {dtype}: the operator produces NaN/Inf or ||A|| is beyond "
                f"{dtype}'s range."
            )
        if not converged:
            import warnings

            from .._validation import ConvergenceWarning

            warnings.warn(
                f"{type(self).__name__}.norm(): Lanczos did not reach tol={tol} in "
                f"{max_iter} products; the estimate {math.sqrt(max(est, 0.0)) / scale:.6g} "
                "is a lower bound.",
                ConvergenceWarning,
                stacklevel=2,
            )
        value = math.sqrt(max(est, 0.0)) / scale
        if not math.isfinite(value):
            raise ValueError(
                f"{type(self).__name__}.norm(): ||A|| = {value} is beyond the range of a float."
            )
        if self.cacheable_norm:
            self._norm_cache = (key, value)
        return value

    def to_dense(
        self, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """The operator as a dense ``(m, n)`` matrix (for small operators and tests).

        Column ``j`` is ``A e_j``, on ``device`` (default: the operator's, else the CPU)
        in ``dtype``. Differentiable: gradients flow to the operator's trainable tensors
        (e.g. the ``nn.Parameter`` of a :class:`MatrixOperator`), so a solver may
        densify a learned operator inside its graph; call ``.detach()`` on the result
        (or densify under ``torch.no_grad()``) for a constant matrix.
        """
        m, n = self.shape
        device = check_device(device) or self.device or torch.device("cpu")
        eye = torch.eye(n, dtype=dtype, device=device).reshape(n, *self.in_shape)
        cols = self(eye).reshape(n, m)
        return cols.T.contiguous()

    # ------------------------------------------------------------------ scipy
    def to_scipy(self, dtype: Any = None) -> Any:
        """The operator as a :class:`scipy.sparse.linalg.LinearOperator` (numpy in and out).

        For scipy's and PyAMG's solvers: ``scipy.sparse.linalg.cg(A, b, M=M.to_scipy())``.
        Products run without autograd on the operator's device, in ``dtype`` (a numpy or
        torch floating dtype; default: the operator's own, else float64); the wrapped
        operator is ``.operator``. Subclasses with a native scipy form return that
        instead (``SparseOperator``: its CSR matrix; PyAMG's preconditioner for
        ``unrollsci.precond.amg``): anything scipy's solvers take as an operator.

        Example:
            >>> import torch
            >>> from unrollsci.operators import MatrixOperator
            >>> op = MatrixOperator(torch.eye(3, dtype=torch.float64) * 2)
            >>> op.to_scipy().matvec([1.0, 2.0, 3.0]).tolist()
            [2.0, 4.0, 6.0]
        """
        from ._scipy import to_scipy

        return to_scipy(self, dtype)

    def matvec(self, x: Any) -> Any:
        """``A x`` for a numpy vector ``(n,)`` or ``(n, 1)``, as numpy (scipy's duck type).

        Computed without autograd in ``x``'s floating dtype (float64 for integers).
        """
        from ._scipy import apply_numpy

        return apply_numpy(self, x)

    def matmat(self, x: Any) -> Any:
        """``A X`` for a numpy ``(n, k)`` array, as numpy (see :meth:`matvec`)."""
        from ._scipy import apply_numpy

        return apply_numpy(self, x)

    def rmatvec(self, y: Any) -> Any:
        """``A^T y`` for a numpy vector, as numpy (see :meth:`matvec`)."""
        from ._scipy import apply_numpy

        return apply_numpy(self, y, adjoint=True)

    def rmatmat(self, y: Any) -> Any:
        """``A^T Y`` for a numpy ``(m, k)`` array, as numpy (see :meth:`matvec`)."""
        from ._scipy import apply_numpy

        return apply_numpy(self, y, adjoint=True)

    # ------------------------------------------------------------ composition
    def __matmul__(self, other: LinearOperator) -> LinearOperator:
        if not isinstance(other, LinearOperator):
            return NotImplemented
        from ._compose import ComposedOperator

        return ComposedOperator(self, other)

    def __add__(self, other: LinearOperator) -> LinearOperator:
        if not isinstance(other, LinearOperator):
            return NotImplemented
        from ._compose import SumOperator

        return SumOperator(self, other)

    def __sub__(self, other: LinearOperator) -> LinearOperator:
        if not isinstance(other, LinearOperator):
            return NotImplemented
        from ._compose import ScaledOperator, SumOperator

        return SumOperator(self, ScaledOperator(other, -1.0))

    def __mul__(self, scale: float) -> LinearOperator:
        if not isinstance(scale, (int, float)):
            return NotImplemented
        from ._compose import ScaledOperator

        return ScaledOperator(self, float(scale))

    __rmul__ = __mul__

    def __neg__(self) -> LinearOperator:
        from ._compose import ScaledOperator

        return ScaledOperator(self, -1.0)

    def extra_repr(self) -> str:
        return f"in_shape={self.in_shape}, out_shape={self.out_shape}"
