"""Proximal operators and projections, batched and differentiable.

All functions act elementwise on tensors of any shape (a leading batch axis is
just another axis) and broadcast their parameters.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ._prox_checks import (
    cast_threshold,
    check_dim,
    check_eps,
    check_group_threshold,
    check_prox_input,
    check_threshold,
)
from ._validation import as_bool_mask, check_count

__all__ = [
    "soft_threshold",
    "group_soft_threshold",
    "nonnegative_soft_threshold",
    "check_groups",
    "Prox",
    "make_prox",
    "project_box",
    "project_nonnegative",
    "project_support",
]


def soft_threshold(x: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    """Prox of ``t * ||x||_1``: ``sign(x) * max(|x| - t, 0)``.

    ``threshold``: a number ``>= 0`` (``ValueError`` for a negative or NaN one: no prox),
    or a tensor broadcasting against ``x`` (not read; cast to ``x``'s real dtype and
    device, so the result keeps ``x``'s dtype). A complex ``x`` is shrunk in modulus,
    ``x / |x| * max(|x| - t, 0)`` (the group prox with groups of one entry).

    Example:
        >>> import torch
        >>> soft_threshold(torch.tensor([-2.0, 0.5, 3.0]), 1.0)
        tensor([-1.,  0.,  2.])
    """
    check_threshold(threshold)
    threshold = cast_threshold(x, threshold)
    sign = torch.sgn(x) if isinstance(x, torch.Tensor) and x.is_complex() else torch.sign(x)
    return sign * torch.relu(x.abs() - threshold)


def group_soft_threshold(
    x: torch.Tensor,
    threshold: torch.Tensor | float,
    *,
    group_size: int | None = None,
    groups: torch.Tensor | None = None,
    dim: int = -1,
    eps: float = 0.0,
) -> torch.Tensor:
    """Prox of ``t * sum_g ||x_g||_2`` (block soft thresholding).

    Groups are consecutive blocks of ``group_size`` entries along ``dim`` (the
    whole axis when neither ``group_size`` nor ``groups`` is given), or, for groups of
    any sizes, ``groups``: an integer tensor of one group label in ``0..G-1`` per entry
    of the axis (entries of a group need not be consecutive). Each group is scaled by
    ``max(1 - t / ||x_g||, 0)``. ``threshold`` is a number ``>= 0`` or a tensor broadcasting
    against the group norms, of shape ``(..., G)`` (``dim`` moved last), e.g. ``(batch, 1)``
    for one threshold per batch entry; a NaN tensor threshold gives NaN. A per-group
    threshold (last axis ``G > 1``: entry ``g`` for label ``g``) needs ``groups`` labels
    ``0..G-1`` each used (``ValueError`` for labels with gaps; a number or ``(batch, 1)``
    threshold accepts them). ``eps >= 0`` floors the group norms in the
    division: 0 (the default) is the exact prox; a positive ``eps`` shrinks groups of norm
    below ``eps`` by ``1 - t / eps`` instead (a smoothing, no longer the prox).

    Example:
        >>> import torch
        >>> group_soft_threshold(torch.tensor([[3.0, 4.0, 0.1, 0.0]]), 1.0, group_size=2)
        tensor([[2.4000, 3.2000, 0.0000, 0.0000]])
        >>> labels = torch.tensor([0, 1, 0])
        >>> group_soft_threshold(torch.tensor([[3.0, 0.1, 4.0]]), 1.0, groups=labels)
        tensor([[2.4000, 0.0000, 3.2000]])
    """
    check_prox_input(x, threshold)
    dim = check_dim(dim, x.dim())
    check_eps(eps)
    n = x.shape[dim]
    if groups is not None:
        if group_size is not None:
            raise ValueError("Give one of 'group_size' and 'groups', not both.")
        return _uneven_group_soft(x, threshold, check_groups(groups, n), dim, eps)
    g = n if group_size is None else check_count("group_size", group_size)
    if n % g:
        raise ValueError(f"Expected group_size dividing the axis length {n} (got {group_size}).")
    xm = x.movedim(dim, -1)
    shp = xm.shape
    grouped = xm.reshape(*shp[:-1], n // g, g)
    factor = _shrink_factor(_scaled_norm(grouped), threshold, eps)
    return (grouped * factor[..., None]).reshape(shp).movedim(-1, dim)


def _shrink_factor(norms: torch.Tensor, threshold: Any, eps: float) -> torch.Tensor:
    """``max(1 - t / ||x_g||, 0)`` with finite gradients at every scale: groups at or below
    the threshold get a constant 0 (a zero or tiny norm never reaches a division in the
    backward pass, where ``1 / norm^2`` would overflow), and ``t`` is a tensor so that the
    division's backward forms ``(t / norm) / norm``, not ``1 / norm^2``."""
    t = torch.as_tensor(threshold, dtype=norms.dtype, device=norms.device)
    den = torch.clamp(norms, min=torch.finfo(norms.dtype).tiny + eps)
    active = den > t
    # a NaN threshold gives NaN (as the elementwise prox does), not a silent zero factor
    off = torch.where(t.isnan(), t, torch.zeros_like(t))
    return torch.where(active, 1 - t / torch.where(active, den, torch.ones_like(den)), off)


def _scaled_norm(grouped: torch.Tensor) -> torch.Tensor:
    """2-norms over the last axis without underflow or overflow of the squares (the
    entries are divided by their largest magnitude first): groups of size 1e-165 or 1e160
    get the same relative digits as groups of size 1. The gradient is ``x / ||x||`` for
    any subgradient of the maximum."""
    big = grouped.abs().amax(dim=-1, keepdim=True)
    safe = torch.where(big > 0, big, torch.ones_like(big))
    return safe[..., 0] * torch.linalg.vector_norm(grouped / safe, dim=-1)


def check_groups(groups: Any, n: int) -> torch.Tensor:
    """Validate a group-label tensor: integers ``>= 0``, one per entry of an axis of length
    ``n``. Returns it as a 1-D ``int64`` tensor."""
    if not isinstance(groups, torch.Tensor):
        length = f" of length {n}" if n >= 0 else ""
        raise TypeError(
            f"Expected 'groups' to be an integer torch.Tensor{length} "
            f"(got {type(groups).__name__})."
        )
    if groups.dtype.is_floating_point or groups.dtype.is_complex or groups.dtype == torch.bool:
        raise TypeError(f"Expected 'groups' to hold integer labels (got dtype {groups.dtype}).")
    if groups.dim() != 1:
        count = f"{n} " if n >= 0 else ""
        raise ValueError(
            f"Expected 'groups' to be a 1-D tensor of {count}integer labels, one per entry "
            f"(got a {groups.dim()}-D tensor of shape {tuple(groups.shape)})."
        )
    if groups.shape[0] != n:
        raise ValueError(
            f"Expected 'groups' of shape ({n},), one label per entry (got {tuple(groups.shape)})."
        )
    if n and int(groups.min()) < 0:
        raise ValueError(f"Expected group labels >= 0 (got {int(groups.min())}).")
    return groups.to(torch.int64)


def _uneven_group_soft(
    x: torch.Tensor, threshold: Any, groups: torch.Tensor, dim: int, eps: float
) -> torch.Tensor:
    xm = x.movedim(dim, -1)
    check_group_threshold(threshold, groups)
    labels, count = _compact(groups.to(xm.device))
    factor = _shrink_factor(_group_norms(xm, labels, count), threshold, eps)
    return (xm * factor.index_select(-1, labels)).movedim(-1, dim)


def _compact(groups: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The labels renumbered ``0..G-1`` in their order when they leave gaps (labels up to
    1e9 on a short axis would otherwise allocate a group per label value), and ``G``."""
    if not groups.numel():
        return groups, 0
    top = int(groups.max()) + 1
    if top > groups.numel():
        uniq, inverse = torch.unique(groups, return_inverse=True)
        return inverse, uniq.numel()
    return groups, top


def group_norms(xm: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """``||x_g||_2`` over the last axis of ``xm`` for the labels ``groups`` (``int64``, one
    per entry; gaps in the labels are closed, :func:`_compact`), ``(..., G)``, without
    underflow or overflow of the squares (each group divided by its largest magnitude);
    a zero group has norm 0 and a finite gradient."""
    return _group_norms(xm, *_compact(groups))


def _group_norms(xm: torch.Tensor, groups: torch.Tensor, count: int) -> torch.Tensor:
    mag = xm.detach().abs()
    index = groups.expand(mag.shape)
    big = mag.new_zeros(*xm.shape[:-1], count).scatter_reduce(-1, index, mag, "amax")
    safe = torch.where(big > 0, big, torch.ones_like(big))
    unit = xm / safe.index_select(-1, groups)
    sq = xm.new_zeros(*xm.shape[:-1], count).index_add(-1, groups, unit * unit)
    # a nonzero group has sq >= 1 (its largest entry is 1 after the division); a zero group
    # gets norm 0 exactly and gradient 0 (sqrt of a safe argument, selected away): a clamped
    # square gave it sqrt(tiny) (1.5e-154 in float64), as large as groups of size 1e-154
    some = sq > 0
    root = torch.sqrt(torch.where(some, sq, torch.ones_like(sq)))
    return safe * torch.where(some, root, torch.zeros_like(root))


def nonnegative_soft_threshold(x: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    """Prox of ``t * ||x||_1 + indicator(x >= 0)``: ``max(x - t, 0)``.

    ``threshold`` as :func:`soft_threshold`; ``x`` real (``x >= 0`` has no meaning for
    complex entries: ``TypeError``).

    Example:
        >>> import torch
        >>> nonnegative_soft_threshold(torch.tensor([-2.0, 0.5, 3.0]), 1.0)
        tensor([0., 0., 2.])
    """
    check_threshold(threshold)
    if isinstance(x, torch.Tensor) and x.is_complex():
        raise TypeError(f"Expected a real tensor 'x' for the non-negative prox (got {x.dtype}).")
    return torch.relu(x - cast_threshold(x, threshold))


_NAMED = ("soft", "nonneg", "group", "box")


class Prox:
    """A thresholding step ``(v, threshold) -> x``, chosen by name: the pluggable prox of
    the lasso solvers (:func:`unrollsci.solvers.ista`, ``fista``, ``admm``) and of the
    unrolled sparse-recovery models (``prox=``).

    ``x = argmin_u 0.5 ||u - v||^2 + threshold * R(u)`` for the regularizer ``R`` of
    ``kind``:

    * ``"soft"``: ``R = ||u||_1`` (:func:`soft_threshold`; the default everywhere);
    * ``"nonneg"``: ``R = ||u||_1 + indicator(u >= 0)`` (:func:`nonnegative_soft_threshold`);
    * ``"group"``: ``R = sum_g ||u_g||_2`` (:func:`group_soft_threshold`) over groups of
      ``group_size`` consecutive entries, or of any sizes given by ``groups`` (one label
      in ``0..G-1`` per entry);
    * ``"box"``: ``R = ||u||_1 + indicator(lower <= u <= upper)``; the prox is
      ``clamp(soft(v, t), lower, upper)`` (exact: the problem separates into convex 1-D
      problems, whose minimizer over an interval is the clamped unconstrained one);
    * ``"callable"``: ``fn(v, threshold)``, a user's function (built by :func:`make_prox`
      from a callable; it cannot be stored in a checkpoint).

    ``config()`` is the plain data :func:`make_prox` rebuilds it from (a string or a
    dict), which is what the models store in their checkpoint config.

    Example:
        >>> import torch
        >>> p = Prox("group", group_size=2)
        >>> p(torch.tensor([[3.0, 4.0, 0.1, 0.0]]), 1.0)
        tensor([[2.4000, 3.2000, 0.0000, 0.0000]])
        >>> p.config()
        {'kind': 'group', 'group_size': 2}
    """

    def __init__(
        self,
        kind: str = "soft",
        *,
        group_size: int | None = None,
        groups: torch.Tensor | None = None,
        lower: float | None = None,
        upper: float | None = None,
        fn: Any = None,
    ) -> None:
        if kind not in (*_NAMED, "callable"):
            raise ValueError(
                f"Expected prox kind 'soft', 'nonneg', 'group', 'box' or a callable (got {kind!r})."
            )
        self.kind = kind
        self.group_size = self.groups = self.lower = self.upper = self.fn = None
        if kind != "group" and (group_size is not None or groups is not None):
            raise ValueError(
                f"'group_size' and 'groups' are options of kind='group' (got {kind!r})."
            )
        if kind != "box" and (lower is not None or upper is not None):
            raise ValueError(f"'lower' and 'upper' are options of kind='box' (got {kind!r}).")
        if kind == "callable":
            if not callable(fn):
                raise TypeError(f"Expected a callable prox (got {type(fn).__name__}).")
            self.fn = fn
        elif fn is not None:
            raise ValueError("'fn' is an option of kind='callable' only.")
        if kind == "group":
            if (group_size is None) == (groups is None):
                raise ValueError(
                    "prox kind 'group' needs exactly one of 'group_size' (consecutive groups "
                    "of that size) and 'groups' (one integer label per entry), e.g. "
                    "{'kind': 'group', 'group_size': 5}."
                )
            if group_size is not None:
                self.group_size = check_count("group_size", group_size)
            else:
                one_d = isinstance(groups, torch.Tensor) and groups.dim() == 1
                n = groups.shape[0] if one_d else -1  # -1: check_groups refuses the shape
                if n == 0:
                    raise ValueError(
                        "Expected 'groups' with at least one label (got an empty tensor)."
                    )
                # a copy, gaps closed: the caller's tensor may change after this
                self.groups = _compact(check_groups(groups, n).detach().cpu())[0].clone()
        if kind == "box":
            if lower is None and upper is None:
                raise ValueError("prox kind 'box' needs 'lower' and/or 'upper'.")
            lo = -math.inf if lower is None else float(lower)
            hi = math.inf if upper is None else float(upper)
            if not (lo <= hi and lo < math.inf and hi > -math.inf):  # NaN fails too
                raise ValueError(
                    "Expected lower <= upper, lower < inf and upper > -inf for prox 'box' "
                    f"(got {lower}, {upper})."
                )
            self.lower, self.upper = lower if lower is None else lo, upper if upper is None else hi

    # ----------------------------------------------------------------- groups
    def check_length(self, n: int) -> None:
        """Raise ``ValueError`` unless the prox applies to signals of length ``n``."""
        if self.group_size is not None and n % self.group_size:
            raise ValueError(
                f"Expected group_size dividing the signal length {n} (got {self.group_size})."
            )
        if self.groups is not None and self.groups.shape[0] != n:
            raise ValueError(
                f"Expected 'groups' of shape ({n},), one label per entry "
                f"(got {tuple(self.groups.shape)})."
            )

    def group_labels(self, n: int) -> torch.Tensor:
        """One group label per entry of a length-``n`` signal (``int64``); for kinds other
        than ``"group"`` every entry is its own group."""
        self.check_length(n)
        if self.groups is not None:
            return self.groups
        g = self.group_size or 1
        return torch.arange(n) // g

    # ------------------------------------------------------------------ apply
    def __call__(self, v: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
        if self.kind == "soft":
            return soft_threshold(v, threshold)
        if self.kind == "nonneg":
            return nonnegative_soft_threshold(v, threshold)
        if self.kind == "group":
            return group_soft_threshold(
                v, threshold, group_size=self.group_size, groups=self.groups
            )
        if self.kind == "box":
            return torch.clamp(soft_threshold(v, threshold), min=self.lower, max=self.upper)
        return self.fn(v, threshold)

    def penalty(self, x: torch.Tensor) -> torch.Tensor:
        """``R(x)`` per row of ``x: (batch, n)`` (``inf`` outside a constraint set), for the
        objective ``0.5 ||A x - y||^2 + lam R(x)``. Not defined for a callable."""
        if self.kind == "callable":
            raise TypeError("A callable prox has no known regularizer R(x).")
        if self.kind == "group":
            labels = self.group_labels(x.shape[-1]).to(x.device)
            return group_norms(x, labels).sum(-1)
        value = x.abs().sum(-1)
        lo = -math.inf if self.lower is None else self.lower
        hi = math.inf if self.upper is None else self.upper
        if self.kind == "nonneg":
            lo = 0.0
        outside = ((x < lo) | (x > hi)).any(-1)
        return torch.where(outside, torch.full_like(value, math.inf), value)

    # ----------------------------------------------------------------- config
    def config(self) -> Any:
        """Plain data that :func:`make_prox` rebuilds this prox from; the user's function
        itself for a callable (which a checkpoint refuses)."""
        if self.kind in ("soft", "nonneg"):
            return self.kind
        if self.kind == "group":
            if self.group_size is not None:
                return {"kind": "group", "group_size": self.group_size}
            return {"kind": "group", "groups": self.groups.clone()}
        if self.kind == "box":
            return {"kind": "box", "lower": self.lower, "upper": self.upper}
        return self.fn

    def __repr__(self) -> str:
        if self.kind == "callable":
            return f"Prox(callable {getattr(self.fn, '__name__', type(self.fn).__name__)})"
        cfg = self.config()
        if isinstance(cfg, dict) and "groups" in cfg:
            return f"Prox('group', {int(self.groups.max()) + 1} groups of any sizes)"
        return f"Prox({cfg!r})"


def make_prox(spec: Any = None, n: int | None = None) -> Prox:
    """A :class:`Prox` from ``spec``: None or ``"soft"``, ``"nonneg"``, a dict
    ``{"kind": ..., **options}`` (e.g. ``{"kind": "group", "group_size": 5}``,
    ``{"kind": "box", "lower": 0.0, "upper": 1.0}``), a :class:`Prox`, or a callable
    ``fn(v, threshold) -> x``. With ``n``, checks that it applies to signals of length ``n``.

    Example:
        >>> import torch
        >>> make_prox("nonneg")(torch.tensor([-2.0, 0.5, 3.0]), 1.0)
        tensor([0., 0., 2.])
    """
    if spec is None:
        out = Prox("soft")
    elif isinstance(spec, Prox):
        out = spec
    elif isinstance(spec, str):
        if spec in ("group", "box"):
            example = (
                "{'kind': 'group', 'group_size': 5}"
                if spec == "group"
                else ("{'kind': 'box', 'lower': 0.0, 'upper': 1.0}")
            )
            raise ValueError(f"prox={spec!r} needs options: give a dict such as {example}.")
        out = Prox(spec)
    elif isinstance(spec, dict):
        opts = dict(spec)
        kind = opts.pop("kind", None)
        if not isinstance(kind, str) or kind not in _NAMED:
            raise ValueError(f"Expected a prox dict with 'kind' in {_NAMED} (got kind={kind!r}).")
        try:
            out = Prox(kind, **opts)
        except TypeError as err:
            if "unexpected keyword" in str(err):
                raise ValueError(f"Unknown option in prox {spec!r}: {err}.") from None
            raise
    elif callable(spec):
        out = Prox("callable", fn=spec)
    else:
        raise TypeError(
            "Expected 'prox' to be None, 'soft', 'nonneg', a dict such as "
            "{'kind': 'group', 'group_size': 5}, a Prox or a callable (v, threshold) -> x "
            f"(got {type(spec).__name__})."
        )
    if n is not None:
        out.check_length(n)
    return out


def project_box(
    x: torch.Tensor,
    lower: torch.Tensor | float | None = None,
    upper: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Euclidean projection onto ``{lower <= x <= upper}``.

    The result has ``x``'s dtype and device: tensor bounds are cast to them when ``x`` is
    floating point (``torch.clamp`` alone promotes a float32 ``x`` to float64 bounds).

    Args:
        x: any tensor.
        lower, upper: bounds (tensors broadcasting against ``x``, numbers or None).

    Example:
        >>> import torch
        >>> project_box(torch.tensor([-2.0, 0.5, 3.0]), 0.0, 1.0)
        tensor([0.0000, 0.5000, 1.0000])
    """
    # tensor bounds on x's device (and dtype) first: the checks compare them with each other
    dt = {"dtype": x.dtype} if x.is_floating_point() else {}
    lower, upper = (b.to(device=x.device, **dt) if isinstance(b, torch.Tensor) else b
                    for b in (lower, upper))  # fmt: skip
    for name, bound in (("lower", lower), ("upper", upper)):
        if bound is not None and bool(torch.as_tensor(bound).isnan().any()):
            raise ValueError(f"Expected bounds without NaN in project_box (got {name}={bound}).")
    if lower is not None and upper is not None:
        if bool((torch.as_tensor(lower, device=x.device) > upper).any()):
            raise ValueError(f"Expected lower <= upper in project_box (got {lower}, {upper}).")
    # one clamp per bound: torch.clamp takes no tensor and number together, nor two Nones
    out = x.clone() if lower is None else torch.clamp(x, min=lower)
    return out if upper is None else torch.clamp(out, max=upper)


def project_nonnegative(x: torch.Tensor) -> torch.Tensor:
    """Projection onto the non-negative orthant.

    Args:
        x: any tensor.

    Example:
        >>> import torch
        >>> project_nonnegative(torch.tensor([-1.0, 2.0]))
        tensor([0., 2.])
    """
    return torch.relu(x)


def project_support(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Projection onto signals supported on ``mask`` (zero outside it, exactly).

    ``mask`` broadcasts against ``x`` (e.g. ``(H, W)`` against ``(batch, H, W)``).

    Args:
        x: any tensor.
        mask: boolean (or 0/1) tensor broadcasting against ``x``.

    Example:
        >>> import torch
        >>> project_support(torch.ones(1, 2, 2), torch.tensor([[True, False], [False, True]]))
        tensor([[[1., 0.],
                 [0., 1.]]])
    """
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"Expected 'mask' to be a torch.Tensor (got {type(mask).__name__}).")
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    return torch.where(as_bool_mask(mask), x, zero)
