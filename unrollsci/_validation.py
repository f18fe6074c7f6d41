"""Input checks shared by the public boundary of every subpackage.

Each check raises a ``ValueError`` (or ``TypeError``) whose message says what was
expected and what came. Internals trust their inputs; only public entry points
call these.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch

__all__ = [
    "as_bool_mask",
    "as_tensor",
    "check_batch",
    "check_count",
    "check_device",
    "check_positive",
    "check_finite",
    "check_like",
    "ignored_option",
    "check_nonnegative",
    "check_same_device",
    "check_symmetric",
    "check_tensor",
    "SYMMETRY_EPS_FACTOR",
    "ConvergenceWarning",
    "ConvergenceError",
    "DtypeMismatchError",
    "UnrollsciWarning",
    "check_model_dtype",
]


class UnrollsciWarning(UserWarning):
    """Base class of every warning unrollsci raises.

    Filter on it to silence or escalate the library's own warnings without touching
    those of torch, numpy or other packages (the test suite turns exactly these into
    errors).
    """


class ConvergenceWarning(UnrollsciWarning):
    """An iterative solver stopped before reaching its tolerance."""


class ConvergenceError(RuntimeError):
    """An iterative solver failed and ``throw=True`` was requested."""


class DtypeMismatchError(TypeError, ValueError):
    """A model's input has another floating dtype than the model's learned parameters.

    The one dtype rule of every model (``docs/architecture.md``, "dtypes"): a model
    computes in the dtype of its learned parameters, set as for any torch module
    (``model.double()``, ``model.to(torch.float32)``); inputs must have that dtype and
    nothing is cast silently. A ``TypeError`` (a wrong dtype is a wrong type of tensor);
    also a ``ValueError`` for code written against the graph model's earlier contract.
    """


def check_model_dtype(what: str, got: torch.dtype, model: Any, *, data: str = "data") -> None:
    """Raise :class:`DtypeMismatchError` unless ``got`` is ``model.dtype``.

    ``model.dtype`` is the dtype of the model's learned parameters (None: it has none
    and accepts every input); ``data`` names the input in the suggested fix.
    """
    want = model.dtype
    if want is None or got == want:
        return
    name = type(model).__name__
    short = {torch.float64: "double", torch.float32: "float", torch.float16: "half"}

    def how(obj: str, dtype: torch.dtype) -> str:
        alias = f" ({obj}.{short[dtype]}())" if dtype in short else ""
        return f"{obj}.to({dtype}){alias}"

    # suggest only a model dtype the models compute in (a half model is refused)
    fix = (
        f"Convert the model with {how('model', got)} or the data with {how(data, want)}."
        if got in (torch.float32, torch.float64)
        else f"Convert the data with {how(data, want)} ({name} computes in float32 or "
        "float64 only)."
    )
    raise DtypeMismatchError(
        f"Expected {what} of the model's dtype {want} (got {got}); {name} computes in the "
        f"dtype of its parameters and casts nothing silently. {fix}"
    )


def model_dtype(model: Any, *, skip: str | None = None) -> torch.dtype | None:
    """dtype of ``model``'s first floating parameter, else buffer, whose name does not
    start with ``skip``; None if there is none."""
    for named in (model.named_parameters(), model.named_buffers()):
        for name, t in named:
            if t.is_floating_point() and not (skip and name.startswith(skip)):
                return t.dtype
    return None


def check_tensor(name: str, x: Any, *, ndim: tuple[int, ...] | None = None) -> torch.Tensor:
    """Check that ``x`` is a floating-point tensor with an allowed number of dimensions."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"Expected '{name}' to be a torch.Tensor (got {type(x).__name__}).")
    if ndim is not None and x.dim() not in ndim:
        allowed = " or ".join(str(d) for d in ndim)
        raise ValueError(
            f"Expected '{name}' to be {allowed}-dimensional (got {x.dim()} dimensions, "
            f"shape {tuple(x.shape)})."
        )
    if not (x.is_floating_point() or x.is_complex()):
        raise TypeError(f"Expected '{name}' to have a floating-point dtype (got {x.dtype}).")
    return x


def check_finite(name: str, x: torch.Tensor) -> torch.Tensor:
    """Raise if ``x`` contains NaN or Inf."""
    if x.is_sparse or x.layout in (torch.sparse_csr, torch.sparse_csc):
        vals = x.values()
    else:
        vals = x
    if not bool(torch.isfinite(vals).all()):
        n_nan = int(torch.isnan(vals).sum())
        n_inf = int(torch.isinf(vals).sum())
        raise ValueError(
            f"Expected '{name}' to be finite (got {n_nan} NaN and {n_inf} Inf entries)."
        )
    return x


