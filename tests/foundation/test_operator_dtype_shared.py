"""Operators are not models (docs/architecture.md, "dtypes"): casting a model that holds an
operator must not round the operator's stored matrix, which other models and solvers share.
``LISTA(op).float()`` turned the caller's float64 operator into float32 (audit): a float64
model on the same operator then changed by 4e-8 without any message."""

from __future__ import annotations

import torch

from unrollsci.operators import MatrixOperator, Radon
from unrollsci.solvers import fista
from unrollsci.unrolled import LISTA, UnrolledFISTA


def test_casting_a_model_leaves_its_shared_operator_alone():
    torch.manual_seed(0)
    op = MatrixOperator(torch.randn(30, 60, dtype=torch.float64) / 30**0.5)
    y = torch.randn(4, 30, dtype=torch.float64)
    m64 = UnrolledFISTA(op, 5, lam=0.05)
    ref_model, ref_fista = m64(y).detach(), fista(op, y, 0.05, tol=1e-12).x
    m32 = LISTA(op, 5, lam=0.05).float()
    assert op.matrix.dtype == torch.float64
    assert torch.equal(m64(y).detach(), ref_model)
    assert torch.equal(fista(op, y, 0.05, tol=1e-12).x, ref_fista)
    assert m32(y.float()).dtype == torch.float32  # the float32 model computes in float32


def test_learned_matrices_follow_the_model():
    learned = MatrixOperator(torch.nn.Parameter(torch.randn(3, 4, dtype=torch.float64)))
    learned.float()
    assert learned.matrix.dtype == torch.float32  # a weight, cast as any weight


def test_radon_keeps_its_geometry_through_float_and_back():
    r = Radon(8, 5)
    x = torch.rand(2, 8, 8, dtype=torch.float64)
    before = r(x)
    r.float().double()
    assert torch.equal(r(x), before)
