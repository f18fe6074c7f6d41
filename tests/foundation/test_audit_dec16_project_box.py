"""``project_box`` with one tensor and one number bound (audit round "dec16", a label,
not a date).

The signature takes each bound as a tensor, a number or None, but ``torch.clamp`` refuses a
tensor and a number together (``TypeError: clamp() received an invalid combination of
arguments``) and two Nones (``RuntimeError``); and the ``lower <= upper`` check compared the
bounds before they were moved to ``x``'s device. Reference: ``numpy.clip``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unrollsci.prox import project_box


@pytest.mark.parametrize("tensor_side", ["lower", "upper"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_tensor_and_a_number_bound(tensor_side, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 7, generator=g, dtype=dtype) * 3
    lo = torch.rand(7, generator=g, dtype=torch.float64) - 1.0
    lower, upper = (lo, 0.5) if tensor_side == "lower" else (-0.5, lo + 1.5)
    out = project_box(x, lower, upper)
    want = np.clip(x.numpy(), np.asarray(lower, dtype=np.float64), np.asarray(upper))
    assert out.dtype == dtype
    np.testing.assert_array_equal(out.numpy(), want.astype(out.numpy().dtype))


def test_no_bounds_is_the_identity_on_a_copy():
    x = torch.tensor([-2.0, 0.5, 3.0])
    out = project_box(x)
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


def test_mixed_bounds_in_the_wrong_order_are_refused():
    with pytest.raises(ValueError, match="lower <= upper"):
        project_box(torch.zeros(3), torch.ones(3), 0.0)
    with pytest.raises(ValueError, match="lower <= upper"):
        project_box(torch.zeros(3), 1.0, torch.zeros(3))


def test_same_results_as_one_clamp_where_it_applied():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, generator=g, dtype=torch.float64)
    lo, hi = -torch.rand(50, generator=g, dtype=torch.float64), torch.rand(50, generator=g)
    assert torch.equal(project_box(x, lo, hi.double()), torch.clamp(x, min=lo, max=hi.double()))
    assert torch.equal(project_box(x, -0.3, 0.2), torch.clamp(x, min=-0.3, max=0.2))
