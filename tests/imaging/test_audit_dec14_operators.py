"""Audit (Dec 14, operators, imaging and their certificates): ``lipschitz_target`` exceeded
after ``model.float()`` (the float64 ``radon_norm`` was rounded by the cast); a
``Convolution`` with a learnable kernel that silently never changed; FFT norm bounds below
the true norm for non-square kernels; ``FanBeam``'s default detector count dying in the
allocator; float tuple sizes truncated by ``Radon``/``FanBeam``; ``check_adjoint`` returning
NaN for a non-finite adjoint; and ``UnrolledCT`` taking ``True`` as a cap and a bogus FBP
filter until its first forward."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from scipy.signal import correlate2d

from unrollsci.imaging import (
    Radon,
    UnrolledCT,
    conv_operator_norm,
    lipschitz_bound,
    ridge_filter_norm2,
)
from unrollsci.operators import (
    Convolution,
    FanBeam,
    LinearOperator,
    MatrixOperator,
    check_adjoint,
)
from unrollsci.operators._radon import radon_memory_estimate
from unrollsci.train import load_checkpoint, save_checkpoint

T = 3.0


def _capped_model() -> UnrolledCT:
    """``||A||`` of Radon(20, 9) rounds *down* in float32; large weights make every capped
    convolution hit its cap and the steps sit at 2: the certificate is at ``T`` to rounding."""
    torch.manual_seed(0)
    model = UnrolledCT(Radon(20, 9), n_layers=3, channels=4, lipschitz_target=T)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 5.0)
        model.step_logits.fill_(30.0)
    return model


# ------------------------------------------------------------------------------- D1
@pytest.mark.parametrize(
    "cast",
    [
        lambda m: m.float(),
        lambda m: m.to(torch.float32),
        lambda m: m.double().float(),
        lambda m: m.half().float(),
    ],
    ids=["float", "to_float32", "double_float", "half_float"],
)
def test_lipschitz_target_holds_after_a_dtype_cast(cast):
    model = _capped_model()
    exact = model.radon.norm()
    assert lipschitz_bound(model) <= T
    cast(model)
    assert model.radon_norm.dtype == torch.float64
    assert float(model.radon_norm) == exact  # the float64 norm the cap was chosen for
    assert lipschitz_bound(model) <= T


def test_cast_keeps_the_outputs_of_a_float32_model():
    model = _capped_model().eval()
    y = torch.rand(2, 9, 20, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(y)
        after = model.double().float()(y)
    torch.testing.assert_close(after, before, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_radon_norm_moves_device_but_keeps_float64():
    model = _capped_model().to("cuda", torch.float32)
    assert model.radon_norm.device.type == "cuda" and model.radon_norm.dtype == torch.float64
    assert float(model.radon_norm) == model.radon.norm()
    out = model.eval()(torch.rand(2, 9, 20, device="cuda"))
    assert out.device.type == "cuda" and bool(torch.isfinite(out).all())


def _as_saved_by_an_older_version(model: UnrolledCT) -> None:
    # what model.float() left in the buffer before radon_norm kept its dtype
    model.radon_norm = model.radon_norm.float()


def test_old_checkpoint_with_a_rounded_radon_norm_loads_and_meets_the_target(tmp_path):
    model = _capped_model()
    exact = model.radon.norm()
    assert float(torch.tensor(exact, dtype=torch.float32)) < exact  # it rounds down
    _as_saved_by_an_older_version(model)
    assert lipschitz_bound(model) > T  # the old defect, reproduced on the saved state
    path = tmp_path / "old.pt"
    save_checkpoint(model, path)
    loaded = load_checkpoint(path)
    assert loaded.radon_norm.dtype == torch.float64
    assert float(loaded.radon_norm) == exact
    assert lipschitz_bound(loaded) <= T
    for (name, p), q in zip(model.named_parameters(), loaded.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_old_state_dict_with_a_rounded_radon_norm_loads_float64():
    model = _capped_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["radon_norm"] = state["radon_norm"].float()
    fresh = UnrolledCT(Radon(20, 9), n_layers=3, channels=4, lipschitz_target=T)
    fresh.load_state_dict(state)
    assert fresh.radon_norm.dtype == torch.float64
    assert float(fresh.radon_norm) == model.radon.norm()
    assert lipschitz_bound(fresh) <= T


def test_a_float64_radon_norm_in_a_state_dict_is_loaded_as_saved():
    model = _capped_model()
    state = dict(model.state_dict())
    state["radon_norm"] = torch.tensor(12.5, dtype=torch.float64)  # not a rounding: kept
    model.load_state_dict(state)
    assert float(model.radon_norm) == 12.5 and model.radon_norm.dtype == torch.float64


# ------------------------------------------------------------------------------- D2
def _dense_same_conv_1d(k: np.ndarray, n: int) -> np.ndarray:
    """``A`` of the zero-boundary "same" 1D convolution (numpy, one basis vector a column)."""
    return np.stack([np.convolve(np.eye(n)[j], k, mode="same") for j in range(n)], axis=1)


def test_a_learned_kernel_is_trained_and_applied():
    x = torch.randn(4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    target = torch.from_numpy(x.numpy() @ _dense_same_conv_1d(np.array([0.25, 0.5, 0.25]), 8).T)
    k = torch.nn.Parameter(torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    op = Convolution(k, (8,))
    assert [p is k for p in op.parameters()] == [True]
    opt = torch.optim.SGD([k], lr=0.05)
    losses = []
    for _ in range(50):
        loss = (op(x) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 1e-2 * losses[0]
    dense = _dense_same_conv_1d(k.detach().numpy(), 8)  # the kernel as trained
    with torch.no_grad():
        np.testing.assert_allclose(op(x).numpy(), x.numpy() @ dense.T, rtol=0, atol=1e-14)
        y = torch.randn(4, 8, dtype=torch.float64)
        np.testing.assert_allclose(op.adjoint(y).numpy(), y.numpy() @ dense, rtol=0, atol=1e-14)
        assert op.norm() == pytest.approx(np.linalg.svd(dense, compute_uv=False)[0], rel=1e-7)


@pytest.mark.parametrize("boundary", ["zero", "circular"])
def test_learned_2d_kernel_gradient_matches_finite_differences(boundary):
    """One operator, built once: the gradient of ``<A x, v> + <A^T w, u>`` w.r.t. its
    kernel (gradcheck perturbs the kernel in place, so a copied kernel fails it)."""
    gen = torch.Generator().manual_seed(1)
    k = torch.nn.Parameter(torch.randn(3, 2, dtype=torch.float64, generator=gen))
    op = Convolution(k, (5, 6), boundary=boundary)
    x, v = (torch.randn(2, 5, 6, dtype=torch.float64, generator=gen) for _ in range(2))

    def f(kernel: torch.Tensor) -> torch.Tensor:
        assert kernel is k
        return (op(x) * v).sum() + (op.adjoint(v) * x).sum() * 0.5

    assert torch.autograd.gradcheck(f, (k,))


def test_in_place_edits_copies_and_norm_of_a_learned_kernel():
    k = torch.nn.Parameter(torch.tensor([[0.1, 0.2, 0.0], [0.3, 0.5, 0.1]], dtype=torch.float64))
    op = Convolution(k, (5, 6), boundary="circular")
    n0 = op.norm()
    with torch.no_grad():
        k.mul_(3.0)
    dense = op.to_dense().detach().numpy()  # column j is A e_j
    assert op.norm() == pytest.approx(np.linalg.svd(dense, compute_uv=False)[0], rel=1e-7)
    assert op.norm() == pytest.approx(3 * n0, rel=1e-7)  # not the cached value
    twin = copy.deepcopy(op)
    assert twin.kernel is not k and torch.equal(twin.kernel, k)
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(twin(x), op(x), rtol=0, atol=0)
    with torch.no_grad():
        twin.kernel.zero_()
    assert bool(op(x).abs().sum() > 0)  # the original is left alone


def test_constant_and_learned_states_load_into_each_other():
    kernel = torch.tensor([[0.1, 0.2, 0.0], [0.3, 0.5, 0.1]], dtype=torch.float64)
    const = Convolution(kernel, (5, 6))
    learned = Convolution(torch.nn.Parameter(torch.zeros_like(kernel)), (5, 6))
    learned.load_state_dict(const.state_dict())
    assert torch.equal(learned.kernel, kernel)
    back = Convolution(torch.zeros_like(kernel), (5, 6))
    with torch.no_grad():
        learned.kernel.mul_(2.0)
    back.load_state_dict(learned.state_dict())
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(back(x), learned(x).detach(), rtol=0, atol=0)
    # a state saved before the kernel was stored as given: its flipped "weight" (1, 1, *k)
    old = {"weight": torch.flip(2.0 * kernel, dims=(0, 1))[None, None]}
    again = Convolution(torch.zeros_like(kernel), (5, 6))
    again.load_state_dict(old)
    torch.testing.assert_close(again(x), back(x), rtol=0, atol=0)


def test_constant_kernel_is_copied():
    kernel = torch.tensor([0.25, 0.5, 0.25], dtype=torch.float64)
    op = Convolution(kernel, (6,))
    x = torch.randn(2, 6, dtype=torch.float64)
    before = op(x)
    kernel.mul_(3.0)
    torch.testing.assert_close(op(x), before, rtol=0, atol=0)


def test_learned_kernel_checkpoint_round_trip(tmp_path):
    """A model on a learned-kernel operator saved and loaded: the kernel comes back as a
    parameter of the rebuilt operator, with its trained values."""
    from unrollsci.unrolled import UnrolledFISTA

    kernel = torch.nn.Parameter(torch.tensor([0.2, 0.6, 0.2], dtype=torch.float64))
    model = UnrolledFISTA(Convolution(kernel, (8,)), 2).double()
    with torch.no_grad():
        kernel.add_(0.05)
    path = tmp_path / "m.pt"
    save_checkpoint(model, path)
    back = load_checkpoint(path)
    ops = [m for m in back.modules() if isinstance(m, Convolution)]
    assert len(ops) == 1 and isinstance(ops[0].kernel, torch.nn.Parameter)
    torch.testing.assert_close(ops[0].kernel.detach(), kernel.detach(), rtol=0, atol=0)
    y = torch.randn(3, 8, dtype=torch.float64)
    torch.testing.assert_close(back(y), model(y), rtol=0, atol=0)


def test_a_kernel_built_in_the_graph_still_differentiates():
    k = torch.rand(3, 3, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 4, 4, dtype=torch.float64)
    out = Convolution(2.0 * k, (4, 4), boundary="circular")(x)
    (g,) = torch.autograd.grad(out.sum(), k)
    # d/dk of sum(conv(x, 2k)) with a circular boundary: 2 * (sum of x) for every tap
    torch.testing.assert_close(g, torch.full_like(k, 2.0 * float(x.sum())))


# ------------------------------------------------------------------------------- D3
def _dense_conv(w: np.ndarray, n: int) -> np.ndarray:
    """The "same" zero-padded correlation with ``w`` ``(c_out, c_in, kh, kw)`` on ``n x n``
    images, as a dense matrix (scipy, one basis image at a time)."""
    c_out, c_in = w.shape[:2]
    cols = []
    for j in range(c_in * n * n):
        e = np.zeros(c_in * n * n)
        e[j] = 1.0
        e = e.reshape(c_in, n, n)
        out = [
            sum(correlate2d(e[i], w[o, i], mode="same") for i in range(c_in)) for o in range(c_out)
        ]
        cols.append(np.stack(out).ravel())
    return np.stack(cols, axis=1)


def _kernels() -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    ks = [torch.tensor([-1.0, 0.0, -1.0, -1.0, 1.0], dtype=torch.float64).reshape(1, 1, 5, 1)]
    for shape in [(1, 1, 5, 1), (1, 1, 1, 5), (1, 1, 7, 3), (2, 3, 5, 3), (3, 2, 3, 5)]:
        for _ in range(4):
            ks.append(torch.randn(shape, dtype=torch.float64, generator=gen))
    # rows +-1 at the top and bottom: the row wrap-around of a too small grid cancels them
    ks.append(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0], dtype=torch.float64).reshape(1, 1, 5, 1))
    return ks


@pytest.mark.parametrize("w", _kernels())
def test_conv_operator_norm_bounds_non_square_kernels(w):
    n = 6
    exact = np.linalg.svd(_dense_conv(w.numpy(), n), compute_uv=False)[0]
    assert conv_operator_norm(w, n) >= exact * (1 - 1e-12)
    power = conv_operator_norm(w, n, method="power", n_iter=2000)
    assert power == pytest.approx(exact, rel=1e-6)


@pytest.mark.parametrize("w", [w for w in _kernels() if w.shape[1] == 1])
def test_ridge_filter_norm2_bounds_non_square_filter_banks(w):
    n = 6
    bank = w.transpose(0, 1).contiguous()  # (C, 1, kh, kw): one input channel
    exact = np.linalg.svd(_dense_conv(bank.numpy(), n), compute_uv=False)[0]
    assert float(ridge_filter_norm2(bank, n)) >= exact**2 * (1 - 1e-12)
    stacked = ridge_filter_norm2(torch.stack([bank, 0.5 * bank]), n)  # (L, C, 1, kh, kw)
    assert float(stacked[0]) >= exact**2 * (1 - 1e-12)


# ------------------------------------------------------------------------------- D4
@pytest.mark.parametrize("d_so", [5.9, 6.5, 6.66])
def test_fanbeam_default_detectors_refuse_a_source_next_to_the_image(d_so):
    n = 8
    assert d_so > n / math.sqrt(2)  # accepted as a geometry
    with pytest.raises(ValueError, match=r"source_distance >= .*default n_detectors"):
        FanBeam(n, 4, source_distance=d_so, detector_distance=2 * d_so)
    op = FanBeam(n, 4, source_distance=d_so, detector_distance=2 * d_so, n_detectors=12)
    assert op.out_shape == (4, 12) and check_adjoint(op) < 1e-13


def test_fanbeam_default_detectors_just_past_the_limit_see_the_whole_image():
    n = 8
    closest = (n / math.sqrt(2) + 1.0) * math.sqrt(1.01)
    d_so = closest * (1 + 1e-9)
    op = FanBeam(n, 5, source_distance=d_so, detector_distance=2 * d_so)
    # at most 2 ceil(10 D_sd / spacing) + 2 detectors
    assert op.n_detectors <= 2 * math.ceil(10 * 2 * d_so) + 2
    dense = op.to_dense().reshape(5, op.n_detectors, n, n)
    seen = dense.abs().sum(dim=1) > 0  # (view, row, col): some ray of the view crosses it
    assert bool(seen.all())


# ------------------------------------------------------------------------------- D5
@pytest.mark.parametrize(
    "size", [(8.9, 8.9), (8.0, 8.0), [np.float64(12.5), 12.7], (True, True), ("8", "8")]
)
def test_tuple_sizes_must_hold_ints(size):
    with pytest.raises(TypeError, match="image_size"):
        Radon(size, 4)
    with pytest.raises(TypeError, match="image_size"):
        FanBeam(size, 4, source_distance=40.0, detector_distance=80.0)
    with pytest.raises(TypeError, match="image_size"):
        radon_memory_estimate(size)


def test_integer_tuple_sizes_are_the_scalar_size():
    op = Radon((np.int64(8), 8), 4)
    assert op.image_size == 8
    torch.testing.assert_close(op.to_dense(), Radon(8, 4).to_dense(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="square image size"):
        Radon((12, 13), 4)


# ------------------------------------------------------------------------------- D6
class _NaNAdjoint(LinearOperator):
    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("a", a)
        self.in_shape, self.out_shape = (a.shape[1],), (a.shape[0],)

    def _mv(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.a.T

    def _rmv(self, y: torch.Tensor) -> torch.Tensor:
        return (y @ self.a) * float("nan")  # a bug in the adjoint


def test_check_adjoint_refuses_a_non_finite_adjoint():
    a = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"A\^T\(y\)' to be finite"):
        check_adjoint(_NaNAdjoint(a))
    assert check_adjoint(MatrixOperator(a)) < 1e-14


# ------------------------------------------------------------------------------- D7
R = Radon(8, 3)


@pytest.mark.parametrize("name", ["cnn_lipschitz", "lipschitz_target"])
@pytest.mark.parametrize("value", [True, False, "2.0"])
def test_caps_must_be_numbers(name, value):
    with pytest.raises(TypeError, match=name):
        UnrolledCT(R, n_layers=1, channels=2, **{name: value})


def test_caps_that_are_numbers_are_taken():
    model = UnrolledCT(R, n_layers=1, channels=2, depth=2, cnn_lipschitz=4)
    assert model.blocks[0].convs[0].cap == pytest.approx(2.0)


@pytest.mark.parametrize("init", ["fbp", "zero"])
def test_unknown_filter_is_refused_at_construction(init):
    with pytest.raises(ValueError, match=r"Expected filter in .*'bogus'"):
        UnrolledCT(R, n_layers=1, channels=2, filter="bogus", init=init)
