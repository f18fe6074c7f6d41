"""Regression tests of the audit round "dec10" (miscellaneous): the block preconditioner's inverse
cache after an in-place change of its values (and with trained / Parameter values), a
reordered preconditioner independent of the caller's permutation tensor, ALISTA's fixed
weight after a dtype change, Born-Mayer parameters and ``max_iter`` of ``solve_charges``
checked, the group / box prox arguments and the Chebyshev degree checked."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn

from unrollsci.chem import BornMayer, solve_charges
from unrollsci.graph import chebyshev_coefficients
from unrollsci.operators import MatrixOperator
from unrollsci.precond import (
    BlockPreconditioner,
    DiagonalPreconditioner,
    PermutedPreconditioner,
    lower_pattern,
)
from unrollsci.prox import Prox, group_soft_threshold
from unrollsci.unrolled import ALISTA

F64 = torch.float64

# --- 1. BlockPreconditioner: values changed in place, trained, or an nn.Parameter -------


def _block_problem(n: int = 10, bs: int = 4):
    """A block-diagonal SPD matrix (blocks of ``bs``, the last one shorter) and its lower
    pattern; the block factor is ``L = tril(A)`` (positive diagonal)."""
    a = sp.diags([-1.0, 4.0, -1.0], [-1, 0, 1], shape=(n, n)).tocoo()
    keep = (a.row // bs) == (a.col // bs)
    a = sp.csr_matrix((a.data[keep], (a.row[keep], a.col[keep])), shape=(n, n))
    pat, vals = lower_pattern(a)
    return pat, torch.as_tensor(vals, dtype=F64), np.tril(a.toarray())


def _dense_lower(pat, values: torch.Tensor) -> torch.Tensor:
    """``L`` as a dense tensor, differentiable in ``values`` (no block code involved)."""
    n = pat.n
    return torch.zeros(n, n, dtype=values.dtype).index_put((pat.row, pat.col), values)


def _reference_apply(pat, values: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``(L L^T)^{-1} r`` by a dense solve."""
    low = _dense_lower(pat, values)
    return torch.linalg.solve(low @ low.T, r.T).T


