"""Second derivatives through ``grad="implicit"`` (gradient audit, December 7): the adjoint
solve's backward was not differentiable and did not say so, so a Hessian-vector product of
``cg(A(theta), b, grad="implicit")`` was wrong in every entry (and a QEq Born-charge loss
14-24%). Now it raises, except where nothing is dropped (an incoming gradient with no
component in the solution space: QEq energy Hessians, tested in
tests/chem/test_second_derivatives.py); ``grad="unrolled"`` gives them."""

from __future__ import annotations

import pytest
import torch

from unrollsci.solvers import cg

D = torch.float64


def _setup():
    torch.manual_seed(0)
    n = 5
    c = torch.randn(n, n, dtype=D)
    b = torch.randn(n, dtype=D)
    v = torch.randn(n, dtype=D)

    def a_of(th):
        return c @ torch.diag(torch.exp(th)) @ c.T + torch.eye(n, dtype=D)

    return a_of, b, v, 0.3 * torch.randn(n, dtype=D)


def _grad(a_of, b, th, mode, create):
    th = th.clone().requires_grad_(True)
    loss = (cg(a_of(th), b, grad=mode, tol=1e-14).x ** 2).sum()
    (g,) = torch.autograd.grad(loss, th, create_graph=create)
    return th, g


def test_implicit_second_derivative_raises_and_unrolled_matches_finite_differences():
    a_of, b, v, th0 = _setup()
    th, g = _grad(a_of, b, th0, "implicit", False)  # first order: fine
    th_u, g_u = _grad(a_of, b, th0, "unrolled", False)
    assert torch.allclose(g, g_u, rtol=1e-8)
    with pytest.raises(NotImplementedError, match="grad='unrolled'"):  # create_graph=True
        _grad(a_of, b, th0, "implicit", True)
    th, g = _grad(a_of, b, th0, "unrolled", True)
    hvp = torch.autograd.grad(g @ v, th)[0]
    h = 1e-5
    fd = (_grad(a_of, b, th0 + h * v, "unrolled", False)[1]
          - _grad(a_of, b, th0 - h * v, "unrolled", False)[1]) / (2 * h)  # fmt: skip
    assert torch.allclose(hvp, fd, rtol=1e-5, atol=1e-8)