def check_nonnegative(name: str, value: Any) -> None:
    """Raise if a scalar or tensor hyper-parameter is negative or not finite."""
    t = torch.as_tensor(value)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"Expected '{name}' to be finite (got {value!r}).")
    if bool((t < 0).any()):
        raise ValueError(f"Expected '{name}' >= 0 (got {value!r}).")


def as_bool_mask(mask: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """``mask`` as a bool tensor: a bool tensor, or one holding only 0 and 1 (a value such
    as 0.5 is refused rather than read as True)."""
    if mask.dtype == torch.bool:
        return mask
    if mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"Expected a boolean (or 0/1) '{name}' (got other values).")
    return mask != 0


def check_same_device(**tensors: Any) -> None:
    """Raise if the given tensors live on different devices."""
    devices = {name: t.device for name, t in tensors.items() if isinstance(t, torch.Tensor)}
    if len(set(devices.values())) > 1:
        desc = ", ".join(f"'{k}' on {v}" for k, v in devices.items())
        raise ValueError(
            f"Expected all inputs on one device (got {desc}). Move them with .to(device)."
        )


def as_tensor(x: Any, *, like: torch.Tensor | None = None) -> torch.Tensor:
    """Turn a number or tensor into a tensor on ``like``'s device and dtype."""
    if like is None:
        return torch.as_tensor(x)
    return torch.as_tensor(x, device=like.device, dtype=like.dtype)


def check_batch(name: str, x: torch.Tensor, *, dim: int = 0) -> torch.Tensor:
    """Raise if ``x`` holds a batch of zero problems (size 0 along ``dim``).

    The library's one rule for empty batches: a solver, operator or metric asked to
    work on no problem at all raises a ``ValueError`` rather than returning empty
    results, so that a data pipeline bug does not pass silently.
    """
    if x.dim() > dim and x.shape[dim] == 0:
        raise ValueError(
            f"Expected '{name}' to hold at least one problem (got a batch of size 0, "
            f"shape {tuple(x.shape)})."
        )
    return x


def check_count(
    name: str, value: Any, low: int | None = 1, *, high: int | None = None, optional: bool = False
) -> int | None:
    """Check that a count (a size, a number of steps, a seed, an index) is an integer in
    ``low..high``; returns it as a Python int.

    The library's one rule for integer arguments: a Python int or a numpy integer passes
    (and a ``torch.SymInt`` while tracing); a bool, a float (``2.0`` included), a string, a
    tensor or any other object raises ``TypeError``; a value below ``low`` or above
    ``high`` (None: no bound) raises ``ValueError``. ``None`` passes, and is returned, only
    with ``optional=True``.

    Example:
        >>> check_count("steps", 3, 0)
        3
        >>> check_count("steps", 2.0)
        Traceback (most recent call last):
            ...
        TypeError: Expected 'steps' to be an integer (got float 2.0).
    """
    if value is None and optional:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (numbers.Integral, torch.SymInt)
    ):
        kind = "an integer or None" if optional else "an integer"
        got = repr(value)
        got = got if len(got) <= 60 else got[:57] + "..."
        raise TypeError(f"Expected '{name}' to be {kind} (got {type(value).__name__} {got}).")
    v = int(value)
    if (low is not None and v < low) or (high is not None and v > high):
        if high is None:
            raise ValueError(f"Expected '{name}' >= {low} (got {v}).")
        if low is None:
            raise ValueError(f"Expected '{name}' <= {high} (got {v}).")
        raise ValueError(f"Expected {low} <= '{name}' <= {high} (got {v}).")
    return v


def check_positive(
    name: str, value: Any, *, allow_zero: bool = False, allow_inf: bool = False
) -> float:
    """Check a scalar hyper-parameter is a real number > 0 (or >= 0) and finite.

    Returns it as a Python float (no float32 cast, so values up to 1.8e308 pass).
    """
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"Expected '{name}' to be a scalar (got shape {tuple(value.shape)}).")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            import numpy as np

            if isinstance(value, np.generic) and np.isrealobj(value):
                value = value.item()
            else:
                raise TypeError
        except TypeError:
            raise TypeError(
                f"Expected '{name}' to be a real number (got {type(value).__name__})."
            ) from None
    v = float(value)
    if v != v or (v in (float("inf"), float("-inf")) and not allow_inf):
        raise ValueError(f"Expected '{name}' to be finite (got {value!r}).")
    if v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"Expected '{name}' {bound} (got {value!r}).")
    return v


