"""Proximal operators and projections, batched and differentiable.

All functions act elementwise on tensors of any shape (a leading batch axis is
just another axis) and broadcast their parameters.
"""

from __future__ import annotations

import torch

__all__ = [
    "soft_threshold",
    "group_soft_threshold",
    "project_box",
    "project_nonnegative",
    "project_support",
]


def soft_threshold(x: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    """Prox of ``t * ||x||_1``: ``sign(x) * max(|x| - t, 0)``.

    Example:
        >>> import torch
        >>> soft_threshold(torch.tensor([-2.0, 0.5, 3.0]), 1.0)
        tensor([-1.,  0.,  2.])
    """
    return torch.sign(x) * torch.relu(x.abs() - threshold)


def group_soft_threshold(
    x: torch.Tensor,
    threshold: torch.Tensor | float,
    *,
    group_size: int | None = None,
    dim: int = -1,
    eps: float = 0.0,
) -> torch.Tensor:
    """Prox of ``t * sum_g ||x_g||_2`` (block soft thresholding).

    Groups are consecutive blocks of ``group_size`` entries along ``dim`` (the
    whole axis when ``group_size`` is None): ``x_g * max(1 - t / ||x_g||, 0)``.

    Example:
        >>> import torch
        >>> group_soft_threshold(torch.tensor([[3.0, 4.0, 0.1, 0.0]]), 1.0, group_size=2)
        tensor([[2.4000, 3.2000, 0.0000, 0.0000]])
    """
    dim = dim % x.dim()
    n = x.shape[dim]
    g = n if group_size is None else int(group_size)
    if g <= 0 or n % g:
        raise ValueError(f"Expected group_size dividing the axis length {n} (got {group_size}).")
    xm = x.movedim(dim, -1)
    shp = xm.shape
    grouped = xm.reshape(*shp[:-1], n // g, g)
    norms = grouped.norm(dim=-1, keepdim=True)
    # Safe division: where the group norm is zero the factor is irrelevant (output 0).
    factor = torch.relu(1 - threshold / torch.clamp(norms, min=torch.finfo(x.dtype).tiny + eps))
    return (grouped * factor).reshape(shp).movedim(-1, dim)


def project_box(
    x: torch.Tensor,
    lower: torch.Tensor | float | None = None,
    upper: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Euclidean projection onto ``{lower <= x <= upper}``.

    Args:
        x: any tensor.
        lower, upper: bounds (tensors broadcasting against ``x``, numbers or None).

    Example:
        >>> import torch
        >>> project_box(torch.tensor([-2.0, 0.5, 3.0]), 0.0, 1.0)
        tensor([0.0000, 0.5000, 1.0000])
    """
    if lower is not None and upper is not None:
        lo, hi = torch.as_tensor(lower), torch.as_tensor(upper)
        if bool((lo > hi).any()):
            raise ValueError(f"Expected lower <= upper in project_box (got {lower}, {upper}).")
    return torch.clamp(x, min=lower, max=upper)


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
    return torch.where(mask.to(torch.bool), x, torch.zeros((), dtype=x.dtype, device=x.device))
