"""The matrix-free Radon (method='matfree') against the stored matrix and scikit-image,
its exact adjoint, the torch fallback against the compiled kernel, the choice by size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unrollsci.operators import Radon, check_adjoint
from unrollsci.operators import _radon_matfree as mf


@pytest.mark.parametrize("circle", [True, False])
@pytest.mark.parametrize("batch", [1, 3, 21])  # 21: one 16-wide block and a remainder
def test_matfree_equals_matrix(device, circle, batch):
    angles = torch.tensor([0.0, 17.5, 45.0, 90.0, 133.3, 179.0, -20.0, 250.0])
    m = Radon(33, angles, circle=circle, method="matrix").to(device)
    f = Radon(33, angles, circle=circle, method="matfree").to(device)
    x = torch.rand(batch, 33, 33, dtype=torch.float64, device=device)
    y = m(x)
    torch.testing.assert_close(f(x), y, rtol=0, atol=1e-13 * float(y.abs().max()))
    back = m.adjoint(y)
    torch.testing.assert_close(f.adjoint(y), back, rtol=0, atol=1e-13 * float(back.abs().max()))
    y32 = f(x.float())
    assert y32.dtype == torch.float32
    assert float((y32.double() - y).norm() / y.norm()) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_matfree_matches_skimage_shepp_logan_128_180(device, dtype):
    from skimage.data import shepp_logan_phantom
    from skimage.transform import radon, resize

    img = resize(shepp_logan_phantom(), (128, 128))
    ref = radon(img, np.linspace(0, 180, 180, endpoint=False), circle=True)
    op = Radon(128, 180, method="matfree").to(device)
    y = op(torch.from_numpy(img).to(device=device, dtype=dtype)[None])
    rel = np.linalg.norm(y[0].cpu().double().numpy().T - ref) / np.linalg.norm(ref)
    assert rel <= (1e-12 if dtype == torch.float64 else 1e-6)


@pytest.mark.parametrize("circle", [True, False])
def test_matfree_adjoint_is_exact(device, circle):
    op = Radon(40, 23, circle=circle, method="matfree").to(device)
    assert check_adjoint(op, dtype=torch.float64, device=device) < 1e-13
    assert check_adjoint(op, dtype=torch.float32, device=device) < 1e-5
    small = Radon(9, 5, circle=circle, method="matfree").to(device)
    dense = small.to_dense()
    m, n = small.shape
    eye = torch.eye(m, dtype=torch.float64, device=device).reshape(m, *small.out_shape)
    torch.testing.assert_close(small.adjoint(eye).reshape(m, n), dense, rtol=0, atol=1e-14)


def test_torch_fallback_equals_kernel():
    if not mf.kernel_available():
        pytest.skip("no C compiler here: the torch path is the only one")
    for circle in (True, False):
        op = Radon(31, 13, circle=circle, method="matfree")
        x = op._masked(torch.rand(4, 31, 31, dtype=torch.float64))
        y = torch.rand(4, op.n_angles * op.n_detectors, dtype=torch.float64)
        torch.testing.assert_close(
            mf.project(op._rays, x, backend="torch"), mf.project(op._rays, x), rtol=1e-13, atol=0
        )
        torch.testing.assert_close(
            mf.backproject(op._rays, y, backend="torch"),
            mf.backproject(op._rays, y),
            rtol=0,
            atol=1e-12,
        )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("batch", [1, 5, 8, 16, 21, 40])  # remainders, one and two vectors
def test_kernel_equals_fallback_on_arbitrary_rays(dtype, batch):
    # Rays in every direction (axis-aligned ones included), starting inside and outside the
    # grid, some missing it, sample ranges wider than the grid: the kernel cuts each range
    # analytically, the fallback tests every sample.
    if not mf.kernel_available():
        pytest.skip("no C compiler here: the torch path is the only one")
    gen = torch.Generator().manual_seed(3)
    n, r = 23, 300
    P = n + 2
    ang = torch.rand(r, generator=gen, dtype=torch.float64) * 2 * torch.pi
    ang[:8] = torch.arange(8, dtype=torch.float64) * torch.pi / 4  # 0, 45, 90, ... degrees
    step = 0.3 + 1.2 * torch.rand(r, generator=gen, dtype=torch.float64)
    centre = (torch.rand(r, 2, generator=gen, dtype=torch.float64) * 1.6 - 0.3) * (P - 1)
    rays = torch.stack(
        [
            centre[:, 0],
            centre[:, 1],
            step * torch.cos(ang),
            step * torch.sin(ang),
            0.5 + torch.rand(r, generator=gen, dtype=torch.float64),
        ],
        1,
    )
    rays[:4, 4] = 1.0
    k0 = torch.randint(-3 * P, 1, (r,), generator=gen)
    nk = torch.randint(0, 6 * P, (r,), generator=gen)
    table = mf.RayTable(rays, k0, nk, n)
    x = torch.rand(batch, n, n, generator=gen, dtype=torch.float64).to(dtype)
    y = torch.rand(batch, r, generator=gen, dtype=torch.float64).to(dtype)
    tol = 1e-13 if dtype == torch.float64 else 1e-5
    fwd = mf.project(table, x)
    assert float(fwd.abs().max()) > 0
    torch.testing.assert_close(fwd, mf.project(table, x, backend="torch"), rtol=tol, atol=tol)
    back = mf.backproject(table, y)
    torch.testing.assert_close(
        back, mf.backproject(table, y, backend="torch"), rtol=tol, atol=tol * batch
    )
    lhs = float((fwd.double() * y.double()).sum())
    rhs = float((x.double() * back.double()).sum())
    assert abs(lhs - rhs) <= (1e-12 if dtype == torch.float64 else 1e-5) * abs(lhs)


def test_no_compiler_falls_back_to_torch(monkeypatch):
    x = torch.rand(2, 20, 20, dtype=torch.float64)
    ref = Radon(20, 9, method="matrix")(x)
    monkeypatch.setenv("UNROLLSCI_NO_KERNEL", "1")
    mf._library.cache_clear()
    try:
        assert not mf.kernel_available()
        op = Radon(20, 9, method="matfree")
        torch.testing.assert_close(op(x), ref, rtol=0, atol=1e-12)
        assert check_adjoint(op, dtype=torch.float64) < 1e-13
    finally:
        monkeypatch.delenv("UNROLLSCI_NO_KERNEL")
        mf._library.cache_clear()


def test_gradcheck_matfree(device):
    op = Radon(8, 5, method="matfree").to(device)
    x = torch.rand(2, 8, 8, dtype=torch.float64, device=device, requires_grad=True)
    y = torch.rand(2, 5, 8, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(op, (x,))
    assert torch.autograd.gradcheck(op.adjoint, (y,))
    assert torch.autograd.gradgradcheck(lambda t: op(t) ** 2, (x,))


def test_auto_chooses_by_size_and_both_agree():
    small, large = Radon(64, 30), Radon(256, 360)
    assert small.method == "matrix" and small.nnz > 0
    assert large.method == "matfree" and large.nnz == 0
    assert "method='matfree'" in repr(large)
    x = torch.rand(1, 64, 64, dtype=torch.float64)
    f = Radon(64, 30, method="matfree")
    assert float((small(x) - f(x)).norm() / small(x).norm()) < 1e-14
    assert small.norm() == pytest.approx(f.norm(), rel=1e-8)


def test_matfree_channel_axis_and_support(device):
    op = Radon(16, 9, method="matfree").to(device)
    x = torch.rand(3, 1, 16, 16, device=device)
    y = op(x)
    assert y.shape == (3, 1, 9, 16)
    back = op.adjoint(y)
    assert back.shape == (3, 1, 16, 16)
    assert float(back[:, 0][:, ~op.support(device=device)].abs().max()) == 0.0


def test_bad_method():
    with pytest.raises(ValueError, match=r"method in \('auto', 'matrix', 'matfree'\)"):
        Radon(16, 4, method="sparse")
    with pytest.raises(ValueError, match="method in"):
        Radon(16, 4, method=None)


def test_checkpoint_keeps_the_method(tmp_path):
    from unrollsci.imaging import UnrolledCT
    from unrollsci.train import load_checkpoint, save_checkpoint

    model = UnrolledCT(Radon(16, 8, method="matfree"), n_layers=1, channels=2)
    assert Radon(16, 8).method == "matrix"  # what a reload without the method would take
    path = save_checkpoint(model, tmp_path / "ct.pt")
    again = load_checkpoint(path, expected=UnrolledCT)
    assert again.radon.method == "matfree"
    y = torch.rand(2, 8, 16)
    with torch.no_grad():
        torch.testing.assert_close(again(y), model(y), rtol=1e-6, atol=1e-6)
    # a checkpoint written before the method was stored loads with "auto"
    payload = torch.load(path, weights_only=False)
    del payload["config"]["radon"]["config"]["method"]
    torch.save(payload, path)
    assert load_checkpoint(path, expected=UnrolledCT).radon.method == "matrix"