def check_positive_param(
    name: str, value: Any, *, allow_zero: bool = False
) -> float | torch.Tensor:
    """:func:`check_positive` for a hyper-parameter that may be learned: a scalar tensor
    that requires grad is checked on its detached value and returned as a 0-d tensor with
    its graph (``.item()`` would cut its gradient); anything else as :func:`check_positive`
    (a Python float)."""
    if isinstance(value, torch.Tensor) and value.requires_grad:
        check_positive(name, value.detach(), allow_zero=allow_zero)
        return value.reshape(())
    return check_positive(name, value, allow_zero=allow_zero)


def check_device(device: Any) -> torch.device | None:
    """Turn ``device`` into a ``torch.device`` that exists here, or raise a ``ValueError``.

    ``None`` passes through (the caller's default). A CUDA/MPS/XPU device on a machine
    without one, or an index past the last device, is refused with a message that says
    what is available, instead of torch's ``AssertionError`` deep inside a call.
    """
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"Expected a torch device such as 'cpu' or 'cuda:0' (got {device!r})."
        ) from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"Device {str(dev)!r} was requested but CUDA is not available here "
                f"(torch {torch.__version__}, built with CUDA: {torch.version.cuda is not None}). "
                "Use device='cpu'."
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"Device {str(dev)!r} was requested but only {torch.cuda.device_count()} "
                "CUDA device(s) exist."
            )
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"Device {str(dev)!r} was requested but MPS is not available here.")
    elif dev.type == "xpu":
        xpu = getattr(torch, "xpu", None)
        if xpu is None or not xpu.is_available():
            raise ValueError(f"Device {str(dev)!r} was requested but XPU is not available here.")
    return dev


#: ``c`` of the one symmetry rule, ``max|A - A^T| <= c * eps(dtype) * max|A|`` (see
#: :func:`check_symmetric`).
SYMMETRY_EPS_FACTOR = 1000.0


def detached_from(a: Any, source: Any) -> Any:
    """``a`` (scipy sparse) copied if it shares an array with ``source``: call before changing
    ``a`` in place (``sum_duplicates``, ``sort_indices``, ``eliminate_zeros``), so that the
    caller's matrix is never modified (scipy's conversions reuse the caller's arrays)."""
    mine = [getattr(a, k, None) for k in ("data", "indices", "indptr", "row", "col")]
    theirs = [getattr(source, k, None) for k in ("data", "indices", "indptr", "row", "col")]
    for x in mine:
        for y in theirs:
            if isinstance(x, np.ndarray) and isinstance(y, np.ndarray):
                if np.may_share_memory(x, y):
                    return a.copy()
    return a


def _float_eps(dtype: Any) -> float:
    """Machine epsilon of a torch or numpy floating dtype (float64's for any other dtype)."""
    if isinstance(dtype, torch.dtype):
        return torch.finfo(dtype if dtype.is_floating_point else torch.float64).eps
    import numpy as np

    dt = np.dtype(dtype)
    return float(np.finfo(dt if dt.kind == "f" else np.float64).eps)


def _same_pattern_asymmetry(a: Any) -> tuple[float, float] | None:
    """``(max|A - A^T|, max|A|)`` of canonical scipy CSR ``a`` whose stored pattern is
    symmetric: then ``A^T``'s CSR arrays share ``A``'s ``indptr`` and ``indices`` and the
    difference is one of the two value arrays (one transpose, no sparse subtraction).
    None for any other format or pattern (the caller forms ``A - A^T``)."""
    if a.format != "csr" or not a.has_canonical_format:
        return None
    at = a.T.tocsr()  # the transpose of CSR comes out with sorted indices
    if not (np.array_equal(at.indptr, a.indptr) and np.array_equal(at.indices, a.indices)):
        return None
    if a.nnz == 0:
        return 0.0, 0.0
    d = at.data  # a fresh array: the differences are formed in place
    d -= a.data
    return float(np.abs(d).max()), float(np.abs(a.data).max())


