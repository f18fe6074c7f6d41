"""Classical preconditioners: none, Jacobi, PyAMG; IC(0) and MIC(0) are re-exported here.

Every preconditioner is a :class:`~unrollsci.operators.LinearOperator` ``r -> z``
approximating ``A^{-1}`` and can be passed as ``M=`` to :func:`unrollsci.solvers.cg`.
The factor operators live in :mod:`._factors`, the incomplete Cholesky factorizations in
:mod:`._incomplete`; every name importable from this module before that split still is.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .._validation import check_count, check_device, check_finite, check_tensor
from ..operators import LinearOperator  # noqa: F401  (re-exported)
from ..operators._base import check_real
from ._base import Preconditioner
from ._factors import (  # noqa: F401  (_like, _LowerFactorOperator: re-exported)
    BlockPreconditioner,
    FactorPreconditioner,
    InverseFactorPreconditioner,
    _like,
    _LowerFactorOperator,
)
from ._incomplete import (  # noqa: F401  (private helpers: re-exported)
    ICBreakdownError,
    _check_omega,
    _ic0_numeric,
    _ic0_plan,
    _levels,
    _lookup,
    _mic_numeric,
    _mic_plan,
    _wrap,
    ic0,
    ic0_from_pattern,
    ic0_values,
    mic0,
    mic0_from_pattern,
)
from ._ordering import PermutedPreconditioner, reorder  # noqa: F401  (re-exported)
from ._sparse import (  # noqa: F401  (re-exported)
    LowerPattern,
    check_spd_input,
    first_not_invertible,
    lower_matvec,
    lower_pattern,
    tri_solve,
)

__all__ = [
    "FactorPreconditioner",
    "InverseFactorPreconditioner",
    "BlockPreconditioner",
    "DiagonalPreconditioner",
    "AMGPreconditioner",
    "jacobi",
    "ic0",
    "ic0_values",
    "ic0_from_pattern",
    "mic0",
    "mic0_from_pattern",
    "amg",
    "ICBreakdownError",
]


class DiagonalPreconditioner(Preconditioner):
    """``z = r / d`` (Jacobi when ``d = diag(A)``).

    ``diag``: a 1-D real floating tensor of finite, strictly positive entries whose
    reciprocals are finite (a zero, negative or NaN entry makes ``M`` not positive
    definite; a 2-D tensor is refused rather than flattened).
    """

    def __init__(self, diag: torch.Tensor) -> None:
        super().__init__()
        check_tensor("diag", diag, ndim=(1,))
        check_real("diag", diag)
        check_finite("diag", diag)
        d = diag.detach()
        i = first_not_invertible(d)
        if i is not None:
            raise ValueError(
                f"Expected 'diag' with strictly positive entries whose reciprocals are "
                f"finite (got diag[{i}] = {float(d[i]):.3e}): the preconditioner must be "
                "positive definite."
            )
        self.register_buffer("inv_diag", 1.0 / diag)
        self.in_shape = self.out_shape = (diag.numel(),)

    @property
    def nnz(self) -> int:
        return int(self.inv_diag.numel())

    def _mv(self, r: torch.Tensor) -> torch.Tensor:
        return r * self._cast("inv_diag", r)

    _rmv = _mv


class AMGPreconditioner(Preconditioner):
    """One PyAMG V-cycle per application (runs on CPU in numpy; no autograd).

    ``serial_host``: the cycle is a single-threaded host kernel, so the library's CG loop
    runs its torch vector work single-threaded while it applies this preconditioner
    (torch's idle worker threads would otherwise compete with the cycle).

    Args:
        ml: a PyAMG ``MultilevelSolver``.
        n: its size.
        coarse_solver: the ``coarse_solver`` option ``ml`` was built with (PyAMG's
            ``coarse_grid_solver`` argument). ``None``: read from ``ml``'s coarse solver
            (``ml.coarse_solver.name()``), which gives a method named by a string (PyAMG's
            default ``"pinv"``, ``"splu"``, ...) but not the options of a tuple
            ``(method, options)``: pass such a one here.

    The preconditioner pickles (DataLoader workers, multiprocessing) and deep-copies into
    an independent one with the same cycle: PyAMG's coarse solver, a local class of
    PyAMG's, is rebuilt from ``coarse_solver`` on the other side, with the factorization it
    had formed. A ``coarse_solver`` whose method PyAMG does not name by a string (a
    callable) pickles only if the callable does.
    """

    serial_host = True
    _cycle_kind = "V"

    def __init__(self, ml: Any, n: int, *, coarse_solver: Any = None) -> None:
        super().__init__()
        self.ml = ml
        self.in_shape = self.out_shape = (n,)
        self._coarse_spec = _coarse_spec(ml, coarse_solver)
        self._apply_np = ml.aspreconditioner(cycle=self._cycle_kind)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled state: PyAMG's hierarchy without its coarse solver (a local class) and
        without the cycle's closure; :meth:`__setstate__` rebuilds both."""
        import copy

        state = dict(super().__getstate__())
        state["_apply_np"] = None
        solver = getattr(self.ml, "coarse_solver", None)
        if _known(self._coarse_spec) and solver is not None:
            ml = copy.copy(self.ml)  # (the levels are shared: pickled as they are)
            ml.coarse_solver = None
            state["ml"] = ml
            state["_coarse_factor"] = _picklable_factor(solver)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore a pickled or deep-copied state: the coarse solver (if it was left out)
        and the cycle, on this object's own hierarchy."""
        state = dict(state)
        factor = state.pop("_coarse_factor", None)
        super().__setstate__(state)
        if getattr(self.ml, "coarse_solver", 0) is None and _known(self._coarse_spec):
            from pyamg.multilevel import coarse_grid_solver

            self.ml.coarse_solver = coarse_grid_solver(self._coarse_spec)
            vars(self.ml.coarse_solver).update(factor or {})
        # a deep copy's state holds the original's cycle (a closure on its hierarchy)
        self._apply_np = self.ml.aspreconditioner(cycle=self._cycle_kind)

    def _cycle(self, r: torch.Tensor) -> torch.Tensor:
        rn = r.detach().cpu().double().numpy()
        z = np.stack([self._apply_np(rn[i]) for i in range(rn.shape[0])])
        return torch.from_numpy(z).to(r.device, r.dtype)

    def _mv(self, r: torch.Tensor) -> torch.Tensor:
        # a linear map with its adjoint as backward (the V-cycle with symmetric smoothing is
        # symmetric): gradients through an unrolled PCG reach r (they were cut: dL/db 87%
        # off with cg(A, b, M=amg(A)))
        if torch.is_grad_enabled() and r.requires_grad:
            return _LinearCycle.apply(r, self)
        return self._cycle(r)

    _rmv = _mv

    def to_scipy(self, dtype: Any = None) -> Any:
        """PyAMG's own preconditioner (``ml.aspreconditioner(cycle="V")``), float64: the
        cycle runs in PyAMG's compiled kernels, with no torch round trip."""
        from ..operators._scipy import numpy_dtype

        if numpy_dtype(dtype) != np.float64:
            return super().to_scipy(dtype)
        return self._apply_np


_UNKNOWN = "<unknown coarse solver>"


def _known(spec: Any) -> bool:
    """Whether ``spec`` is a coarse solver option (not :data:`_UNKNOWN`: after a pickle
    round trip an equal string, not the same object)."""
    return not (isinstance(spec, str) and spec == _UNKNOWN)


def _coarse_spec(ml: Any, given: Any) -> Any:
    """The ``coarse_solver`` option of ``ml`` (``given``, checked against the name PyAMG
    keeps), or :data:`_UNKNOWN` where ``ml``'s coarse solver does not name its method."""
    import ast

    name = getattr(getattr(ml, "coarse_solver", None), "name", None)
    have = name() if callable(name) else None
    if given is not None:
        method = given[0] if isinstance(given, tuple) else given
        if have is not None and repr(method) != have:
            raise ValueError(
                f"Expected 'coarse_solver' to be the one ml was built with ({have}), got {given!r}."
            )
        return given
    if have is None:
        return _UNKNOWN
    try:
        spec = ast.literal_eval(have)
    except (ValueError, SyntaxError):  # a callable's repr: not rebuildable from its name
        return _UNKNOWN
    return spec if spec is None or isinstance(spec, str) else _UNKNOWN


def _picklable_factor(solver: Any) -> dict[str, Any]:
    """What PyAMG's coarse solver formed on its first call (the pseudo-inverse ``P``, the
    dense ``LU`` or ``L`` factors: arrays), for the rebuilt solver to reuse (the same
    numbers, no refactorization). Where any of it is another object (``splu``'s factor
    does not pickle), none is kept: the rebuilt solver forms it again on its first call."""

    def plain(v: Any) -> bool:
        if isinstance(v, tuple):
            return all(plain(u) for u in v)
        return isinstance(v, (np.ndarray, bool, int, float))

    formed = dict(vars(solver))
    return formed if all(plain(v) for v in formed.values()) else {}


class _LinearCycle(torch.autograd.Function):
    """``M r`` for a symmetric linear ``M`` applied outside torch: backward ``M g``."""

    @staticmethod
    def forward(ctx: Any, r: torch.Tensor, pre: AMGPreconditioner) -> torch.Tensor:  # noqa: D102
        ctx.pre = pre
        return pre._cycle(r)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: D102
        mg = _LinearCycle.apply(g, ctx.pre) if torch.is_grad_enabled() else ctx.pre._cycle(g)
        return mg, None


def jacobi(
    A: Any,
    *,
    device: torch.device | str | None = None,  # noqa: N803
    dtype: torch.dtype = torch.float64,
) -> DiagonalPreconditioner:
    """Jacobi preconditioner ``M = diag(A)^{-1}``.

    Args:
        A: SPD scipy sparse matrix or torch sparse / dense tensor ``(n, n)``.
        device, dtype: where the preconditioner lives (default: cpu, float64).

    Example:
        >>> from unrollsci.precond import diffusion2d, jacobi
        >>> M = jacobi(diffusion2d(8, seed=0))
        >>> M.in_shape
        (64,)
    """
    device = check_device(device)
    a = check_spd_input(A)
    return DiagonalPreconditioner(torch.as_tensor(a.diagonal(), dtype=dtype, device=device))


def amg(A: Any, *, seed: int | None = 0, **kwargs: Any) -> AMGPreconditioner:  # noqa: N803
    """PyAMG smoothed-aggregation V-cycle as a preconditioner (optional extra ``pyamg``).

    Args:
        A: SPD scipy sparse matrix (or torch sparse / dense tensor).
        seed: PyAMG's setup draws random vectors from numpy's global generator (its
            spectral-radius estimates), so the hierarchy, and the residuals of a solve with
            it, vary from call to call. With an integer seed the setup runs under that seed
            and is reproducible; numpy's global generator is restored afterwards. ``None``:
            PyAMG's own behaviour.
        **kwargs: passed to ``pyamg.smoothed_aggregation_solver``. The cycle they give
            must be symmetric (CG's preconditioner, and the gradient through it, assume
            so): pre- and post-smoothers adjoint (e.g. ``sweep="symmetric"``, PyAMG's
            default, or ``"forward"`` before and ``"backward"`` after) and ``R = P^T``.

    Raises:
        ValueError: bad ``A`` (see :func:`ic0`), or options that make the cycle
            non-symmetric (checked after the setup with two seeded random vectors,
            when an option other than those that shape the hierarchy only is given).
    """
    try:
        import pyamg
    except ImportError as exc:  # pragma: no cover - optional extra
        raise ImportError("amg() needs the optional package pyamg (pip install pyamg).") from exc
    a = check_spd_input(A)
    if seed is None:
        ml = pyamg.smoothed_aggregation_solver(a, **kwargs)
    else:
        seed = check_count("seed", seed, None, optional=True)
        state = np.random.get_state()
        try:
            np.random.seed(seed)
            ml = pyamg.smoothed_aggregation_solver(a, **kwargs)
        finally:
            np.random.set_state(state)
    pre = AMGPreconditioner(ml, a.shape[0], coarse_solver=kwargs.get("coarse_solver", "pinv"))
    if set(kwargs) - _HIERARCHY_OPTIONS:  # smoothers, symmetry, coarse solver: probe
        _check_symmetric_cycle(pre._apply_np, a.shape[0])
    return pre


# Options of PyAMG's SA that shape the hierarchy only: R = P^T and the (default) symmetric
# Gauss-Seidel smoothing and pinv coarse solve keep the cycle symmetric whatever they are,
# so no probe (two extra cycles) is needed for them.
_HIERARCHY_OPTIONS = {
    "B",
    "BH",
    "strength",
    "aggregate",
    "smooth",
    "improve_candidates",
    "max_levels",
    "max_coarse",
    "diagonal_dominance",
    "keep",
}


def _check_symmetric_cycle(apply: Any, n: int, rtol: float = 1e-10) -> None:
    """Raise unless ``y^T M x = x^T M y`` (to ``rtol``) for two random vectors (a seeded
    generator of their own: numpy's global one is not touched)."""
    x, y = np.random.default_rng(12345).standard_normal((2, n))
    mx, my = np.asarray(apply(x), dtype=np.float64), np.asarray(apply(y), dtype=np.float64)
    scale = max(np.linalg.norm(mx) * np.linalg.norm(y), np.linalg.norm(my) * np.linalg.norm(x))
    if not np.isfinite(scale):
        raise ValueError("amg(): the PyAMG cycle returned non-finite values.")
    asym = abs(float(y @ mx) - float(x @ my))
    if not asym <= rtol * scale:
        raise ValueError(
            "amg(): these PyAMG options give a non-symmetric V-cycle (|y^T M x - x^T M y| = "
            f"{asym / scale:.1e} relative), but a preconditioner for CG, and the gradient "
            "through it, must be symmetric: the pre- and post-smoothers must be adjoint "
            "(e.g. sweep='symmetric', or 'forward' before and 'backward' after) and R = P^T "
            "(symmetry='hermitian')."
        )
