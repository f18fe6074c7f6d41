"""Inputs of the unrolled models and the losses that an audit found unchecked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unrollsci.losses import kkt_residual, mse
from unrollsci.operators import MatrixOperator
from unrollsci.unrolled import LAMP, BlockLISTA

torch.manual_seed(0)
A = torch.randn(12, 20, dtype=torch.float64) / 12**0.5
Y = torch.randn(3, 12, dtype=torch.float64)


def test_kkt_residual_checks_its_inputs():
    op, x = MatrixOperator(A), torch.zeros(3, 20, dtype=torch.float64)
    assert kkt_residual(op, x, Y, 0.1).shape == (3,)
    with pytest.raises(ValueError, match="lam"):
        kkt_residual(op, x, Y, -0.1)  # returned meaningless finite values
    with pytest.raises(ValueError, match="lam"):
        kkt_residual(op, x, Y, float("nan"))
    with pytest.raises(TypeError, match="floating"):
        kkt_residual(op, x.long(), Y, 0.1)  # cast lam to int: 0.1 became 0
    for bad in (torch.zeros(2, 20, dtype=torch.float64), torch.zeros(3, 19, dtype=torch.float64)):
        with pytest.raises(ValueError, match="'x' of shape"):
            kkt_residual(op, bad, Y, 0.1)
    with pytest.raises(ValueError, match="lam"):
        kkt_residual(op, x, Y, torch.full((2,), 0.1, dtype=torch.float64))


def test_mse_refuses_integer_tensors():
    with pytest.raises(TypeError, match="floating"):
        mse(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long))


def test_block_lista_inputs():
    with pytest.raises(TypeError, match="groups"):
        BlockLISTA(A, 2, groups=np.repeat(np.arange(5), 4))
    model = BlockLISTA(A, 2, group_size=4)
    # an empty batch crashed in a reshape; now the library's rule: no problem, a clear error
    with pytest.raises(ValueError, match="at least one problem"):
        model(Y[:0])


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 0.0])
def test_lamp_scale_init_must_be_finite_and_positive(value):
    """scale_init=inf gave a model whose output was 0 for every y."""
    with pytest.raises(ValueError, match="scale_init"):
        LAMP(A, 2, scale_init=value)
