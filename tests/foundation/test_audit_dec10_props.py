"""Property audit of December 10: CG's claimed convergence in float64, the CT certificate at
its target, learned Ruge-Stuben AMG at the ends of float64's range, ConvexRidgeCT's box and
project_box's dtype. Each test fails on the code before the fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unrollsci import ConvergenceError, ConvergenceWarning

# ------------------------------------------------------------------ 1. cg, float64


def _ill_conditioned():
    """diffusion2d(12, sigma=10, shift=1e-8): condition 1e10; CG's updated residual met
    tol=1e-10 while the true one was 11x (jacobi) to 43x (chebyshev) above it."""
    from unrollsci.precond import diffusion2d

    a = diffusion2d(12, sigma=10.0, shift=1e-8, seed=0)
    b = torch.tensor(np.random.default_rng(0).standard_normal(a.shape[0]))
    return a, b


def _true_residual(a, b: torch.Tensor, x: torch.Tensor) -> float:
    """``||b - A x|| / ||b||`` by numpy, dense."""
    dense, bn = a.toarray(), b.numpy()
    return float(np.linalg.norm(bn - dense @ x.detach().numpy()) / np.linalg.norm(bn))


@pytest.mark.parametrize("precond", ["jacobi", "chebyshev"])
def test_cg_float64_converged_means_the_true_residual_meets_tol(precond):
    from unrollsci import precond as pc
    from unrollsci.solvers import cg

    a, b = _ill_conditioned()
    m = getattr(pc, precond)(a)
    with pytest.warns(ConvergenceWarning, match="below what torch.float64 reaches"):
        sol = cg(a, b, M=m)
    true = _true_residual(a, b, sol.x)
    assert not sol.converged or true <= 1e-10
    assert not sol.converged  # here the tolerance is below float64's reach on this system
    # the reported residual is the true one (numpy's, to its own rounding), not the drifted
    # recursive one (7e-11 reported, 1.1e-9 true before)
    assert sol.residual == pytest.approx(true, rel=0.5)
    with pytest.raises(ConvergenceError, match="below what torch.float64 reaches"):
        cg(a, b, M=m, throw=True)


def test_cg_float64_check_passes_on_a_reachable_tolerance():
    """A tolerance float64 reaches on the same system: converged, and truly so."""
    from unrollsci.precond import jacobi
    from unrollsci.solvers import cg

    a, b = _ill_conditioned()
    sol = cg(a, b, M=jacobi(a), tol=1e-7)
    assert sol.converged and _true_residual(a, b, sol.x) <= 1e-7


def test_cg_float64_implicit_gradient_on_a_well_conditioned_system():
    """The check adds a product but no iteration: float64 gradients of both modes match
    the dense reference ``dL/db = A^{-1} g``."""
    from unrollsci.solvers import cg

    gen = torch.Generator().manual_seed(0)
    q = torch.randn(20, 20, dtype=torch.float64, generator=gen)
    a = q @ q.T + 20 * torch.eye(20, dtype=torch.float64)
    g = torch.randn(20, dtype=torch.float64, generator=gen)
    ref = torch.linalg.solve(a, g)
    for grad in ("unrolled", "implicit"):
        b = torch.randn(20, dtype=torch.float64, generator=gen).requires_grad_(True)
        sol = cg(a, b, grad=grad, tol=1e-12)
        assert sol.converged
        (sol.x * g).sum().backward()
        torch.testing.assert_close(b.grad, ref, rtol=1e-8, atol=1e-10)


# ------------------------------------------------------- 2. lipschitz_target exactly


def _capped_model(radon, seed: int, **kw):
    from unrollsci.imaging import UnrolledCT

    model = UnrolledCT(radon, n_layers=3, channels=4, depth=2, lipschitz_target=kw.pop("T"), **kw)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (30 if "step" in name else 1e3))
    return model.eval()


@pytest.mark.parametrize(
    "seed, kw",
    [
        (3, dict(T=3.0, init="fbp", tied=True)),
        (1, dict(T=3.0, init="zero", memory=1, dual=True, tied=True)),
        (1, dict(T=50.0, init="zero", memory=1, dual=True, tied=True)),
    ],
)
def test_lipschitz_target_is_never_exceeded(seed, kw):
    """The float32 sigma buffer rounded the FFT bound down: the capped weight's own bound
    exceeded its cap, lipschitz_bound 3.0000000616606046 for a target of 3.0."""
    from unrollsci.imaging import Radon, lipschitz_bound
    from unrollsci.imaging._certify import conv_operator_norm
    from unrollsci.imaging._unrolled import _Conv

    target = kw["T"]
    model = _capped_model(Radon(9, 30), seed, **kw)
    assert lipschitz_bound(model) <= target
    convs = [m for m in model.modules() if isinstance(m, _Conv) and m.cap is not None]
    for conv in convs:  # the weights the forward pass uses, bounded as float64 FFT norms
        assert conv_operator_norm(conv.weight(), conv.size) <= conv.cap
    y = torch.rand(2, 30, 9)
    with torch.no_grad():
        out = model(y)
    assert lipschitz_bound(model.double()) <= target
    model.float()
    with torch.no_grad():  # the certified weights are those that ran, unchanged
        torch.testing.assert_close(model(y), out, rtol=0, atol=0)


def test_capped_conv_below_its_cap_is_unchanged():
    """Weights under the cap are used as they are (divisor exactly 1)."""
    from unrollsci.imaging import Radon, UnrolledCT
    from unrollsci.imaging._unrolled import _Conv

    model = UnrolledCT(Radon(9, 30), n_layers=2, channels=4, depth=2, lipschitz_target=50.0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 4:
                p.mul_(1e-3)
    model.eval()
    for conv in (m for m in model.modules() if isinstance(m, _Conv)):
        assert torch.equal(conv.weight(), conv.conv.weight)


# ------------------------------------------------- 3. learned RS AMG at any scale


@pytest.mark.parametrize("coarsening", ["rs", "rs-direct"])
def test_learned_rs_amg_is_scale_equivariant_at_the_ends_of_float64(coarsening, capfd):
    """c = 1e300: the coarse matrix overflowed (build succeeded, the first application
    raised); c = 1e-300: PyAMG printed 'denominator was zero' and M(cA) c was 7% off M(A)."""
    from unrollsci.precond import LearnedPreconditioner, anisotropic2d

    a = anisotropic2d(5, epsilon=0.05, theta=0.5, seed=3)
    eye = torch.eye(25, dtype=torch.float64)
    m = LearnedPreconditioner("amg", coarsening=coarsening, seed=0)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    ref = m.build(a)(eye)
    capfd.readouterr()
    for c in (1e-300, 1e300, 2.0**-1000, 3.0):
        got = m.build((a * c).tocsr())(eye) * c
        assert float((got - ref).abs().max() / ref.abs().max()) < 1e-12, c
    out = capfd.readouterr()
    assert "denominator" not in out.out + out.err


def test_pyamg_preconditioner_refuses_a_non_finite_coarse_matrix():
    from unrollsci.precond import anisotropic2d
    from unrollsci.precond._amg import prolongation_matrix, pyamg_preconditioner
    from unrollsci.precond._amg_rs import rs_setup

    a = anisotropic2d(5, epsilon=0.05, theta=0.5, seed=3)
    setup = rs_setup(a)
    p = prolongation_matrix(setup, np.full(setup.target.numel(), 1e200))
    with pytest.raises(ValueError, match="finite coarse matrix"):
        pyamg_preconditioner(setup, p)


# --------------------------------------------------------- 4. ConvexRidgeCT's box


@pytest.mark.parametrize("box", [(0.5, 1.0), (-1.0, -0.5), (0.0, 0.0)])
def test_ridge_refuses_a_box_without_zero(box):
    """Outside the support the output is 0: a box without 0 broke the documented
    'zero outside the support and inside box'."""
    from unrollsci.imaging import ConvexRidgeCT, Radon

    with pytest.raises(ValueError, match=r"lo <= 0 <= hi"):
        ConvexRidgeCT(Radon(12, 8), n_layers=1, filters=2, kernel_size=3, box=box)


def test_ridge_box_with_zero_holds_its_guarantee():
    from unrollsci.imaging import ConvexRidgeCT, Radon

    radon = Radon(12, 8)
    m = ConvexRidgeCT(radon, n_layers=2, filters=2, kernel_size=3, box=(-0.25, 0.5))
    with torch.no_grad():
        out = m(torch.rand(2, *radon.out_shape) * 5)
    assert bool(((out >= -0.25) & (out <= 0.5)).all())
    assert bool((out[:, ~m.mask] == 0).all())


# ------------------------------------------------------------- 5. project_box dtype


@pytest.mark.parametrize("which", ["both", "lower", "upper"])
def test_project_box_keeps_the_dtype_of_x(which):
    from unrollsci.prox import project_box

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, generator=gen) * 2
    lo = torch.full((6,), -0.3, dtype=torch.float64)
    hi = torch.full((6,), 0.7, dtype=torch.float64)
    lower = lo if which != "upper" else None
    upper = hi if which != "lower" else None
    out = project_box(x, lower, upper)
    assert out.dtype == torch.float32 and out.device == x.device
    ref = np.clip(
        x.numpy(),
        None if lower is None else lower.numpy().astype(np.float32),
        None if upper is None else upper.numpy().astype(np.float32),
    )
    np.testing.assert_array_equal(out.numpy(), ref)
    x64 = x.double()  # float64 x with float32 bounds: float64, the bounds exact
    out64 = project_box(x64, lo.float(), hi.float())
    assert out64.dtype == torch.float64
    np.testing.assert_array_equal(out64.numpy(), np.clip(x64.numpy(), -0.3, 0.7).astype(np.float32))
