"""Chebyshev roots on an interval: the step sizes of Chebyshev-accelerated Richardson."""

from __future__ import annotations

import math

import torch

from .._validation import check_count, check_device

__all__ = ["chebyshev_roots"]


def chebyshev_roots(
    num: int,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The ``num`` roots of the degree-``num`` Chebyshev polynomial mapped to ``[0, 1]``.

    ``t_k = (1 + cos((2k - 1) pi / (2 num))) / 2`` for ``k = 1..num`` (decreasing, all
    strictly inside ``(0, 1)``). On an interval ``[lo, hi]`` the roots are
    ``lo + (hi - lo) t_k``; their inverses are the steps of ``num`` Richardson
    (gradient) iterations with the smallest worst-case error on a spectrum in
    ``[lo, hi]``. Computed in ``dtype`` (a real floating dtype; another one, an integer
    or complex dtype, raises ``TypeError``) on ``device``.

    Example:
        >>> chebyshev_roots(2)
        tensor([0.8536, 0.1464], dtype=torch.float64)
    """
    num = check_count("num", num)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(
            "Expected 'dtype' to be a real floating-point torch.dtype, e.g. torch.float64 "
            f"(got {dtype})."
        )
    k = torch.arange(1, num + 1, dtype=dtype, device=check_device(device))
    return 0.5 * (1 + torch.cos((2 * k - 1) * math.pi / (2 * num)))
