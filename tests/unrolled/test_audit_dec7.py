"""Audit of the unrolled models (Dec 7): layer-wise training of per-layer stacks and of
LISTA's matrices, scale-free x-updates and Bayes-AMP, losses at degenerate inputs, and the
models' input checks (empty batch, zero operator, infinite rho)."""

from __future__ import annotations

import pytest
import torch

from unrollsci.losses import kkt_residual, nmse_db
from unrollsci.operators import MatrixOperator
from unrollsci.solvers import bg_amp, bg_denoise
from unrollsci.train import fit_layerwise
from unrollsci.train._layerwise import _decay_factors, _layer_matrices, _layer_params
from unrollsci.unrolled import (
    ALISTA,
    LAMP,
    LISTA,
    LISTACP,
    ADMMNet,
    BlockLISTA,
    PreconditionedLISTA,
    UnrolledFISTA,
)


def _setup():
    g0 = torch.Generator().manual_seed(0)
    a = torch.randn(10, 20, generator=g0, dtype=torch.float64) / 10**0.5

    def draw(g):
        x = torch.randn(16, 20, generator=g, dtype=torch.float64)
        x = x * (torch.rand(16, 20, generator=g, dtype=torch.float64) < 0.2)
        return x @ a.T, x

    return a, draw, draw(torch.Generator().manual_seed(1))


STACKED = [
    pytest.param(lambda op: PreconditionedLISTA(op, 3, lam=0.05), id="precond-lista"),
    pytest.param(lambda op: BlockLISTA(op, 3, group_size=2, lam=0.05), id="block-lista"),
    pytest.param(
        lambda op: ADMMNet(op, 3, lam=0.05, x_update="learned", cg_steps=2), id="admm-learned"
    ),
]


# ------------------------------------------------------------- D1, D2: per-layer stacks
@pytest.mark.parametrize("make", STACKED)
def test_freeze_below_freezes_the_rows_of_per_layer_stacks(make):
    a, draw, val = _setup()
    model = make(MatrixOperator(a))
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    fit_layerwise(
        model,
        draw,
        val,
        lr=1e-2,
        max_steps=20,
        val_every=5,
        start_layer=2,
        freeze_below=1,
        warm_start=False,
    )
    stacks = [k for k, v in model.named_parameters() if v.dim() >= 2 and v.shape[0] == 3]
    assert stacks  # the (K, n) / (K, G, s, s) stack is there
    moved = False
    for k, v in model.named_parameters():
        if v.dim() >= 1 and v.shape[0] == 3:
            assert torch.equal(v.detach()[0], before[k][0]), k
            moved |= not torch.equal(v.detach()[1:], before[k][1:])
    assert moved  # the unfrozen rows did train


@pytest.mark.parametrize("make", STACKED)
def test_decay_rate_trains_models_with_per_layer_stacks(make):
    a, draw, val = _setup()
    model = make(MatrixOperator(a))
    hist = fit_layerwise(model, draw, val, lr=1e-2, max_steps=10, val_every=5, decay_rate=0.3)
    assert len(hist.curve_db) == 3
    fac = _decay_factors(model, 3, 0.3)
    for p in model.parameters():
        if p.dim() >= 2 and p.shape[0] == 3:  # one factor a row, as the vectors
            assert fac[id(p)].shape == (3,) + (1,) * (p.dim() - 1)
            assert fac[id(p)].flatten().tolist() == pytest.approx([0.09, 0.3, 1.0])


def test_vector_lr_reaches_per_layer_stacks_in_the_all_layer_stages():
    # vector_lr tiny: the all-layer stages move the (K, n) diagonal as little as the
    # thresholds (before: at the full rate, with the matrices)
    a, draw, val = _setup()
    model = PreconditionedLISTA(MatrixOperator(a), 2, lam=0.05)
    before = model.diag.detach().clone()
    fit_layerwise(
        model,
        draw,
        val,
        lr=1e-2,
        vector_lr=1e-9,
        new_layer_stage=False,
        max_steps=10,
        val_every=5,
    )
    assert float((model.diag.detach() - before).abs().max()) < 1e-6


# ------------------------------------------------------------- D3: who owns LISTA's S
def test_two_layer_untied_lista_trains_its_S_in_the_new_layer_stage():
    a, draw, val = _setup()
    model = LISTA(MatrixOperator(a), 2, lam=0.05)
    own0, _ = _layer_params(model, 0)
    own1, _ = _layer_params(model, 1)
    assert any(p is model.S[0] for p in own1) and not any(p is model.S[0] for p in own0)
    assert [p is model.S[0] for p in _layer_matrices(model, 1)] == [False, True]
    s0 = model.S[0].detach().clone()
    fit_layerwise(model, draw, val, lr=1e-2, lr_decays=(), max_steps=10, val_every=5)
    assert not torch.equal(model.S[0].detach(), s0)


