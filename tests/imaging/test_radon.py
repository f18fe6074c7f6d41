"""Radon operator and FBP against scikit-image, adjoint identities, gradients, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unrollsci.operators import Radon, check_adjoint, fbp


@pytest.fixture(scope="module")
def phantom128() -> np.ndarray:
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    return resize(shepp_logan_phantom(), (128, 128))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_matches_skimage_shepp_logan_128_180(device, phantom128, dtype):
    from skimage.transform import radon

    op = Radon(128, 180).to(device)
    ref = radon(phantom128, np.linspace(0, 180, 180, endpoint=False), circle=True)
    x = torch.from_numpy(phantom128).to(device=device, dtype=dtype)[None]
    y = op(x)
    assert y.shape == (1, 180, 128) and y.dtype == dtype
    rel = np.linalg.norm(y[0].cpu().double().numpy().T - ref) / np.linalg.norm(ref)
    assert rel <= 0.02
    assert rel <= (1e-12 if dtype == torch.float64 else 1e-5)  # same discretization


@pytest.mark.parametrize("circle", [True, False])
def test_matches_skimage_given_angles(device, circle):
    from skimage.transform import radon

    gen = torch.Generator().manual_seed(3)
    n = 33
    img = torch.rand(n, n, generator=gen, dtype=torch.float64)
    i = torch.arange(n) - n // 2
    img[(i[:, None] ** 2 + i[None, :] ** 2) > (n // 2) ** 2] = 0
    angles = torch.tensor([0.0, 17.5, 45.0, 90.0, 133.3, 179.0, -20.0, 250.0])
    op = Radon(n, angles, circle=circle).to(device)
    ref = radon(img.numpy(), angles.numpy(), circle=circle)
    y = op(img.to(device)[None])[0].cpu().numpy().T
    assert y.shape == ref.shape
    # skimage warps in single-precision coordinates for some angles: ~1e-5 differences
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-4)


def test_angle_count_is_skimage_default_spacing():
    op = Radon(16, 12)
    np.testing.assert_allclose(op.angles.numpy(), np.linspace(0, 180, 12, endpoint=False))
    assert op.out_shape == (12, 16)


@pytest.mark.parametrize(
    "dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)], ids=["f64", "f32"]
)
def test_adjoint_identity_128_180(device, dtype, tol):
    op = Radon(128, 180).to(device)
    assert check_adjoint(op, dtype=dtype, device=device) < tol


@pytest.mark.parametrize("circle", [True, False])
def test_adjoint_is_transpose_of_dense(device, circle):
    op = Radon(10, 7, circle=circle).to(device)
    dense = op.to_dense()  # columns = op(e_j)
    m, n = op.shape
    eye = torch.eye(m, dtype=torch.float64, device=device).reshape(m, *op.out_shape)
    adj = op.adjoint(eye).reshape(m, n)  # rows = A^T e_i
    torch.testing.assert_close(adj, dense, rtol=0, atol=1e-14)


def test_channel_axis_shapes(device):
    op = Radon(16, 9).to(device)
    x = torch.rand(3, 1, 16, 16, device=device)
    y = op(x)
    assert y.shape == (3, 1, 9, 16)
    torch.testing.assert_close(y[:, 0], op(x[:, 0]))
    assert op.adjoint(y).shape == (3, 1, 16, 16)


def test_gradcheck_forward_and_adjoint(device):
    op = Radon(8, 5).to(device)
    x = torch.rand(2, 8, 8, dtype=torch.float64, device=device, requires_grad=True)
    y = torch.rand(2, 5, 8, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(op, (x,))
    assert torch.autograd.gradcheck(op.adjoint, (y,))
    assert torch.autograd.gradgradcheck(lambda t: op(t) ** 2, (x,))


def test_norm_matches_scipy_svd(device):
    import scipy.sparse.linalg as spla

    from unrollsci.operators._radon import _system_matrix

    op = Radon(24, 20).to(device)
    mat = _system_matrix(24, tuple(op.angles.tolist()), True)
    ref = spla.svds(mat, k=1, return_singular_vectors=False)[0]
    assert op.norm() == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize(
    "name,skname",
    [
        ("ram-lak", "ramp"),
        ("shepp-logan", "shepp-logan"),
        ("cosine", "cosine"),
        ("hamming", "hamming"),
        ("hann", "hann"),
    ],
)
def test_fbp_matches_skimage_iradon(device, phantom128, name, skname):
    from skimage.transform import iradon, radon

    theta = np.linspace(0, 180, 180, endpoint=False)
    sino = radon(phantom128, theta, circle=True)
    ref = iradon(sino, theta, filter_name=skname, circle=True)
    op = Radon(128, 180).to(device)
    rec = fbp(torch.from_numpy(sino.T.copy()).to(device)[None], op, filter=name)
    rel = np.linalg.norm(rec[0].cpu().numpy() - ref) / np.linalg.norm(ref)
    assert rel < 0.03  # different back-projection interpolation (ray- vs pixel-driven)
    err = np.linalg.norm(rec[0].cpu().numpy() - phantom128) / np.linalg.norm(phantom128)
    ref_err = np.linalg.norm(ref - phantom128) / np.linalg.norm(phantom128)
    assert err < ref_err + 0.01


def test_fbp_channel_axis_and_method(device):
    op = Radon(16, 10).to(device)
    y = torch.rand(2, 1, 10, 16, device=device)
    out = fbp(y, op, filter="hann")
    assert out.shape == (2, 1, 16, 16)
    torch.testing.assert_close(out[:, 0], op.fbp(y[:, 0], filter="hann"))


def test_bad_input():
    op = Radon(16, 10)
    with pytest.raises(ValueError, match=r"Expected 'x' of shape \(batch, 16, 16\)"):
        op(torch.zeros(2, 15, 15))
    with pytest.raises(ValueError, match=r"Expected 'y' of shape \(batch, 10, 16\)"):
        op.adjoint(torch.zeros(2, 12, 16))
    with pytest.raises(ValueError, match="at least one projection angle"):
        Radon(16, torch.tensor([]))
    with pytest.raises(ValueError, match="at least one projection angle"):
        Radon(16, 0)
    with pytest.raises(ValueError, match="finite angles"):
        Radon(16, torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="square image size"):
        Radon((16, 20), 10)
    with pytest.raises(TypeError, match="'angles' to be a count"):
        Radon(16, "many")
    with pytest.raises(ValueError, match=r"sinograms of shape \(batch, 10, 16\)"):
        fbp(torch.zeros(1, 10, 17), op)
    bad = torch.zeros(1, 10, 16)
    bad[0, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="'y' to be finite"):
        fbp(bad, op)
    with pytest.raises(ValueError, match="filter in"):
        fbp(torch.zeros(1, 10, 16), op, filter="butterworth")
