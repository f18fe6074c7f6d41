"""Proximal operators against their closed forms and definitions."""

from __future__ import annotations

import pytest
import torch

from unrollsci.prox import (
    group_soft_threshold,
    project_box,
    project_nonnegative,
    project_support,
    soft_threshold,
)


def test_soft_threshold_is_prox_of_l1(device):
    # prox_{t|.|}(v) = argmin_x 0.5 (x - v)^2 + t|x|: check against a brute-force grid.
    v = torch.linspace(-3, 3, 61, dtype=torch.float64, device=device)
    t = 0.7
    grid = torch.linspace(-4, 4, 80001, dtype=torch.float64, device=device)
    obj = 0.5 * (grid[None] - v[:, None]) ** 2 + t * grid.abs()[None]
    brute = grid[obj.argmin(dim=1)]
    torch.testing.assert_close(soft_threshold(v, t), brute, atol=2e-4, rtol=0)


def test_group_soft_threshold_matches_formula(device):
    x = torch.randn(4, 12, dtype=torch.float64, device=device)
    out = group_soft_threshold(x, 0.8, group_size=3)
    g = x.reshape(4, 4, 3)
    n = g.norm(dim=-1, keepdim=True)
    expected = (g * torch.clamp(1 - 0.8 / n, min=0)).reshape(4, 12)
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="group_size"):
        group_soft_threshold(x, 0.1, group_size=5)


def test_group_soft_threshold_zero_group_no_nan(device):
    x = torch.zeros(1, 4, dtype=torch.float64, device=device, requires_grad=True)
    out = group_soft_threshold(x, 0.5, group_size=2)
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and (out == 0).all()


def test_projections(device):
    x = torch.tensor([[-2.0, 0.5, 3.0]], device=device)
    assert project_box(x, -1.0, 1.0).tolist() == [[-1.0, 0.5, 1.0]]
    assert project_nonnegative(x).tolist() == [[0.0, 0.5, 3.0]]
    mask = torch.tensor([True, False, True], device=device)
    assert project_support(x, mask).tolist() == [[-2.0, 0.0, 3.0]]
    with pytest.raises(ValueError, match="lower <= upper"):
        project_box(x, 1.0, -1.0)