def test_block_preconditioner_sees_an_in_place_change_of_its_values():
    pat, vals, low = _block_problem()
    r = torch.randn(2, pat.n, dtype=F64, generator=torch.Generator().manual_seed(0))
    m = BlockPreconditioner(pat, vals.clone(), 4)
    with torch.no_grad():
        z0 = m(r)
        ref0 = np.linalg.solve(low @ low.T, r.numpy().T).T
        np.testing.assert_allclose(z0.numpy(), ref0, rtol=1e-12, atol=1e-14)
        m.values.mul_(2.0)  # L -> 2 L: the operator (L L^T)^{-1} -> / 4
        np.testing.assert_allclose(m(r).numpy(), ref0 / 4, rtol=1e-12, atol=1e-14)
        m.values = vals.clone()  # an assignment refreshes too
        np.testing.assert_allclose(m(r).numpy(), ref0, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("as_parameter", [False, True], ids=["leaf", "parameter"])
def test_block_preconditioner_trains_with_leaf_or_parameter_values(as_parameter):
    pat, vals, _ = _block_problem()
    r = torch.randn(3, pat.n, dtype=F64, generator=torch.Generator().manual_seed(1))
    p = nn.Parameter(vals.clone()) if as_parameter else vals.clone().requires_grad_(True)
    m = BlockPreconditioner(pat, p, 4)
    if as_parameter:
        assert any(q is p for q in m.parameters())
    opt = torch.optim.SGD([p], lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        m(r).pow(2).sum().backward()  # raised "backward ... a second time" at step 1
        ref = vals.detach().clone().copy_(p.detach()).requires_grad_(True)
        _reference_apply(pat, ref, r).pow(2).sum().backward()
        torch.testing.assert_close(p.grad, ref.grad, rtol=1e-10, atol=1e-12)
        opt.step()
        with torch.no_grad():  # the cached (graph-free) inverse follows the step
            torch.testing.assert_close(
                m(r), _reference_apply(pat, p.detach(), r), rtol=1e-10, atol=1e-12
            )


# --- 2. PermutedPreconditioner: a copy of the caller's permutation ----------------------


@pytest.mark.parametrize("give_inverse", [False, True])
def test_permuted_preconditioner_ignores_later_edits_of_the_callers_perm(give_inverse):
    n = 6
    d = np.arange(1.0, n + 1)
    perm = torch.tensor([2, 0, 1, 5, 3, 4])
    iperm = torch.argsort(perm)
    inner = DiagonalPreconditioner(torch.as_tensor(d))
    kw = {"inverse": iperm} if give_inverse else {}
    m = PermutedPreconditioner(inner, perm, **kw)
    # reference: M = P^T diag(1/d) P, (P r)_k = r_perm[k]
    p_mat = np.eye(n)[[2, 0, 1, 5, 3, 4]]
    inner_dense = inner.to_dense().numpy()
    want = p_mat.T @ inner_dense @ p_mat
    perm.copy_(torch.arange(n))  # the caller reuses its tensors
    iperm.copy_(torch.arange(n).flip(0))
    got = m.to_dense().numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=0)
    np.testing.assert_array_equal(got, got.T)


# --- 3. ALISTA: the fixed weight formed again on a dtype change ------------------------


def _analytic_weight_numpy(a: np.ndarray) -> np.ndarray:
    """``w_i = G^+ a_i / (a_i^T G^+ a_i)``, ``G = A A^T`` (Liu et al. 2019), in numpy."""
    ga = np.linalg.pinv(a @ a.T, hermitian=True) @ a
    return ga / np.sum(a * ga, axis=0)


def test_alista_weight_is_formed_again_in_float64_after_double():
    gen = torch.Generator().manual_seed(0)
    a32 = torch.randn(20, 40, generator=gen) / 20**0.5
    op = MatrixOperator(a32)
    want = _analytic_weight_numpy(a32.double().numpy())
    model = ALISTA(op, 3, lam=0.1, support_selection=False).double()
    assert model.W.dtype == F64
    err = np.abs(model.W.numpy() - want).max() / np.abs(want).max()
    assert err < 1e-12  # 5e-8 (float32 rounding kept) before
    # back to float32: the float64 weight rounded once (what a float32 model holds)
    back = model.float()
    fresh = ALISTA(op, 3, lam=0.1, support_selection=False)
    assert back.W.dtype == torch.float32
    assert torch.equal(back.W, fresh.W)
    # the adjoint weight is A itself in the new dtype
    adj = ALISTA(op, 3, lam=0.1, weight="adjoint", support_selection=False).double()
    assert torch.equal(adj.W, a32.double())


# --- 4. chem: Born-Mayer parameters finite, solve_charges max_iter >= 0 ----------------


@pytest.mark.parametrize(
    "params", [(math.nan, 0.3), (1.0, math.nan), (math.inf, 0.3), (1.0, math.inf)]
)
def test_born_mayer_refuses_non_finite_parameters(params):
    with pytest.raises(ValueError, match=r"finite A >= 0 and rho > 0 for pair \('O', 'H'\)"):
        BornMayer({("O", "H"): params})


def test_born_mayer_refuses_a_nan_cutoff():
    with pytest.raises(ValueError, match="cutoff > 0"):
        BornMayer({("O", "H"): (1.0, 0.3)}, cutoff=math.nan)


def test_solve_charges_refuses_a_negative_max_iter():
    pos = torch.tensor([[0.0, 0, 0], [0, 0, 1.0]], dtype=F64)
    with pytest.raises(ValueError, match="Expected 'max_iter' >= 0"):
        solve_charges(pos, ["O", "H"], max_iter=-1, cutoff=None)


# --- 5. prox: dim in range, finite eps, a non-empty box, non-empty groups --------------


@pytest.mark.parametrize("dim", [5, 2, -3, -7])
def test_group_soft_threshold_refuses_a_dim_out_of_range(dim):
    with pytest.raises(IndexError, match=r"'dim' in \[-2, 1\]"):
        group_soft_threshold(torch.ones(2, 4, dtype=F64), 1.0, dim=dim)


@pytest.mark.parametrize("dim", [0, 1, -1, -2])
def test_group_soft_threshold_valid_dims_match_numpy(dim):
    x = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(2))
    xn = np.moveaxis(x.numpy(), dim, -1)
    norm = np.linalg.norm(xn, axis=-1, keepdims=True)
    want = np.moveaxis(xn * np.maximum(1 - 0.7 / norm, 0), -1, dim)
    np.testing.assert_allclose(group_soft_threshold(x, 0.7, dim=dim).numpy(), want, rtol=1e-13)


@pytest.mark.parametrize("eps", [math.nan, math.inf, -1.0])
def test_group_soft_threshold_refuses_a_bad_eps(eps):
    with pytest.raises(ValueError, match="finite eps >= 0"):
        group_soft_threshold(torch.ones(1, 4, dtype=F64), 1.0, group_size=2, eps=eps)


@pytest.mark.parametrize(
    "bounds", [dict(lower=math.inf), dict(upper=-math.inf), dict(lower=math.inf, upper=math.inf)]
)
def test_box_prox_refuses_an_empty_box(bounds):
    with pytest.raises(ValueError, match="lower <= upper, lower < inf and upper > -inf"):
        Prox("box", **bounds)


def test_group_prox_refuses_empty_groups():
    with pytest.raises(ValueError, match="at least one label"):
        Prox("group", groups=torch.tensor([], dtype=torch.long))


# --- 6. chebyshev_coefficients: degree >= 0 ---------------------------------------------


def test_chebyshev_coefficients_refuses_a_negative_degree():
    with pytest.raises(ValueError, match="degree >= 0"):
        chebyshev_coefficients(np.exp, -1, 2.0)
    # degree 0: the constant interpolant, the value at the one Chebyshev node mu = lmax / 2
    np.testing.assert_allclose(chebyshev_coefficients(np.exp, 0, 2.0), [np.exp(1.0)])
