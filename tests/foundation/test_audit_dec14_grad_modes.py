"""Audit round "dec14", grad modes: what a call under ``torch.no_grad()`` or
``torch.inference_mode()`` does, and leaves behind for later autograd calls. Each test fails
on the code before it.

1. An operator's cast cache (a float64 buffer cast to a float32 input), and ADMMNet's
   eigendecomposition of ``A^T A`` recomputed after ``.float()``, first filled under
   ``inference_mode`` held an inference tensor, served to every later call: autograd through
   the operator (solvers on float32 data, ``cg(M=jacobi(A))``, float32 models on a float64
   operator validated under ``inference_mode`` and then trained) failed with "Inference
   tensors cannot be saved for backward".
2. ``QEqCalculator`` under ``no_grad`` / ``inference_mode``: its autograd paths (Ewald, PME,
   all pairs, ``forces="unrolled"``, the Gaussian kernel) raised torch's "element 0 of
   tensors does not require grad", and a call under ``inference_mode`` left inference
   tensors in the kept per-atom table, so every later call failed too.
3. ``fit_layerwise`` under ``no_grad`` / ``inference_mode`` raised torch's bare error from
   ``backward``, where ``fit`` raises a ``ValueError`` naming the cause.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from unrollsci.operators import Convolution, MatrixOperator

F64 = torch.float64
GRAD_OFF = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}


def _no_inference_in_cast_cache(op) -> bool:
    return all(not t.is_inference() for slot in op._cast_cache.values() for t in slot.values())


# ------------------------------------------------------- 1. the operators' cast cache


def _operators():
    """(operator with float64 buffers, its dense float64 matrix from numpy). (On the CPU
    a SparseOperator computes through scipy, without the cast cache.)"""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((7, 5))
    k = rng.standard_normal((3, 3))
    # 'same' 2-D convolution (centre (1, 1)) with zero padding, 4 x 4 images, dense
    dense_conv = np.zeros((16, 16))
    for r in range(4):
        for c in range(4):
            for di in range(3):
                for dj in range(3):
                    rr, cc = r - di + 1, c - dj + 1
                    if 0 <= rr < 4 and 0 <= cc < 4:
                        dense_conv[r * 4 + c, rr * 4 + cc] += k[di, dj]
    return {
        "matrix": (lambda: MatrixOperator(torch.from_numpy(a)), a),
        "conv": (lambda: Convolution(torch.from_numpy(k), (4, 4)), dense_conv),
    }


@pytest.mark.parametrize("name", ["matrix", "conv"])
def test_cast_cache_filled_under_inference_mode_serves_later_autograd(name):
    make, dense = _operators()[name]
    op = make()
    if name == "conv":  # check the dense reference's convention against the float64 operator
        np.testing.assert_allclose(op.to_dense().numpy(), dense, atol=1e-12)
    shape = (2, *op.in_shape)
    with torch.inference_mode():
        op(torch.ones(shape))  # float32 input: the float32 copy of the buffers is cached
    assert _no_inference_in_cast_cache(op)
    w = np.random.default_rng(3).standard_normal((2, dense.shape[0]))
    x = torch.ones(shape, requires_grad=True)
    out = op(x).reshape(2, -1)
    (out * torch.from_numpy(w).float()).sum().backward()
    np.testing.assert_allclose(
        x.grad.reshape(2, -1).numpy(), w @ dense, rtol=1e-5, atol=1e-5
    )  # d/dx <w, A x> = A^T w
    # the adjoint's cast copy too (the sparse transpose is a buffer of its own)
    with torch.inference_mode():
        op.adjoint(torch.ones(2, *op.out_shape))
    assert _no_inference_in_cast_cache(op)
    y = torch.from_numpy(w).float().reshape(2, *op.out_shape).requires_grad_(True)
    op.adjoint(y).sum().backward()
    np.testing.assert_allclose(
        y.grad.reshape(2, -1).numpy(), np.tile(dense.sum(1), (2, 1)), rtol=1e-5, atol=1e-5
    )


def test_jacobi_cached_under_inference_mode_serves_cg_gradients():
    from unrollsci.precond import diffusion2d, jacobi
    from unrollsci.solvers import cg

    a = diffusion2d(6, seed=0)
    n = a.shape[0]
    m = jacobi(a)
    with torch.inference_mode():
        cg(a, torch.ones(2, n), M=m, grad="detached", tol=1e-5)
    assert _no_inference_in_cast_cache(m)
    w = np.random.default_rng(2).standard_normal((2, n))
    b = torch.ones(2, n, requires_grad=True)
    x = cg(a, b, M=m, grad="unrolled", tol=1e-6, max_iter=500).x
    (x * torch.from_numpy(w).float()).sum().backward()
    ref = np.stack([spla.spsolve(sp.csc_matrix(a), wi) for wi in w])  # A^{-1} w (A = A^T)
    np.testing.assert_allclose(b.grad.numpy(), ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())
    # the preconditioner alone: d/dr <1, M r> = 1 / diag(A)
    r = torch.ones(1, n, requires_grad=True)
    m(r).sum().backward()
    np.testing.assert_allclose(r.grad.numpy()[0], 1.0 / a.diagonal(), rtol=1e-6)


@pytest.mark.parametrize(
    "cls",
    [
        "UnrolledFISTA",
        "ALISTA",
        "LISTACP",
        "LAMP",
        "ADMMNet-exact",
        "ADMMNet-cg",
        "ADMMNet-learned",
    ],
)
def test_float32_model_validated_under_inference_mode_then_trains(cls):
    """A float32 model on a float64 operator (docs/architecture.md, "dtypes"): a validation
    pass under inference_mode, then a training step, gives the gradients of a copy that
    never ran under inference_mode."""
    import unrollsci.unrolled as unrolled

    torch.manual_seed(0)
    a = torch.randn(8, 16, dtype=F64) / 8**0.5
    y = torch.randn(4, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        name, _, x_update = cls.partition("-")
        kw = {"x_update": x_update} if x_update else {}
        model = getattr(unrolled, name)(MatrixOperator(a), 3, **kw).float()
    fresh = copy.deepcopy(model)
    with torch.inference_mode():
        model(y)
    model(y).pow(2).sum().backward()
    fresh(y).pow(2).sum().backward()
    grads = {k: p.grad for k, p in model.named_parameters() if p.grad is not None}
    ref = {k: p.grad for k, p in fresh.named_parameters() if p.grad is not None}
    assert grads and grads.keys() == ref.keys()
    for k in grads:
        torch.testing.assert_close(grads[k], ref[k], rtol=0, atol=0)


# ------------------------------------------------------------- 2. the QEq calculator


def _structures():
    from ase.build import bulk, molecule

    crystal = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    crystal.rattle(0.05, seed=1)
    return crystal, molecule("H2O")


QEQ_CASES = {
    "ewald": ("crystal", {"ewald": True}),
    "pme": ("crystal", {"ewald": True, "ewald_method": "pme", "ewald_accuracy": 1e-5}),
    "all_pairs": ("molecule", {"cutoff": None}),
    "unrolled": ("crystal", {"forces": "unrolled"}),
    "gaussian": ("crystal", {"kernel": "gaussian"}),
    "analytic": ("crystal", {}),
}


def _results(atoms, **kw):
    from unrollsci.chem import QEqCalculator

    a = atoms.copy()
    a.calc = QEqCalculator(**kw)
    props = ["energy", "forces", "charges"]
    props.append("stress" if all(a.pbc) else "dipole")
    return a, {p: np.array(a.calc.get_property(p, a)) for p in props}


@pytest.mark.parametrize("mode", sorted(GRAD_OFF))
@pytest.mark.parametrize("case", sorted(QEQ_CASES))
def test_qeq_calculator_under_grad_off_gives_the_results_of_a_call_outside(case, mode):
    pytest.importorskip("ase")
    crystal, water = _structures()
    which, kw = QEQ_CASES[case]
    atoms = crystal if which == "crystal" else water
    _, ref = _results(atoms, **kw)
    with GRAD_OFF[mode]():
        a, got = _results(atoms, **kw)
    for p in ref:
        np.testing.assert_allclose(got[p], ref[p], rtol=0, atol=1e-12, err_msg=p)
    calc = a.calc
    kept = [*calc._table.values(), calc._q_prev]
    if calc._verlet is not None:
        kept += [t for t in (calc._verlet.i, calc._verlet.j, calc._verlet.shifts) if t is not None]
    assert not any(t.is_inference() for t in kept)
    # the same calculator later, outside any grad context, at a moved geometry: as a fresh one
    a.positions[0, 0] += 1e-3
    later = {"energy": a.get_potential_energy(), "forces": a.get_forces()}
    _, fresh = _results(a, **kw)
    np.testing.assert_allclose(later["energy"], fresh["energy"], rtol=1e-9)
    np.testing.assert_allclose(later["forces"], fresh["forces"], rtol=0, atol=1e-7)


@pytest.mark.parametrize("kw", [{"cutoff": None}, {"cutoff": None, "forces": "unrolled"}])
def test_qeq_forces_under_inference_mode_match_finite_differences(kw):
    """Forces computed under inference_mode are -dE/dR: central differences of the energy
    (float64, tight solve; unrolled: the truncated solve's own energy)."""
    pytest.importorskip("ase")
    from unrollsci.chem import QEqCalculator

    _, water = _structures()
    opts = {"tol": 1e-12, "warm_start": False, **kw}
    if kw.get("forces") == "unrolled":
        opts = {**opts, "iterations": 4}
        opts.pop("tol")
    a = water.copy()
    a.calc = QEqCalculator(**opts)
    with torch.inference_mode():
        forces = a.get_forces()
    h = 1e-5
    fd = np.zeros_like(forces)
    for i in range(len(a)):
        for d in range(3):
            e = []
            for s in (h, -h):
                b = water.copy()
                b.positions[i, d] += s
                b.calc = QEqCalculator(**opts)
                e.append(b.get_potential_energy())
            fd[i, d] = -(e[0] - e[1]) / (2 * h)
    np.testing.assert_allclose(forces, fd, rtol=0, atol=1e-6)


# ------------------------------------------------------------------- 3. fit_layerwise


def _layerwise_setup():
    from unrollsci.unrolled import LISTA

    torch.manual_seed(0)
    a = torch.randn(8, 16, dtype=F64) / 8**0.5
    g0 = torch.Generator().manual_seed(1)

    def draw(g):
        x = torch.randn(16, 16, generator=g, dtype=F64)
        x = x * (torch.rand(16, 16, generator=g) < 0.2)
        return x @ a.T, x

    return LISTA(MatrixOperator(a), 3), draw, draw(g0)


@pytest.mark.parametrize("mode", sorted(GRAD_OFF))
def test_fit_layerwise_under_grad_off_raises_as_fit_does(mode):
    from unrollsci.train import fit, fit_layerwise

    model, draw, val = _layerwise_setup()
    before = copy.deepcopy(model.state_dict())
    state = (model.training, model.active_layers, [p.requires_grad for p in model.parameters()])
    with GRAD_OFF[mode](), pytest.raises(ValueError, match="autograd enabled") as err:
        fit_layerwise(model, draw, val, max_steps=5, val_every=5)
    assert ("inference_mode" if mode == "inference_mode" else "no_grad") in str(err.value)
    after = (model.training, model.active_layers, [p.requires_grad for p in model.parameters()])
    assert after == state
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # fit, in the same situation, raises a ValueError too
    y, x = val
    with GRAD_OFF[mode](), pytest.raises(ValueError):
        fit(model, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), (y, x), epochs=1, progress=False)
    # and outside the block it trains
    hist = fit_layerwise(model, draw, val, max_steps=5, val_every=5)
    assert len(hist.curve_db) == 3