def symmetry_error(a: Any, name: str = "A") -> tuple[float, float, float]:
    """``(max|A - A^T|, max|A|, eps)`` of a square matrix ``a``: a dense or sparse torch
    tensor, or a scipy sparse matrix; ``eps`` is the machine epsilon of its dtype.

    Raises ``ValueError`` for a non-square matrix, ``TypeError`` for other inputs.
    """
    if isinstance(a, torch.Tensor):
        if a.dtype == torch.bool:  # A - A^T is not defined for bool tensors
            raise TypeError(f"Expected '{name}' to have a numeric dtype (got {a.dtype}).")
        if a.dim() != 2 or a.shape[0] != a.shape[1]:
            raise ValueError(
                f"Expected '{name}' to be a square matrix (got shape {tuple(a.shape)})."
            )
        eps = _float_eps(a.dtype)
        a = a.detach()
        if a.layout == torch.strided:
            if a.numel() == 0:
                return 0.0, 0.0, eps
            return float((a - a.T).abs().max()), float(a.abs().max()), eps
        coo = a.to_sparse_coo().coalesce()
        d = (coo - coo.t()).coalesce().values()
        v = coo.values()
        return (
            float(d.abs().max()) if d.numel() else 0.0,
            float(v.abs().max()) if v.numel() else 0.0,
            eps,
        )
    import scipy.sparse as sp

    if sp.issparse(a):
        if a.shape[0] != a.shape[1]:
            raise ValueError(f"Expected '{name}' to be a square matrix (got shape {a.shape}).")
        if not (a.format == "csr" and a.has_canonical_format):
            # scipy's abs/max/subtraction merge duplicates and sort indices in place: on a
            # copy, never in the caller's matrix
            a = sp.csr_matrix(a, copy=True)
            a.sum_duplicates()
        if a.nnz and not np.isfinite(a.data).all():  # (inf - inf would warn)
            return math.nan, float(np.abs(a.data).max()), _float_eps(a.dtype)
        same = _same_pattern_asymmetry(a)
        if same is not None:
            return same[0], same[1], _float_eps(a.dtype)
        d = abs(a - a.T)
        return (
            float(d.max()) if d.nnz else 0.0,
            float(abs(a).max()) if a.nnz else 0.0,
            _float_eps(a.dtype),
        )
    raise TypeError(
        f"Expected '{name}' to be a torch tensor or a scipy sparse matrix (got {type(a).__name__})."
    )


def check_symmetric(a: Any, name: str = "A", *, rtol: float | None = None, hint: str = "") -> None:
    """Raise ``ValueError`` unless the square matrix ``a`` is symmetric up to rounding.

    The library's one symmetry rule (CG's input check, the preconditioners' and the graph
    Laplacians' adjacency check all use it)::

        max_ij |A_ij - A_ji| <= rtol * max_ij |A_ij|,   rtol = 1000 * eps(dtype)

    by default (:data:`SYMMETRY_EPS_FACTOR` ``= 1000``), with ``eps`` the machine epsilon of
    ``a``'s dtype: ``2.2e-13`` relative in float64, ``1.2e-4`` in float32. This accepts the
    rounding of a matrix assembled in floating point (a sum of terms accumulated in a
    different order for ``A_ij`` and ``A_ji``) and refuses any asymmetry a solver would
    notice. An all-zero matrix passes; a matrix with a NaN or Inf entry is refused
    (``ValueError``: ``NaN > tol`` is false, so the rule alone would pass it), as is a bool
    torch tensor (``TypeError``). ``a``: dense or sparse (COO/CSR/CSC) torch tensor or
    scipy sparse matrix; ``hint`` is appended to the error message.
    """
    diff, mag, eps = symmetry_error(a, name)
    tol = SYMMETRY_EPS_FACTOR * eps if rtol is None else rtol
    if not math.isfinite(mag):  # a NaN or Inf entry: max|A| is NaN or Inf
        raise ValueError(
            f"Expected '{name}' to be finite (got NaN or Inf entries: max |A| = {mag}); "
            "its symmetry cannot be checked." + (f" {hint}" if hint else "")
        )
    if not diff <= tol * mag:
        raise ValueError(
            f"Expected '{name}' to be symmetric (got max |A - A^T| = {diff:.3e}, "
            f"max |A| = {mag:.3e}; the tolerance is {tol:.1e} max |A|)."
            + (f" {hint}" if hint else "")
        )


def check_like(name: str, x: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """Raise ``TypeError`` unless ``x`` has the dtype and device of ``ref`` (a warm start
    ``x0`` of another dtype would silently change the solver's dtype, or fail deep
    inside it)."""
    if x.dtype != ref.dtype or x.device != ref.device:
        raise TypeError(
            f"Expected '{name}' with the dtype and device of '{ref_name}' ({ref.dtype} on "
            f"{ref.device}; got {x.dtype} on {x.device}); convert it with "
            f"{name}.to({ref_name})."
        )


def ignored_option(name: str, value: Any, default: Any, *, where: str, given: str) -> ValueError:
    """The error for option ``name`` given ``value`` (not its ``default``) where it would be
    ignored: it acts only ``where`` (e.g. ``"kind='poly'"``), and the call has ``given``
    (e.g. ``"kind='factor'"``). Options of one mode are refused outside it, never ignored;
    a default passed explicitly is accepted (the caller compares)."""
    return ValueError(
        f"Expected {name}= only with {where}, where it acts (got {name}={value!r} with "
        f"{given}; leave it at its default {default!r})."
    )
