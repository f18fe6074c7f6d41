"""``kind="poly"`` with non-finite parameters (audit round "dec16", a label, not a date).

The learned polynomial's interval ratio and combination weights are read straight from
``poly_ratio`` and ``poly_logits``: a NaN ratio, or a NaN or infinite logit (a diverged
training run, an edited checkpoint), made every entry of ``M`` NaN. The other kinds map
non-finite head outputs to finite ones so that ``M`` stays SPD; so does the polynomial now.
Reference: the dense matrix of ``M`` (applied to the identity) and numpy's eigenvalues.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from unrollsci.precond import LearnedPreconditioner


def _dense(m, n: int) -> np.ndarray:
    eye = torch.eye(n, dtype=torch.float64)
    return np.stack([m(eye[i : i + 1])[0].numpy() for i in range(n)])


@pytest.mark.parametrize("scaling", [False, True])
@pytest.mark.parametrize(
    "name, value",
    [
        ("poly_ratio", float("nan")),
        ("poly_ratio", float("-inf")),
        ("poly_ratio", float("inf")),
        ("poly_logits", float("nan")),
        ("poly_logits", float("inf")),
        ("poly_logits", float("-inf")),
    ],
)
def test_poly_preconditioner_spd_for_non_finite_parameters(scaling, name, value):
    n = 24
    a = sp.diags([-np.ones(n - 1), 2.5 * np.ones(n), -np.ones(n - 1)], [-1, 0, 1]).tocsr()
    model = LearnedPreconditioner("poly", degree=4, scaling=scaling)
    with torch.no_grad():
        p = getattr(model, name)
        if p.dim() == 0:
            p.fill_(value)
        else:
            p[0] = value
    m = _dense(model.build(a), n)
    assert np.all(np.isfinite(m))
    np.testing.assert_allclose(m, m.T, rtol=1e-10, atol=1e-12 * np.abs(m).max())
    ev = np.linalg.eigvalsh(0.5 * (m + m.T))
    assert ev.min() > 1e-6 * ev.max()


def test_finite_parameters_unchanged():
    """Ordinary parameters: the same preconditioner as the plain formula."""
    n = 16
    a = sp.diags([-np.ones(n - 1), 3.0 * np.ones(n), -np.ones(n - 1)], [-1, 0, 1]).tocsr()
    torch.manual_seed(0)
    model = LearnedPreconditioner("poly", degree=3, scaling=False)
    with torch.no_grad():
        model.poly_logits.copy_(torch.randn(4))
        model.poly_ratio.fill_(-2.0)
    m = model.build(a)
    assert torch.equal(m.weights, torch.softmax(model.poly_logits.double(), 0))
    hi = m.hi
    assert torch.allclose(m.lo, hi * torch.sigmoid(torch.tensor(-2.0, dtype=torch.float64)))
