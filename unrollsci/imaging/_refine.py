"""A residual image refinement ``x -> x + R(x)`` whose Lipschitz constant is certified."""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from .._validation import (
    check_batch,
    check_count,
    check_finite,
    check_model_dtype,
    model_dtype,
)
from ._certify import check_finite_tensors, conv_operator_norm

__all__ = ["LipschitzRefiner", "maxmin"]


def maxmin(z: torch.Tensor) -> torch.Tensor:
    """MaxMin activation: channel pairs ``(a, b) -> (max(a, b), min(a, b))``.

    A sort of each pair, hence 1-Lipschitz in the Euclidean norm (and norm preserving).

    Args:
        z: ``(batch, C, ...)`` with ``C`` even.

    Returns:
        A tensor of the same shape.

    Example:
        >>> import torch
        >>> maxmin(torch.tensor([[[1.0], [3.0], [2.0], [0.0]]]))[0, :, 0].tolist()
        [2.0, 3.0, 1.0, 0.0]
    """
    a, b = z.chunk(2, dim=1)
    return torch.cat((torch.maximum(a, b), torch.minimum(a, b)), dim=1)


def _spectrum(weight: torch.Tensor, image_size: int) -> torch.Tensor:
    """Real and imaginary parts ``(F, c_out, c_in)`` of the kernel matrices at the
    ``M x (M // 2 + 1)`` DFT frequencies of an ``M x M`` grid, ``M = N + k`` (the grid of
    ``conv_operator_norm``), as a ``k^2``-term sum (cheaper than FFTs of padded kernels)."""
    c_out, c_in, k, _ = weight.shape
    m = image_size + k
    f1 = torch.arange(m, dtype=weight.dtype, device=weight.device)
    f2 = torch.arange(m // 2 + 1, dtype=weight.dtype, device=weight.device)
    taps = torch.arange(k, dtype=weight.dtype, device=weight.device)
    phase = (f1[:, None, None, None] * taps[:, None] + f2[None, :, None, None] * taps) * (
        -2.0 * math.pi / m
    )  # (m, m//2+1, k, k)
    phase = phase.reshape(-1, k * k)
    w = weight.reshape(c_out * c_in, k * k)
    re = (w @ torch.cos(phase).T).T.reshape(-1, c_out, c_in)
    im = (w @ torch.sin(phase).T).T.reshape(-1, c_out, c_in)
    return re, im


def _apply(re: torch.Tensor, im: torch.Tensor, ur: torch.Tensor, ui: torch.Tensor) -> Any:
    """``K u`` per frequency in real arithmetic (complex batched products are slow on CPU)."""
    mv = lambda a, b: (a * b[:, None, :]).sum(-1)  # noqa: E731
    return mv(re, ur) - mv(im, ui), mv(re, ui) + mv(im, ur)


class LipschitzRefiner(nn.Module):
    r"""Residual refinement ``x -> x + R(x)`` with ``Lip(R) <= lipschitz``, certified.

    ``R(x) = g W_D s(... s(W_1 x + b_1) ...) + b_D`` with ``depth`` "same" convolutions
    (1 -> ``channels`` -> ... -> 1), the MaxMin activation ``s`` (1-Lipschitz) between them,
    each convolution divided by ``max(1, est_i)`` with ``est_i`` an estimate of its operator
    norm (power iteration per DFT frequency, one step per training forward, frozen in eval
    mode), and a gain ``g = lipschitz * sigmoid(theta)``. The certificate does not trust the
    estimates:

    ``Lip(x -> x + R(x)) <= 1 + g prod_i ||W_i|| / max(1, est_i)``

    with ``||W_i||`` bounded from above by :func:`~unrollsci.imaging.conv_operator_norm` (its FFT
    bound: exact for the circular convolution, an upper bound for the zero-padded one) in
    float64.

    Guarantee: ``||f(x_1) - f(x_2)|| <= lipschitz_bound() ||x_1 - x_2||`` for any weights
    (Euclidean norms, exact arithmetic). Starts close to the identity (the last convolution
    starts at a norm of about 0.01).

    Args:
        image_size: ``N`` (the norms are taken on ``N x N`` images).
        channels: hidden channels (even: MaxMin pairs them).
        depth: convolutions (>= 2).
        kernel_size: odd filter size.
        lipschitz: the largest gain ``g``.

    Shapes:
        ``forward(x)``: ``(batch, N, N)`` -> ``(batch, N, N)``.

    Example:
        >>> import torch
        >>> ref = LipschitzRefiner(16, channels=4, depth=3, lipschitz=2.0)
        >>> x = torch.rand(2, 16, 16)
        >>> ref(x).shape
        torch.Size([2, 16, 16])
        >>> 1.0 <= ref.lipschitz_bound() <= 3.0 + 1e-6
        True
    """

    def __init__(
        self,
        image_size: int,
        channels: int = 32,
        depth: int = 5,
        kernel_size: int = 3,
        lipschitz: float = 2.0,
    ) -> None:
        super().__init__()
        image_size, channels, depth, kernel_size = (
            check_count(name, v, lo)
            for name, v, lo in (
                ("image_size", image_size, 1),
                ("channels", channels, 2),
                ("depth", depth, 2),
                ("kernel_size", kernel_size, 1),
            )
        )
        if channels % 2 or kernel_size % 2 == 0:
            raise ValueError(
                f"Expected an even number of channels and an odd kernel_size (got {channels}, "
                f"{kernel_size})."
            )
        if isinstance(lipschitz, bool) or not isinstance(lipschitz, numbers.Real):
            raise ValueError(f"Expected 'lipschitz' to be a positive number (got {lipschitz!r}).")
        if not 0.0 < float(lipschitz) < math.inf:
            raise ValueError(f"Expected 'lipschitz' to be a positive number (got {lipschitz!r}).")
        self.image_size, self.channels, self.depth = int(image_size), int(channels), int(depth)
        self.kernel_size, self.lipschitz = int(kernel_size), float(lipschitz)
        gen = torch.Generator().manual_seed(0)
        sizes = [1] + [channels] * (depth - 1) + [1]
        k = kernel_size
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        n_freq = (image_size + k) * ((image_size + k) // 2 + 1)
        for i in range(depth):
            c_in, c_out = sizes[i], sizes[i + 1]
            w = torch.randn(c_out, c_in, k, k, generator=gen) / math.sqrt(c_in * k * k)
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.zeros(c_out)))
            u = torch.randn(n_freq, c_in, generator=gen, dtype=torch.float64)
            u = torch.stack((u / u.norm(dim=-1, keepdim=True), torch.zeros_like(u)), dim=-1)
            # the estimate's vector, complex stored as real pairs (so .to(dtype) keeps it)
            self.register_buffer(f"_u{i}", u.to(torch.get_default_dtype()))
        # g = lipschitz * sigmoid(theta) starts at 0.95 lipschitz; R starts small through
        # a last convolution of norm about 0.01 (norms below 1 are not scaled up)
        self.gain_logit = nn.Parameter(torch.tensor(3.0))
        with torch.no_grad():
            self.weights[-1].mul_(0.01)

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments."""
        return {
            "image_size": self.image_size,
            "channels": self.channels,
            "depth": self.depth,
            "kernel_size": self.kernel_size,
            "lipschitz": self.lipschitz,
        }

    def gain(self) -> torch.Tensor:
        """``g = lipschitz * sigmoid(theta)``."""
        return self.lipschitz * torch.sigmoid(self.gain_logit)

    def _norm_estimate(self, i: int) -> torch.Tensor:
        """Power-iteration estimate of ``||W_i||`` (differentiable in the weight)."""
        w = self.weights[i]
        re, im = _spectrum(w, self.image_size)  # (F, c_out, c_in)
        buf = getattr(self, f"_u{i}")
        ur, ui = buf[..., 0].to(w.dtype), buf[..., 1].to(w.dtype)
        if self.training:
            with torch.no_grad():
                vr, vi = _apply(re, im, ur, ui)
                # K^H v = (re^T - i im^T)(vr + i vi), scaled by its largest entry first so
                # that the squares below cannot overflow (huge weights): the same unit vector
                tr, ti = _apply(re.mT, -im.mT, vr, vi)
                top = torch.maximum(tr.abs(), ti.abs()).amax(-1, keepdim=True)
                top = top.clamp(min=torch.finfo(w.dtype).tiny)
                tr, ti = tr / top, ti / top
                scale = (tr**2 + ti**2).sum(-1, keepdim=True).sqrt().clamp(min=1e-30)
                nr, ni = tr / scale, ti / scale
                # a non-finite step (NaN or Inf weights) never reaches the buffer: it would
                # make every later output NaN, even after the weights are repaired (a select
                # on the device, as in the capped convolutions of UnrolledCT: no host sync)
                ok = torch.isfinite(nr).all() & torch.isfinite(ni).all()
                ur, ui = torch.where(ok, nr, ur), torch.where(ok, ni, ui)
                buf.copy_(torch.stack((ur, ui), dim=-1))
        vr, vi = _apply(re, im, ur.detach(), ui.detach())
        sigma = (vr**2 + vi**2).sum(-1).max().sqrt()
        return sigma.clamp(min=torch.finfo(w.dtype).tiny)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """``R(x)`` for ``x`` of shape ``(batch, N, N)``."""
        z = x[:, None]
        pad = self.kernel_size // 2
        for i in range(self.depth):
            w = self.weights[i] / self._norm_estimate(i).clamp(min=1.0)
            z = F.conv2d(z, w, self.biases[i], padding=pad)
            if i < self.depth - 1:
                z = maxmin(z)
        return self.gain() * z[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x + R(x)``."""
        if (
            not isinstance(x, torch.Tensor)
            or x.dim() != 3
            or x.shape[1:]
            != (
                self.image_size,
                self.image_size,
            )
        ):
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            n = self.image_size
            raise ValueError(f"Expected images of shape (batch, {n}, {n}) (got {got}).")
        check_batch("x", x)
        check_finite("x", x)
        check_model_dtype("images 'x'", x.dtype, self, data="x")
        return x + self.residual(x)

    @property
    def dtype(self) -> torch.dtype | None:
        """The dtype of the weights (inputs must match it)."""
        return model_dtype(self)

    @torch.no_grad()
    def lipschitz_bound(self) -> float:
        """Certified ``Lip(x -> x + R(x))``: ``1 + g prod_i ||W_i||_FFT / max(1, est_i)``.

        Raises:
            ValueError: a parameter holds NaN or Inf (named, with counts), or the bound
                is not a number (weights that overflow).
        """
        check_finite_tensors(self, ())
        prod = float(self.gain().double())
        was = self.training
        self.eval()
        for i in range(self.depth):
            est = float(self._norm_estimate(i).double())
            prod *= conv_operator_norm(self.weights[i], self.image_size) / max(1.0, est)
        self.train(was)
        if math.isnan(prod):
            raise ValueError(
                "Expected a finite Lipschitz bound of the refiner (got NaN: its weights "
                "overflow in the bound's products)."
            )
        return 1.0 + prod
