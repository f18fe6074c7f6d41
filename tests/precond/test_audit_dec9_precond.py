"""Preconditioners, an adversarial audit (December 9): each test fails on the code before."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unrollsci.precond import LearnedPreconditioner, diffusion2d, graph_laplacian
from unrollsci.solvers import cg


@pytest.mark.parametrize("scaling", [True, False])
@pytest.mark.parametrize("ratio", [37.0, 40.0, 1e6])
def test_poly_preconditioner_stays_spd_when_its_ratio_saturates(ratio, scaling):
    """sigmoid(poly_ratio) rounds to 1 from about 36.7: lo = hi, and every entry of M was
    NaN (cg ran to max_iter; training losses became NaN)."""
    a = diffusion2d(8, seed=0)
    n = a.shape[0]
    model = LearnedPreconditioner("poly", seed=0, scaling=scaling)
    with torch.no_grad():
        model.poly_ratio.fill_(ratio)
    m = model.build(a)
    dense = m(torch.eye(n, dtype=torch.float64)).T
    assert torch.isfinite(dense).all()
    torch.testing.assert_close(dense, dense.T, rtol=1e-10, atol=1e-12)
    assert float(torch.linalg.eigvalsh(dense).min()) > 0
    b = torch.ones(n, dtype=torch.float64)
    sol = cg(a, b, M=m, tol=1e-8, max_iter=500)
    assert sol.converged
    np.testing.assert_allclose(sol.x.numpy(), np.linalg.solve(a.toarray(), b.numpy()), rtol=1e-6)


def test_graph_laplacian_refuses_a_zero_shift():
    """shift=0 returned the singular L itself (docstring: SPD); make_batches then stored
    'exact' solutions with relative residuals of 1.7-3.2."""
    with pytest.raises(ValueError, match="shift"):
        graph_laplacian(8, shift=0.0)
    assert graph_laplacian(8, shift=1e-6).shape == (64, 64)
