"""Round dec11 of the audits ("dec11" names the round, not a date): learned AMG set-ups
built under a caller's ``torch.inference_mode()``."""

from __future__ import annotations

import pytest
import scipy.sparse as sp
import torch

from unrollsci.precond._amg import TwoLevelCycle, amg_setup, prolongation_values
from unrollsci.precond._amg_rs import rs_setup


def _laplacian_2d(m: int = 6):
    t = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], shape=(m, m))
    a = (sp.kron(sp.eye(m), t) + sp.kron(t, sp.eye(m)) + 1e-2 * sp.eye(m * m)).tocsr()
    a.sort_indices()
    return a


@pytest.mark.parametrize("build", [amg_setup, rs_setup], ids=["sa", "rs"])
def test_setup_built_in_inference_mode_is_usable_by_autograd(build):
    """A set-up (and its lazy index maps and smoother factor) made under inference mode held
    inference tensors: the gradient through the V-cycle failed ("Inference tensors cannot be
    saved for backward")."""
    a = _laplacian_2d()
    with torch.inference_mode():
        s = build(a)
        s.maps()
        s.smoother_factor("cpu")
        moved = s.to("cpu")
    for setup in (s, moved):
        m = setup.e_row.numel() if setup.coarsening == "sa" else setup.target.numel()
        w = torch.full((m,), 0.5, dtype=torch.float64, requires_grad=True)
        y = TwoLevelCycle(setup, prolongation_values(setup, w))(
            torch.ones(1, a.shape[0], dtype=torch.float64)
        )
        (grad,) = torch.autograd.grad(y.square().sum(), w)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
