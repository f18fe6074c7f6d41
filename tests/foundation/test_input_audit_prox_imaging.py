"""Inputs found by the prox / losses / imaging / group-sparsity audit (December 7): each
was accepted with a wrong result, kept the caller's tensor, or failed deep in torch."""

from __future__ import annotations

import math

import pytest
import torch

from unrollsci.imaging import Radon, ellipse_line_integrals, filter_sinogram, ramp_filter
from unrollsci.losses import kkt_residual
from unrollsci.prox import project_box, project_support
from unrollsci.unrolled import BlockLISTA


def test_integer_sinogram_is_refused_not_zeroed():
    y = torch.randint(0, 10, (1, 4, 16))
    with pytest.raises(TypeError, match="floating-point"):  # it returned all zeros
        filter_sinogram(y)
    assert filter_sinogram(y.double()).abs().max() > 0


@pytest.mark.parametrize(
    ("n", "exc"), [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError)]
)
def test_ramp_filter_detector_count(n, exc):
    with pytest.raises(exc, match="n_detectors"):
        ramp_filter(n)


def test_box_and_support_projections_refuse_bad_bounds_and_masks():
    x = torch.tensor([-1.0, 0.5, 2.0])
    with pytest.raises(ValueError, match="NaN"):  # returned all NaN
        project_box(x, float("nan"), 1.0)
    with pytest.raises(ValueError, match="0/1"):  # 0.5 was read as True
        project_support(x, torch.tensor([1.0, 0.5, 0.0]))
    assert torch.equal(
        project_support(x, torch.tensor([1.0, 0.0, 1.0])), torch.tensor([-1.0, 0, 2])
    )


def test_tv_reconstruction_refuses_a_fractional_mask():
    from unrollsci.imaging import tv_reconstruction

    op = Radon(8, 6)
    y = torch.rand(1, 6, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="0/1"):
        tv_reconstruction(y, op, 0.1, mask=torch.full((8, 8), 0.5, dtype=torch.float64))


def test_ellipse_with_a_zero_semi_axis_is_refused():
    params = torch.tensor([[1.0, 0.0, 0.5, 0.0, 0.0, 0.0]])  # a = 0: NaN integrals before
    p, d = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    with pytest.raises(ValueError, match="semi-axes"):
        ellipse_line_integrals(params, p, d, 64)


def test_convex_ridge_margin_must_be_finite():
    from unrollsci.imaging import ConvexRidgeCT

    with pytest.raises(ValueError, match="finite margin"):  # the docs promised this
        ConvexRidgeCT(Radon(8, 6), n_layers=1, filters=2, kernel_size=3, margin=math.inf)


def test_self_ensemble_symmetry_count_type():
    from unrollsci.imaging import UnrolledCT, self_ensemble

    model = UnrolledCT(Radon(8, 6), n_layers=1, channels=2).double()
    y = torch.rand(1, 6, 8, dtype=torch.float64)
    for bad in (2.5, True):
        with pytest.raises(TypeError, match="symmetries"):
            self_ensemble(model, y, symmetries=bad)


def test_block_lista_copies_labels_and_checks_group_size():
    torch.manual_seed(0)
    a = torch.randn(30, 40, dtype=torch.float64)
    labels = torch.arange(40) // 5
    model = BlockLISTA(a, 2, groups=labels, dtype=torch.float64)
    with torch.no_grad():
        model.blocks.add_(0.1 * torch.randn_like(model.blocks))
    y = torch.randn(2, 30, dtype=torch.float64)
    before = model(y)
    labels[:20] = 0  # the caller edits its tensor afterwards: the model must not change
    assert torch.equal(model(y), before)
    for bad in (7, 0):  # 7 does not divide 40; with prox= the check was skipped
        with pytest.raises(ValueError, match="group_size"):
            BlockLISTA(a, 2, group_size=bad, prox="soft")


def test_kkt_residual_shape_message_and_nan():
    a = torch.randn(10, 20, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"Expected 'x' of shape \(20,\)"):  # said (1, 20)
        kkt_residual(a, torch.zeros(1, 20, dtype=torch.float64), torch.randn(10).double(), 0.1)
    x = torch.zeros(20, dtype=torch.float64)
    x[3] = math.nan
    with pytest.raises(ValueError, match="finite|NaN"):  # returned NaN
        kkt_residual(a, x, torch.randn(10, dtype=torch.float64), 0.1)