# ------------------------------------------------------------ 4. the CT certificates


def _ct_models():
    from unrollsci.imaging import ConvexRidgeCT, Radon, UnrolledCT

    torch.manual_seed(0)
    radon = Radon(16, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return radon, {
            "fbp": UnrolledCT(radon, n_layers=2, channels=4, depth=2, lipschitz_target=5.0),
            "ridge": ConvexRidgeCT(radon, n_layers=3, filters=4),
        }


@pytest.mark.parametrize("mode", list(GRAD_OFF))
def test_ct_certificates_under_grad_off_equal_those_outside(mode):
    """``lipschitz_bound`` (the FBP start's norm by power iteration with an autograd
    adjoint) and ``empirical_lipschitz`` (an ascent on the inputs) raised torch's "element 0
    of tensors does not require grad" under no_grad / inference_mode; they give the values
    computed outside."""
    from unrollsci.imaging import empirical_lipschitz, lipschitz_bound, shepp_logan

    radon, models = _ct_models()
    y = radon(shepp_logan(16)[None].float())
    for model in models.values():
        ref_bound = lipschitz_bound(model)
        ref_emp = empirical_lipschitz(model, y, steps=3)
        with GRAD_OFF[mode]():
            bound = lipschitz_bound(model)
            emp = empirical_lipschitz(model, y, steps=3)
        assert bound == ref_bound
        assert emp == ref_emp


def test_unrolled_ct_eval_inside_inference_mode_keeps_gradients_working():
    """``model.eval()`` inside an inference_mode block fixed each capped convolution's
    divisor as an inference tensor: every later eval-mode gradient failed. The input
    gradient after it equals that of a copy put in eval mode outside."""
    from unrollsci.imaging import shepp_logan

    radon, models = _ct_models()
    model = models["fbp"]
    fresh = copy.deepcopy(model).eval()
    with torch.inference_mode():
        model.eval()
        model(radon(shepp_logan(16)[None].float()))
    y = radon(shepp_logan(16)[None].float())
    grads = []
    for m in (model, fresh):
        yy = y.clone().requires_grad_(True)
        m(yy).pow(2).sum().backward()
        grads.append(yy.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
