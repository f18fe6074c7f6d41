"""Audit of Dec 14 (I): scale and precision extremes (LAMP-bg units, half models, QEq
norms, ADMM-Net's CG correction, float32 operator range, graph features)."""

from __future__ import annotations

import warnings

import networkx as nx
import pytest
import torch

import unrollsci.graph._model as graph_model
from unrollsci import DtypeMismatchError
from unrollsci.chem import solve_charges
from unrollsci.graph import GraphInverseProblem, StepController, UnrolledGraphGD
from unrollsci.operators import MatrixOperator
from unrollsci.solvers import bg_amp, ista
from unrollsci.unrolled import LAMP, LISTA, ADMMNet, BlockLISTA, PreconditionedLISTA, UnrolledFISTA


def _lasso_data(m: int = 12, n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    a = torch.randn(m, n, dtype=torch.float64) / m**0.5
    x0 = torch.zeros(3, n, dtype=torch.float64)
    x0[:, :3] = torch.randn(3, 3, dtype=torch.float64)
    return a, x0 @ a.T + 0.01 * torch.randn(3, m, dtype=torch.float64)


# ------------------------------------------------------------------ I-3: LAMP-bg units
@pytest.mark.parametrize("c", [1e-4, 1e-8, 1e-20, 1e20])
def test_untrained_lamp_bg_is_bg_amp_at_float32_data_scales(c):
    a, y = _lasso_data()
    yc = (c * y).float()
    op = MatrixOperator(a.float())
    net = LAMP(op, 6, denoiser="bg", rho=0.1, sigma_x=c, dtype=torch.float32)(yc).detach()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bg_amp's ConvergenceWarning after 6 iterations
        ref = bg_amp(MatrixOperator(a), c * y, 0.1, sigma_x=c, damping=0.0, max_iter=6).x
    assert ref.norm() > 0
    assert ((net.double() - ref).norm() / ref.norm()).item() < 1e-5


def test_lamp_bg_refuses_sigma_x_outside_the_dtype_range():
    a, _ = _lasso_data()
    with pytest.raises(ValueError, match="Expected 'sigma_x' within the range"):
        LAMP(MatrixOperator(a.float()), 2, denoiser="bg", sigma_x=1e-45, dtype=torch.float32)


# ------------------------------------------------------------------ I-6: half precision
@pytest.mark.parametrize("cls", [LISTA, UnrolledFISTA])
@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_a_model_converted_to_half_is_refused(cls, half):
    a, y = _lasso_data()
    model = cls(MatrixOperator(a.float()), 2, dtype=torch.float32).to(half)
    with pytest.raises(TypeError, match="Expected a model of dtype torch.float32 or"):
        model(y.to(half))


def test_half_data_message_suggests_only_a_supported_model_dtype():
    a, y = _lasso_data()
    model = LISTA(MatrixOperator(a.float()), 2, dtype=torch.float32)
    with pytest.raises(DtypeMismatchError) as err:
        model(y.half())
    assert "model.half()" not in str(err.value) and "y.float()" in str(err.value)
    with pytest.raises(DtypeMismatchError, match=r"model.to\(torch.float64\)"):
        model(y)  # float64 data: converting the model is still offered


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_graph_problem_refuses_half_signals(half):
    mask = torch.tensor([1, 0, 1, 0, 1]).bool()
    with pytest.raises(TypeError, match="Expected 'y' of dtype torch.float32 or"):
        GraphInverseProblem.from_networkx(nx.path_graph(5), torch.randn(5).to(half), mask=mask)


# ------------------------------------------------------------------ I-1: QEq units
_POS = torch.tensor(
    [
        [0.0, 0, 0],
        [0.96, 0, 0],
        [-0.24, 0.93, 0],
        [3.0, 0.2, 0.1],
        [3.9, 0.4, 0.3],
        [2.8, 1.1, -0.5],
    ]
)
_NUM = ["O", "H", "H", "O", "H", "H"]
_CHI = torch.tensor([7.54, 4.53, 4.53, 7.54, 4.53, 4.53])


@pytest.mark.parametrize(
    ("dtype", "c", "tol"),
    [
        (torch.float32, 1.602176634e-19, 1e-5),
        (torch.float32, 1e-25, 1e-5),
        (torch.float32, 1e20, 1e-5),
        (torch.float64, 1e-170, 1e-12),
        (torch.float64, 1e160, 1e-12),
    ],
)
def test_qeq_charges_do_not_depend_on_the_energy_unit(dtype, c, tol):
    eta = torch.full((6,), 13.9, dtype=torch.float64)
    ref = solve_charges(
        _POS.double(), _NUM, cutoff=None, chi=_CHI.double(), eta=eta, tol=1e-14
    ).charges
    chi, eta_c = (_CHI.double() * c).to(dtype), (eta * c).to(dtype)
    sol = solve_charges(
        _POS.to(dtype), _NUM, cutoff=None, chi=chi, eta=eta_c, coulomb_constant=14.399645 * c
    )
    assert sol.converged and sol.iterations >= 3
    assert 0 < sol.residual < 1e-3
    assert (sol.charges.double() - ref).abs().max().item() < tol


# ------------------------------------------------------------- I-2: ADMM-Net CG update
@pytest.mark.parametrize("x_update", ["cg", "learned"])
def test_admmnet_cg_update_solves_for_a_small_float32_operator(x_update):
    a, _ = _lasso_data()
    x0 = torch.zeros(3, 24, dtype=torch.float64)
    x0[:, :3] = torch.randn(3, 3, dtype=torch.float64)
    y = x0 @ a.T
    ref = ADMMNet(MatrixOperator(a), 6, lam=0.05, x_update=x_update, cg_steps=4)(y).detach()
    c = 1e-8  # A -> cA, y -> cy, lam -> c^2 lam: every iterate unchanged (rho = ||A||^2)
    model = ADMMNet(
        MatrixOperator((c * a).float()),
        6,
        lam=0.05 * c * c,
        x_update=x_update,
        cg_steps=4,
        dtype=torch.float32,
    )
    out = model((c * y).float()).detach().double()
    assert ((out - ref).norm() / ref.norm()).item() < 1e-5


# ------------------------------------------------------- I-5: float32 operator range
@pytest.mark.parametrize("cls", [UnrolledFISTA, PreconditionedLISTA, BlockLISTA, ADMMNet])
@pytest.mark.parametrize("c", [1e-20, 1e20])
def test_float32_operator_norm_out_of_range_is_refused(cls, c):
    a, _ = _lasso_data()
    kw = {"group_size": 4} if cls is BlockLISTA else {}
    op = MatrixOperator((c * a).float())
    with pytest.raises(ValueError, match="normal range of torch.float32"):
        cls(op, 2, lam=0.1, dtype=torch.float32, **kw)
    model = cls(MatrixOperator(c * a), 2, lam=0.1, dtype=torch.float64, **kw)  # float64 fits
    assert torch.isfinite(model(torch.randn(2, 12, dtype=torch.float64) * c)).all()


def test_ista_divergence_message_names_the_range_for_the_default_step():
    a, y = _lasso_data()
    c = 1e-20
    with pytest.raises(ValueError, match=r"\|\|A\|\|\^2 = .* outside the normal range"):
        ista(MatrixOperator((c * a).float()), (c * y).float(), 0.1 * c * c, max_iter=5)


# ------------------------------------------------------------- I-4: graph features
def _features(y: torch.Tensor, dtype: torch.dtype, mask: torch.Tensor) -> tuple:
    captured = []
    orig = graph_model.step_features

    def spy(*args, **kwargs):
        out = orig(*args, **kwargs)
        captured.append(out)
        return out

    graph_model.step_features = spy
    try:
        torch.manual_seed(0)
        model = UnrolledGraphGD(3, StepController(hidden=8), mode="scalar").to(dtype)
        model(GraphInverseProblem.from_networkx(nx.grid_2d_graph(6, 6), y, mask=mask, lam=0.5))
    finally:
        graph_model.step_features = orig
    node, glob = captured[0]
    return node.double(), glob.double()


@pytest.mark.parametrize(("dtype", "c"), [(torch.float64, 1e-40), (torch.float64, 1e-150)])
def test_graph_controller_features_are_scale_invariant(dtype, c):
    gen = torch.Generator().manual_seed(1)
    mask = torch.rand(36, generator=gen) < 0.5
    y = torch.randn(2, 36, generator=gen, dtype=torch.float64) * mask
    node0, glob0 = _features(y, torch.float64, mask)
    node, glob = _features((c * y).to(dtype), dtype, mask)
    assert (node - node0).abs().max().item() < 1e-12
    assert (glob - glob0).abs().max().item() < 1e-12


@pytest.mark.parametrize("c", [2.0**66, 2.0**-70])
def test_graph_controller_features_float32_at_extreme_exact_scales(c):
    """float32 data scaled by a power of two near 1e20 / 1e-21 (exact, so the features
    must agree to rounding with the unscaled float32 run): ``g * g`` overflowed in the
    first gradient's norm (the gradient-decay feature was off by about 69)."""
    gen = torch.Generator().manual_seed(2)
    mask = torch.rand(36, generator=gen) < 0.5
    y = (torch.randn(2, 36, generator=gen, dtype=torch.float64) * mask).float()
    node0, glob0 = _features(y, torch.float32, mask)
    node, glob = _features(c * y, torch.float32, mask)
    assert torch.isfinite(glob).all() and torch.isfinite(node).all()
    assert (node - node0).abs().max().item() < 1e-5
    assert (glob - glob0).abs().max().item() < 1e-5