def test_tied_lista_S_belongs_to_layer_two_and_stays_shared():
    a, _, _ = _setup()
    model = LISTA(MatrixOperator(a), 3, lam=0.05, tied=True)
    own = [_layer_params(model, j)[0] for j in range(3)]
    assert any(p is model.W_e[0] for p in own[0])
    assert any(p is model.S[0] for p in own[1])
    assert not any(p is model.S[0] for p in own[0] + own[2])
    assert all(_layer_matrices(model, j) == [] for j in range(3))  # tied: never frozen
    assert id(model.S[0]) not in _decay_factors(model, 3, 0.3)  # nor decayed


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda op: LISTA(op, 4), id="lista"),
        pytest.param(lambda op: LISTACP(op, 4), id="lista-cp"),
        pytest.param(lambda op: LAMP(op, 4), id="lamp"),
        pytest.param(lambda op: LAMP(op, 4, tied=True), id="lamp-tied"),
        pytest.param(lambda op: LISTACP(op, 4, tied=True), id="lista-cp-tied"),
    ],
)
def test_ownership_of_the_other_models_is_unchanged(make):
    # the rule before the models declared it: a list ends at the last layer; one entry in
    # a deeper model is a tied matrix of layer 0
    a, _, _ = _setup()
    model = make(MatrixOperator(a))
    for j in range(4):
        own = {id(p) for p in _layer_params(model, j)[0]}
        mats = {id(p) for p in _layer_matrices(model, j)}
        for module in model.modules():
            if isinstance(module, torch.nn.ParameterList):
                shift = 4 - len(module)
                for i, p in enumerate(module):
                    tied = len(module) == 1
                    assert (id(p) in own) == ((j == 0) if tied else (i + shift == j))
                    assert (id(p) in mats) == (not tied and i + shift == j)


def test_copy_layer_copies_untied_lista_matrices_only():
    a, _, _ = _setup()
    model = LISTA(MatrixOperator(a), 3)
    with torch.no_grad():
        model.S[0].add_(1.0)
        model.W_e[1].add_(1.0)
    model.copy_layer(1, 2)
    assert torch.equal(model.S[1], model.S[0]) and torch.equal(model.W_e[2], model.W_e[1])
    tied = LISTA(MatrixOperator(a), 3, tied=True)
    s = tied.S[0].detach().clone()
    tied.copy_layer(0, 1)
    assert torch.equal(tied.S[0], s)


# ------------------------------------------------------------- D4: large finite data
@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda op: ADMMNet(op, 3, x_update="cg"), id="admm-cg"),
        pytest.param(lambda op: ADMMNet(op, 3, x_update="learned"), id="admm-learned"),
        pytest.param(lambda op: LAMP(op, 3, denoiser="bg"), id="lamp-bg"),
    ],
)
@pytest.mark.parametrize("dtype,scale", [(torch.float32, 1e20), (torch.float64, 1e160)])
def test_large_finite_y_gives_finite_output(make, dtype, scale):
    torch.manual_seed(0)
    a = (torch.randn(8, 16, dtype=torch.float64) / 8**0.5).to(dtype)
    model = make(MatrixOperator(a))
    y = torch.randn(3, 8, dtype=dtype)
    assert torch.isfinite(model(y * scale)).all()


@pytest.mark.parametrize("x_update", ["cg", "learned"])
def test_admm_cg_scaling_keeps_the_bits_at_ordinary_scales(x_update, monkeypatch):
    import unrollsci.unrolled._admm as admm_mod

    torch.manual_seed(0)
    a = torch.randn(12, 24, dtype=torch.float64) / 12**0.5
    model = ADMMNet(MatrixOperator(a), 4, x_update=x_update, cg_steps=3)
    y = torch.randn(5, 12, dtype=torch.float64) * 3.7
    out = model(y)
    monkeypatch.setattr(admm_mod, "_pow2_scale", lambda x, r: torch.ones_like(x[:, :1]))
    assert torch.equal(out, model(y))


def test_bg_amp_large_finite_y_converges_not_diverges():
    torch.manual_seed(0)
    a = torch.randn(8, 16, dtype=torch.float64) / 8**0.5
    y = torch.randn(3, 8, dtype=torch.float64) * 1e160
    sol = bg_amp(MatrixOperator(a), y, 0.1, max_iter=3, tol=0.0)
    assert torch.isfinite(sol.x).all()


def test_bg_denoise_with_infinite_variance_is_the_zero_estimate():
    r = torch.tensor([1e160, -3.0, 0.0], dtype=torch.float64)
    x, d = bg_denoise(r, float("inf"), 0.1, 1.0)
    assert torch.equal(x, torch.zeros(3, dtype=torch.float64))
    assert torch.equal(d, torch.zeros(3, dtype=torch.float64))


# ------------------------------------------------------------- D5, D6: losses
def test_kkt_residual_zero_operator_raises_a_clear_error():
    op = MatrixOperator(torch.zeros(4, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="operator is zero"):
        kkt_residual(
            op, torch.zeros(2, 6, dtype=torch.float64), torch.ones(2, 4, dtype=torch.float64), 0.1
        )


@pytest.mark.parametrize("err", [[1e-3, 0.0, 0.0], [1e3, 0.0, 0.0], [1.0, 1.0, 1.0]])
def test_nmse_db_zero_target_is_plus_infinity(err):
    zero = torch.zeros(1, 3, dtype=torch.float64)
    x = torch.tensor([err], dtype=torch.float64, requires_grad=True)
    v = nmse_db(x, zero)
    assert v == float("inf")
    v.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))  # finite (zero): no finite NMSE nearby


