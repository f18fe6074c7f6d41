"""Structured sparse recovery (issue 20): pluggable prox in the unrolled models, diagonal and
block-diagonal learned preconditioners, ADMM-Net's learned x-update, matrix-free models."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from unrollsci import ConvergenceWarning, DtypeMismatchError, solvers
from unrollsci.operators import LinearOperator, MatrixOperator
from unrollsci.train import load_checkpoint, save_checkpoint
from unrollsci.unrolled import (
    ALISTA,
    LAMP,
    LISTA,
    LISTACP,
    ADMMNet,
    BlockLISTA,
    PreconditionedLISTA,
    UnrolledFISTA,
    group_layout,
)

M, N, K, LAM = 30, 60, 6, 0.05
GROUP = {"kind": "group", "group_size": 5}
UNEVEN = torch.tensor([i % 7 for i in range(N)])  # 7 interleaved groups of 8 or 9 entries
BOX = {"kind": "box", "lower": -0.5, "upper": 0.8}


def _problem(device, dtype=torch.float64, batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(M, N, generator=g, dtype=torch.float64) / M**0.5
    x = torch.randn(batch, N, generator=g, dtype=torch.float64)
    x = x * (torch.arange(N) // 5 < 2)  # two active groups of five
    a, x = a.to(device=device, dtype=dtype), x.to(device=device, dtype=dtype)
    return a, x, x @ a.T


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fn(*args, **kwargs)


def _classical(name, op, y, k, prox):
    if name == "ista":
        return _quiet(solvers.ista, op, y, LAM, max_iter=k, tol=0, prox=prox).x
    if name == "fista":
        return _quiet(solvers.fista, op, y, LAM, max_iter=k, tol=0, restart=False, prox=prox).x
    return _quiet(solvers.admm, op, y, LAM, max_iter=k, tol=0, method="cholesky", prox=prox).x


# (model, options, classical algorithm, prox of the classical algorithm)
CASES = [
    (BlockLISTA, {"group_size": 5}, "ista", GROUP),
    (BlockLISTA, {"groups": UNEVEN}, "ista", {"kind": "group", "groups": UNEVEN}),
    (BlockLISTA, {"group_size": 1, "prox": "soft"}, "ista", None),
    (PreconditionedLISTA, {}, "ista", None),
    (PreconditionedLISTA, {"prox": GROUP}, "ista", GROUP),
    (LISTA, {"prox": GROUP}, "ista", GROUP),
    (LISTA, {"prox": "nonneg"}, "ista", "nonneg"),
    (LISTACP, {"prox": BOX}, "ista", BOX),
    (ALISTA, {"weight": "adjoint", "support_selection": False, "prox": GROUP}, "ista", GROUP),
    (
        UnrolledFISTA,
        {"prox": {"kind": "group", "groups": UNEVEN}},
        "fista",
        {"kind": "group", "groups": UNEVEN},
    ),
    (ADMMNet, {"prox": GROUP}, "admm", GROUP),
    (ADMMNet, {"x_update": "cg", "cg_steps": 25}, "admm", None),
    (ADMMNet, {"x_update": "learned", "cg_steps": 25, "prox": GROUP}, "admm", GROUP),
]


def _id(case):
    cls, opts, _, _ = case
    shown = {k: ("uneven" if isinstance(v, torch.Tensor) else v) for k, v in opts.items()}
    return f"{cls.__name__}-{shown}"


@pytest.mark.parametrize(("cls", "opts", "ref", "prox"), CASES, ids=[_id(c) for c in CASES])
def test_untrained_equals_classical(device, cls, opts, ref, prox):
    a, _, y = _problem(device)
    op = MatrixOperator(a)
    model = cls(op, K, lam=LAM, dtype=torch.float64, **opts).to(device)
    out, xs = model(y, return_all=True)
    assert len(xs) == K
    for k in (1, K // 2, K):
        torch.testing.assert_close(xs[k - 1], _classical(ref, op, y, k, prox), atol=1e-6, rtol=0)
    assert torch.equal(out, xs[-1])


def test_block_lista_is_group_ista_exactly_as_specified(device):
    """K layers of group-ISTA from 0, step 1/||A||^2, group threshold lam/||A||^2 (a loop)."""
    a, _, y = _problem(device)
    model = BlockLISTA(MatrixOperator(a), K, group_size=5, lam=LAM).to(device)
    t = 1.0 / torch.linalg.matrix_norm(a, ord=2) ** 2
    x = torch.zeros(y.shape[0], N, dtype=a.dtype, device=device)
    for _ in range(K):
        v = (x - t * (x @ a.T - y) @ a).reshape(-1, N // 5, 5)
        nrm = v.norm(dim=-1, keepdim=True)
        x = (v * torch.clamp(1 - LAM * t / nrm, min=0)).reshape(-1, N)
    torch.testing.assert_close(model(y), x, atol=1e-10, rtol=0)


def test_learned_solve_untrained_equals_cg_solve(device):
    a, _, y = _problem(device)
    op = MatrixOperator(a)
    learned = ADMMNet(op, K, lam=LAM, x_update="learned", cg_steps=2).to(device)
    cg = ADMMNet(op, K, lam=LAM, x_update="cg", cg_steps=2).to(device)
    torch.testing.assert_close(learned(y), cg(y), atol=1e-10, rtol=0)
    # and two CG steps are not the exact solve (the option changes the model)
    exact = ADMMNet(op, K, lam=LAM).to(device)
    with torch.no_grad():
        assert float((exact(y) - cg(y)).abs().max()) > 1e-6


def _dense_preconditioner(model, k):
    eye = torch.eye(model.n, dtype=model.dtype, device=model.blocks.device)
    return model.apply_preconditioner(k, eye).T  # column j = W_k e_j


@pytest.mark.parametrize("groups", [None, UNEVEN], ids=["consecutive", "uneven"])
def test_block_preconditioners_spd_for_random_weights(device, groups):
    a, _, _ = _problem(device)
    kw = {"group_size": 5} if groups is None else {"groups": groups}
    model = BlockLISTA(MatrixOperator(a), 3, lam=LAM, **kw).to(device)
    labels = (torch.arange(N) // 5 if groups is None else groups).to(device)
    same_group = labels[:, None] == labels[None, :]
    g = torch.Generator().manual_seed(3)
    for scale in (0.3, 1.0, 2.0, 4.0):
        with torch.no_grad():
            raw = scale * torch.randn(model.blocks.shape, generator=g, dtype=torch.float64)
            model.blocks.copy_(raw)
        for k in range(3):
            w = _dense_preconditioner(model, k)
            w = w.detach()
            torch.testing.assert_close(w, w.T, atol=1e-12 * float(w.abs().max()), rtol=0)
            assert float(w[~same_group].abs().max()) == 0.0  # block-diagonal over the groups
            # each block is L L^T + f I: eigenvalues >= f
            for lab in labels.unique():
                idx = labels == lab
                block = w[idx][:, idx]
                lowest = float(torch.linalg.eigvalsh(block).min())
                assert lowest >= 0.99 * model.floor > 0, (scale, k, int(lab))
                assert int(torch.linalg.cholesky_ex(block).info) == 0


def test_block_lista_group_size_one_is_preconditioned_lista(device):
    """Blocks of size 1 are a positive diagonal: the two models then compute the same map."""
    a, _, y = _problem(device)
    op = MatrixOperator(a)
    block = BlockLISTA(op, K, group_size=1, lam=LAM, prox="soft").to(device)
    diag = PreconditionedLISTA(op, K, lam=LAM).to(device)
    g = torch.Generator().manual_seed(4)
    d = 0.05 + torch.rand(K, N, generator=g, dtype=torch.float64).to(device)
    with torch.no_grad():
        block.blocks.copy_(torch.log(torch.expm1((d - block.floor).sqrt()))[..., None, None])
        diag.diag.copy_(torch.log(torch.expm1(d)))
        diag.theta.copy_(block.theta)
    torch.testing.assert_close(block(y), diag(y), atol=1e-10, rtol=0)


def test_group_layout():
    labels = torch.tensor([2, 0, 0, 1, 2, 2, 0])
    index, position = group_layout(labels)
    assert index.tolist() == [[1, 2, 6], [3, 7, 7], [0, 4, 5]]
    assert index.reshape(-1)[position].tolist() == list(range(7))
    with pytest.raises(ValueError, match="label 1 has no entry"):
        group_layout(torch.tensor([0, 2, 2]))


GRADCHECK = [
    (BlockLISTA, {"groups": torch.tensor([0, 0, 1, 2, 2, 2, 1, 3])}),
    (BlockLISTA, {"group_size": 2}),
    (PreconditionedLISTA, {"prox": {"kind": "group", "group_size": 4}}),
    (ADMMNet, {"x_update": "learned", "cg_steps": 2, "prox": "nonneg"}),
    (UnrolledFISTA, {"prox": BOX}),
]


@pytest.mark.parametrize(("cls", "opts"), GRADCHECK, ids=[c.__name__ for c, _ in GRADCHECK])
def test_gradcheck(cls, opts):
    """d output / d (every parameter, y) against finite differences, float64."""
    g = torch.Generator().manual_seed(5)
    a = torch.randn(5, 8, generator=g, dtype=torch.float64) / 5**0.5
    y = torch.randn(2, 5, generator=g, dtype=torch.float64, requires_grad=True)
    model = cls(MatrixOperator(a), 3, lam=0.05, **opts)
    with torch.no_grad():  # move off the initialisation (kinks of the prox at ties)
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    names, params = zip(*model.named_parameters(), strict=True)

    def f(yy, *ps):
        state = dict(zip(names, ps, strict=True))
        return torch.func.functional_call(model, state, (yy,))

    assert torch.autograd.gradcheck(f, (y, *[p.detach().requires_grad_() for p in params]))


ALL_NEW = [
    (BlockLISTA, {"group_size": 5}),
    (BlockLISTA, {"groups": UNEVEN}),
    (PreconditionedLISTA, {"prox": GROUP}),
    (ADMMNet, {"x_update": "learned", "cg_steps": 3}),
    (ADMMNet, {"x_update": "cg", "cg_steps": 2, "prox": BOX}),
    (LISTA, {"prox": "nonneg"}),
]


@pytest.mark.parametrize(("cls", "opts"), ALL_NEW, ids=[_id((c, o, 0, 0)) for c, o in ALL_NEW])
def test_checkpoint_round_trip(tmp_path, cls, opts):
    a, _, y = _problem("cpu", dtype=torch.float32)
    model = cls(MatrixOperator(a), 3, lam=LAM, **opts)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = save_checkpoint(model, tmp_path / "m.pt")
    again = load_checkpoint(path)
    assert type(again) is cls
    assert again.prox.config().__repr__() == model.prox.config().__repr__()
    torch.testing.assert_close(again(y), model(y), atol=0, rtol=0)


def test_callable_prox_is_refused_by_checkpoints(tmp_path):
    a, _, y = _problem("cpu", dtype=torch.float32)

    def my_prox(v, t):
        return torch.sign(v) * torch.relu(v.abs() - t)

    model = PreconditionedLISTA(MatrixOperator(a), 3, lam=LAM, prox=my_prox)
    torch.testing.assert_close(model(y), PreconditionedLISTA(MatrixOperator(a), 3, lam=LAM)(y))
    assert model.classical().prox.fn is my_prox  # classical() keeps the user's prox
    with pytest.raises(TypeError, match=r"config\['prox'\].*function.*stores no code.*prox='soft'"):
        save_checkpoint(model, tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()


def test_dtype_rule(device):
    a, _, y = _problem(device)
    for model in (
        BlockLISTA(MatrixOperator(a), 2, group_size=5),
        PreconditionedLISTA(MatrixOperator(a), 2),
        ADMMNet(MatrixOperator(a), 2, x_update="learned"),
    ):
        model = model.to(device)
        assert model.dtype == torch.float64  # the operator's dtype
        assert model.float().dtype == torch.float32
        with pytest.raises(DtypeMismatchError, match="float64"):
            model(y)
        assert model(y.float()).dtype == torch.float32


def test_copy_layer_structured():
    a, _, _ = _problem("cpu", dtype=torch.float32)
    for model in (
        BlockLISTA(MatrixOperator(a), 3, group_size=5),
        PreconditionedLISTA(MatrixOperator(a), 3),
        ADMMNet(MatrixOperator(a), 3, x_update="learned"),
    ):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.copy_layer(0, 2)
        for name, p in model.named_parameters():
            assert torch.equal(p[2], p[0]), name


def test_bad_input():
    a, _, _ = _problem("cpu", dtype=torch.float32)
    op = MatrixOperator(a)
    with pytest.raises(ValueError, match="exactly one of 'group_size'"):
        BlockLISTA(op, 2)
    with pytest.raises(ValueError, match="exactly one of 'group_size'"):
        BlockLISTA(op, 2, group_size=5, groups=UNEVEN)
    with pytest.raises(ValueError, match="dividing the signal length 60"):
        BlockLISTA(op, 2, group_size=7)
    with pytest.raises(TypeError, match="'group_size' to be an int"):
        BlockLISTA(op, 2, group_size=5.0)
    with pytest.raises(ValueError, match=r"shape \(60,\)"):
        BlockLISTA(op, 2, groups=torch.zeros(59, dtype=torch.long))
    with pytest.raises(ValueError, match="has no entry"):
        BlockLISTA(op, 2, groups=torch.full((60,), 2))
    with pytest.raises(ValueError, match="x_update 'exact', 'cg' or 'learned'"):
        ADMMNet(op, 2, x_update="lu")
    with pytest.raises(ValueError, match="option of x_update='cg' or 'learned'"):
        ADMMNet(op, 2, cg_steps=3)
    with pytest.raises(ValueError, match="'cg_steps' >= 1"):
        ADMMNet(op, 2, x_update="cg", cg_steps=0)
    with pytest.raises(TypeError, match="'cg_steps' to be an int"):
        ADMMNet(op, 2, x_update="cg", cg_steps=2.0)
    with pytest.raises(ValueError, match="LAMP.*soft threshold only"):
        LAMP(op, 2, prox=GROUP)
    with pytest.raises(ValueError, match="support_selection=True is defined for the soft"):
        ALISTA(op, 2, prox=GROUP)
    with pytest.raises(ValueError, match="dividing the signal length 60"):
        LISTA(op, 2, prox={"kind": "group", "group_size": 7})
    with pytest.raises(TypeError, match="Expected 'prox'"):
        UnrolledFISTA(op, 2, prox=3)


def test_default_config_is_unchanged():
    """prox=None stays None in the config (old checkpoints and configs rebuild the same)."""
    a, _, _ = _problem("cpu", dtype=torch.float32)
    cfg = LISTA(MatrixOperator(a), 2).get_config()
    assert cfg["prox"] is None
    assert "x_update" not in ADMMNet(MatrixOperator(a), 2).get_config()


# ------------------------------------------------------------------------- matrix-free
class _NoDense(LinearOperator):
    """A 5 x 5 box blur on side x side images (zero boundary), flattened; both products are
    ``conv2d`` calls; refuses to be densified."""

    def __init__(self, side):
        super().__init__()
        self.side = side
        self.in_shape = self.out_shape = (side * side,)

    def _conv(self, x, flip):
        w = torch.full((1, 1, 5, 5), 1 / 25, dtype=x.dtype, device=x.device)
        img = torch.nn.functional.pad(x.reshape(-1, 1, self.side, self.side), [2, 2, 2, 2])
        return torch.nn.functional.conv2d(img, w.flip((2, 3)) if flip else w).reshape(x.shape)

    def _mv(self, x):
        return self._conv(x, False)

    def _rmv(self, y):
        return self._conv(y, True)

    def norm(self, **kwargs):
        return 1.0  # ||A|| <= ||h||_1 = 1: an upper bound, a valid (conservative) step

    def to_dense(self, **kwargs):
        raise AssertionError("densified a matrix-free operator")


def test_no_dense_operator_is_a_linear_map_with_its_adjoint():
    from unrollsci.operators import check_adjoint

    assert check_adjoint(_NoDense(12)) < 1e-12


MATRIX_FREE = [
    (BlockLISTA, {"group_size": 4}),
    (PreconditionedLISTA, {"prox": "nonneg"}),
    (UnrolledFISTA, {"prox": {"kind": "group", "group_size": 4}}),
    (ADMMNet, {"x_update": "learned", "cg_steps": 2}),
]


@pytest.mark.parametrize(("cls", "opts"), MATRIX_FREE, ids=[c.__name__ for c, _ in MATRIX_FREE])
def test_matrix_free_beyond_1e5_unknowns(cls, opts):
    side = 320  # n = 102400
    op = _NoDense(side)
    assert op.shape[1] >= 10**5
    model = cls(op, 2, lam=0.01, dtype=torch.float32, **opts)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < 20 * op.shape[1]  # O(n) per layer, never n x n
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, side * side, generator=g) * (torch.rand(1, side * side, generator=g) < 0.01)
    y = op(x)
    out = model(y)
    assert out.shape == (1, side * side) and torch.isfinite(out).all()
    loss = (out - x).pow(2).sum()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    with pytest.raises(ValueError, match="x_update='cg' or 'learned'"):
        ADMMNet(op, 2, lam=0.01)  # the exact solve needs the n x n matrix: refused here
    assert math.isfinite(float(loss.detach()))