def test_nmse_db_zero_error_is_minus_infinity_and_rows_are_independent():
    zero = torch.zeros(2, 3, dtype=torch.float64)
    assert nmse_db(zero, zero) == float("-inf")
    t = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]], dtype=torch.float64)
    x = torch.tensor([[0.5, 0.0, 0.0], [1.0, 2.0, 5.0]], dtype=torch.float64)
    v = nmse_db(x, t, reduction="none")
    assert v[0] == float("inf") and v[1] == pytest.approx(0.0, abs=1e-12)  # 9 / 9
    assert nmse_db(x, t) == pytest.approx(10 * torch.log10(torch.tensor(9.25 / 9)).item())


def test_nmse_db_error_far_above_a_tiny_target_keeps_its_value():
    # the target's energy underflows when scaled by the error's size: 4000 dB, not inf
    t = torch.full((2, 3), 1e-200, dtype=torch.float64)
    assert nmse_db(t + 1.0, t) == pytest.approx(4000.0)
    assert nmse_db(torch.zeros_like(t), t) == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------- D7: ALISTA's adjoint weight
def test_alista_adjoint_weight_is_A_with_step_one_over_lipschitz():
    torch.manual_seed(0)
    a = torch.randn(10, 20, dtype=torch.float64)
    lip = float(torch.linalg.matrix_norm(a, 2)) ** 2
    m = ALISTA(MatrixOperator(a), 2, weight="adjoint", support_selection=False)
    assert torch.equal(m.W, a)
    gamma = torch.nn.functional.softplus(m.gamma)
    torch.testing.assert_close(gamma, torch.full_like(gamma, 1.0 / lip))
    assert "``W = A``" in ALISTA.__doc__ and "A / ||A||^2" not in ALISTA.__doc__


# ------------------------------------------------------------- D8: input checks
@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda op: LISTA(op, 2), id="lista"),
        pytest.param(lambda op: LISTACP(op, 2), id="lista-cp"),
        pytest.param(lambda op: PreconditionedLISTA(op, 2), id="precond-lista"),
        pytest.param(lambda op: BlockLISTA(op, 2, group_size=2), id="block-lista"),
        pytest.param(lambda op: ADMMNet(op, 2), id="admm"),
        pytest.param(lambda op: ALISTA(op, 2), id="alista"),
        pytest.param(lambda op: UnrolledFISTA(op, 2), id="fista"),
        pytest.param(lambda op: LAMP(op, 2), id="lamp"),
    ],
)
def test_empty_batch_raises(make):
    op = MatrixOperator(torch.randn(4, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="at least one problem"):
        make(op)(torch.zeros(0, 4, dtype=torch.float64))


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda op: LAMP(op, 2), id="lamp"),
        pytest.param(lambda op: LAMP(op, 2, learn_matrix=False), id="lamp-fixed"),
        pytest.param(lambda op: LAMP(op, 2, denoiser="bg"), id="lamp-bg"),
        pytest.param(lambda op: ADMMNet(op, 2, rho=1.0), id="admm-rho"),
        pytest.param(lambda op: ADMMNet(op, 2, rho=1.0, x_update="cg"), id="admm-cg-rho"),
        pytest.param(lambda op: LISTA(op, 2), id="lista"),
    ],
)
def test_zero_operator_raises_in_every_model(make):
    with pytest.raises(ValueError, match="operator is zero"):
        make(MatrixOperator(torch.zeros(4, 6, dtype=torch.float64)))


@pytest.mark.parametrize("rho", [float("inf"), float("nan"), 0.0, -1.0])
def test_admm_rho_must_be_positive_and_finite(rho):
    op = MatrixOperator(torch.randn(4, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="'rho' > 0 and finite"):
        ADMMNet(op, 2, rho=rho)


def test_admmnet_exact_follows_an_in_place_edit_of_the_operator():
    """x_update='exact' eigendecomposed A^T A once: after an in-place edit of the matrix the
    x-update solved with the old A^T A while A^T y used the new A (off by ~10)."""
    gen = torch.Generator().manual_seed(0)
    mat = torch.randn(10, 16, dtype=torch.float64, generator=gen) / 10**0.5
    y = torch.randn(3, 10, dtype=torch.float64, generator=gen)
    net = ADMMNet(MatrixOperator(mat), 5, lam=0.1, rho=1.0)
    net(y)
    with torch.no_grad():
        mat[:, :4].mul_(3)
    fresh = ADMMNet(MatrixOperator(mat.clone()), 5, lam=0.1, rho=1.0)
    torch.testing.assert_close(net(y), fresh(y), rtol=0, atol=1e-12)


def test_admmnet_exact_refuses_a_trainable_operator():
    mat = torch.nn.Parameter(torch.randn(10, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="trainable"):
        ADMMNet(MatrixOperator(mat), 3, lam=0.1)
