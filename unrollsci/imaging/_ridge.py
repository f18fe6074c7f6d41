"""A CT network that is stable by construction: unrolled gradient steps on a learned convex
ridge regularizer, with a certificate that exploits the gradient-step structure."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from .._validation import check_count, check_model_dtype, model_dtype
from ..operators._radon import Radon
from ._certify import check_finite_tensors, linear_norm
from ._fbp import FILTERS, checked_sinograms, fbp
from ._refine import LipschitzRefiner
from ._unrolled import check_support_mask

__all__ = ["ConvexRidgeCT", "ridge_filter_norm2", "ridge_step_increment"]

# norm of the FBP start per geometry and filter (a power iteration; models share it)
_FBP_NORMS: dict[tuple[Any, ...], float] = {}


def ridge_filter_norm2(weight: torch.Tensor, image_size: int) -> torch.Tensor:
    """Upper bound on ``||W||^2`` for the "same" convolution ``W`` from 1 to ``C`` channels.

    ``W^T W`` of the circular convolution on an ``M_h x M_w`` grid (``M_h = N + k_h - 1``,
    ``M_w = N + k_w - 1`` or more: each axis sized from its own kernel side) is diagonal in
    the DFT with entries ``sum_c |K_c(w)|^2``; the zero-padded convolution on ``N x N``
    images is a compression of it (embed, convolve, crop), so its squared norm is at most
    the largest entry (Sedghi, Gupta & Long 2019). Differentiable in ``weight``.

    Args:
        weight: ``(C, 1, k_h, k_w)``, or ``(L, C, 1, k_h, k_w)`` for ``L`` banks at once
            (usually ``k_h = k_w = k``).
        image_size: ``N``.

    Returns:
        The bound in the weight's dtype: a 0-dim tensor, or ``(L,)`` for stacked banks.

    Example:
        >>> import torch
        >>> w = torch.zeros(1, 1, 3, 3)
        >>> w[0, 0, 1, 1], w[0, 0, 1, 2] = 1.0, -1.0  # a finite difference
        >>> # its exact squared norm on 8 x 8 images is 3.865 (dense matrix); 4 on large ones
        >>> 3.865 < float(ridge_filter_norm2(w, 8)) < 4.0
        True
    """
    if not isinstance(weight, torch.Tensor) or weight.dim() not in (4, 5):
        got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"Expected a filter bank of shape ([L,] C, 1, k, k) (got {got}).")
    m = (image_size + weight.shape[-2], image_size + weight.shape[-1])
    spec = torch.fft.rfft2(weight[..., 0, :, :], s=m)
    return (spec.real**2 + spec.imag**2).sum(-3).flatten(-2).max(-1).values


def ridge_step_increment(step: float, beta: float, gamma: float) -> float:
    """Growth of the squared Lipschitz bound over one step (see :class:`ConvexRidgeCT`).

    ``t (2 - gamma) / (2 (2 - gamma - beta))`` for ``beta + gamma < 2``; ``inf`` otherwise.
    """
    if not (beta >= 0 and gamma >= 0 and beta + gamma < 2):
        return math.inf
    return step * (2.0 - gamma) / (2.0 * (2.0 - gamma - beta))


class ConvexRidgeCT(nn.Module):
    r"""Unrolled gradient descent on a learned convex ridge regularizer, certified by design.

    Layer ``k`` is one projected gradient step on
    ``1/2 ||A x - y||^2 + R_k(x)`` with a convex ridge regularizer
    ``R_k(x) = sum_c sum_p psi_{k,c}((W_k x + b_k)_{c,p})`` (Goujon, Neumayer, Bohra &
    Unser 2023, but untied across layers as in variational networks, Kobler et al. 2017):

    ``x_{k+1} = P(x_k - (beta_k / a^2) A^T (A x_k - y) - (gamma_k / ||W_k||^2) W_k^T
    phi_k(W_k x_k + b_k))``, ``x_0 = P(FBP(y))``,

    where ``W_k`` is a bank of ``filters`` convolutions ``k x k`` (1 to ``C`` channels),
    ``phi_{k,c} = psi'_{k,c} = sum_m w_m clip(., lo_m, hi_m)`` is monotone with slopes in
    [0, 1] (``w >= 0``, ``sum w <= 1``), ``a >= ||A||`` (power iteration inflated by
    ``margin``), ``||W_k||^2`` is the FFT bound :func:`ridge_filter_norm2`, ``beta_k,
    gamma_k >= 0`` with ``beta_k + gamma_k <= 2 - slack`` (a softmax), and ``P`` is the
    projection onto the support mask and the box ``box`` (both non-expansive).

    **Certificate.** Let ``t = beta / a^2``, ``G(x) = (gamma / (t ||W||^2)) W^T phi(W x +
    b)``: ``G`` is co-coercive with constant ``Lam = gamma / t``, i.e.
    ``<G(u) - G(v), u - v> >= ||G(u) - G(v)||^2 / Lam`` (componentwise
    ``(phi(p) - phi(q)) (p - q) >= (phi(p) - phi(q))^2`` for slopes in [0, 1], then
    ``||W^T z|| <= ||W|| ||z||``). For two sinograms with ``e = y_1 - y_2``, states
    ``d = x_1 - x_2``, ``r = A d - e``, ``g = G(x_1) - G(x_2)``:

    ``||d - t (A^T r + g)||^2 = ||d||^2 - 2t ||r||^2 - 2t <e, r> - 2t <d, g>
    + t^2 ||A^T r + g||^2``,

    and Young's inequality ``||u + v||^2 <= (1 + eta) ||u||^2 + (1 + 1/eta) ||v||^2`` with
    ``eta = gamma / (2 - gamma)``, ``||A^T r|| <= a ||r||`` and co-coercivity make the
    ``<d, g>`` terms non-positive and leave ``- 2 t c ||r||^2 - 2 t <e, r> <= t ||e||^2 / (2c)``
    with ``c = 1 - beta / (2 - gamma) > 0``. The projection does not increase distances, so

    ``||d_{k+1}||^2 <= ||d_k||^2 + t_k (2 - gamma_k) / (2 (2 - gamma_k - beta_k)) ||e||^2``

    and ``||x_K(y_1) - x_K(y_2)|| <= sqrt(L_0^2 + sum_k increment_k) ||y_1 - y_2||`` with
    ``L_0`` the norm of the FBP start (:meth:`lipschitz_bound`). The bound grows like
    ``sqrt(sum_k t_k)``, as the exact norm of Landweber's iteration does, instead of the
    ``sum_k t_k ||A||`` of the triangle inequality. Each step is also non-expansive in ``x``
    (an averaged operator: ``beta + gamma < 2``), whatever the weights.

    **Refinement** (``refine``): ``x_K`` is followed by ``P(x_K + R(x_K))`` with a
    :class:`LipschitzRefiner` (a CNN whose Lipschitz constant is certified through the FFT
    bounds of its convolutions); the map ``x -> P(x + R(x))`` is ``(1 + Lip(R))``-Lipschitz,
    so the certificate is multiplied by the refiner's :meth:`LipschitzRefiner.lipschitz_bound`.

    Guarantee: for any weights, ``||f(y_1) - f(y_2)|| <= lipschitz_bound() ||y_1 - y_2||``
    (Euclidean norms, sinogram to image, in exact arithmetic given the power-iteration norms
    within ``margin``), and the output is zero outside the support and inside ``box``.

    Args:
        radon: the projector (fixed geometry).
        n_layers: unrolled steps ``K``.
        filters: ridge filters per layer ``C``.
        kernel_size: odd filter size.
        n_clips: clip functions summed in each profile ``phi``.
        mask: default support ``(N, N)``; the reconstruction disk if None. ``forward`` may
            override it per call.
        filter: FBP filter of the start (one of :data:`FILTERS`).
        box: ``(lo, hi)`` bounds of the image values with ``lo <= 0 <= hi`` (the output is
            0 outside the support), or None.
        slack: ``2 - max(beta + gamma)`` (in (0, 2)); smaller allows longer steps and a
            larger bound.
        margin: relative inflation of the power-iteration norms of ``A`` and of the FBP.
        refine: None (no refinement), or the keyword arguments of a
            :class:`LipschitzRefiner` applied after the last step (``channels``, ``depth``,
            ``kernel_size``, ``lipschitz``; the image size is the projector's).

    Shapes:
        ``forward(y)``: ``(batch, n_angles, n_det)`` -> ``(batch, N, N)``; with a channel axis
        ``(batch, 1, ...)`` in and out.

    Example:
        >>> import torch
        >>> from unrollsci.imaging import Radon, empirical_lipschitz
        >>> model = ConvexRidgeCT(Radon(16, 10), n_layers=3, filters=4)
        >>> y = torch.rand(2, 10, 16)
        >>> model(y).shape
        torch.Size([2, 16, 16])
        >>> bound = model.lipschitz_bound()
        >>> 0 < empirical_lipschitz(model, y, steps=10) <= bound < 1
        True
    """

    def __init__(
        self,
        radon: Radon,
        n_layers: int = 20,
        filters: int = 16,
        kernel_size: int = 5,
        n_clips: int = 3,
        mask: torch.Tensor | None = None,
        filter: str = "hann",
        box: tuple[float, float] | None = (0.0, 1.0),
        slack: float = 0.2,
        margin: float = 1e-2,
        refine: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(radon, Radon):
            raise TypeError(
                f"Expected 'radon' to be a Radon operator (got {type(radon).__name__})."
            )
        n_layers, filters, kernel_size, n_clips = (
            check_count(name, v)
            for name, v in (
                ("n_layers", n_layers),
                ("filters", filters),
                ("kernel_size", kernel_size),
                ("n_clips", n_clips),
            )
        )
        if kernel_size % 2 == 0:
            raise ValueError(f"Expected an odd kernel_size (got {kernel_size}).")
        if filter not in FILTERS:
            raise ValueError(f"Expected filter in {tuple(FILTERS)} (got {filter!r}).")
        if box is not None:
            ok = isinstance(box, (tuple, list)) and len(box) == 2
            if not ok or not float(box[0]) <= 0.0 <= float(box[1]) or box[0] == box[1]:
                # 0 in the box: the output is 0 outside the support and inside the box
                raise ValueError(
                    f"Expected box = (lo, hi) with lo <= 0 <= hi and lo < hi, or None (got "
                    f"{box!r})."
                )
            box = (float(box[0]), float(box[1]))
        if not isinstance(slack, (int, float)) or not 0.0 < slack < 2.0:
            raise ValueError(f"Expected slack in (0, 2) (got {slack!r}).")
        if not isinstance(margin, (int, float)) or not 0.0 <= margin < math.inf:
            raise ValueError(f"Expected a finite margin >= 0 (got {margin!r}).")
        self.radon, self.filter, self.box = radon, filter, box
        self.slack, self.margin = float(slack), float(margin)
        self.n_layers, self.filters, self.kernel_size, self.n_clips = (
            n_layers,
            filters,
            kernel_size,
            n_clips,
        )
        n = radon.image_size
        if mask is None:
            mask = radon.support()
        self.register_buffer("mask", self._check_mask(mask, None).clone())
        a = radon.norm() * (1.0 + margin)
        self.register_buffer("radon_norm", torch.tensor(a, dtype=torch.float64))
        self.register_buffer("init_norm", torch.tensor(self._fbp_norm(), dtype=torch.float64))
        gen = torch.Generator().manual_seed(0)
        k, c, m = kernel_size, filters, n_clips
        w = torch.randn(n_layers, c, 1, k, k, generator=gen)
        w = w - w.mean(dim=(-2, -1), keepdim=True)  # start with derivative-like filters
        self.weight = nn.Parameter(w / math.sqrt(k * k))
        self.bias = nn.Parameter(torch.zeros(n_layers, c))
        # clip m of filter c: centre and log half-width (in units of the filter response)
        span = torch.linspace(-1.0, 1.0, m) if m > 1 else torch.zeros(1)
        self.clip_centre = nn.Parameter(0.05 * span.repeat(n_layers, c, 1))
        self.clip_logwidth = nn.Parameter(torch.full((n_layers, c, m), math.log(0.02)))
        self.clip_logits = nn.Parameter(torch.zeros(n_layers, c, m + 1))
        # (data, regularizer, slack) shares of 2 - slack: start at beta ~ 1, gamma ~ 0.5
        self.step_logits = nn.Parameter(torch.tensor([[1.0, 0.3, 0.0]]).repeat(n_layers, 1))
        self.n = n
        if refine is not None and not isinstance(refine, dict):
            raise TypeError(
                f"Expected 'refine' to be None or a dict of LipschitzRefiner arguments (got "
                f"{type(refine).__name__})."
            )
        self.refine = None if refine is None else dict(refine)
        self.refiner = None if refine is None else LipschitzRefiner(n, **refine)

    # ------------------------------------------------------------------ helpers
    def _fbp_norm(self, recompute: bool = False) -> float:
        r = self.radon
        key = (r.image_size, r.n_detectors, r.circle, tuple(r.angles.tolist()), self.filter)
        key = (*key, self.margin)
        if recompute or key not in _FBP_NORMS:
            with torch.enable_grad():  # the adjoint comes from autograd
                _FBP_NORMS[key] = self._fbp_norm_inner()
        return _FBP_NORMS[key]

    def _fbp_norm_inner(self) -> float:
        return linear_norm(
            lambda v: fbp(v, self.radon, filter=self.filter),
            self.radon.out_shape,
            dtype=torch.float64,
            device=None,
        ) * (1.0 + self.margin)

    def _check_mask(self, mask: Any, batch: int | None) -> torch.Tensor:
        return check_support_mask(mask, self.radon.image_size, batch)

    @property
    def dtype(self) -> torch.dtype | None:
        """The model's dtype (that of its parameters); inputs must have it."""
        return model_dtype(self)

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments (for :func:`unrollsci.train.save_checkpoint`)."""
        return {
            "radon": self.radon,
            "n_layers": self.n_layers,
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "n_clips": self.n_clips,
            "mask": self.mask.cpu(),
            "filter": self.filter,
            "box": self.box,
            "slack": self.slack,
            "margin": self.margin,
            "refine": self.refine,
        }

    def check_finite_weights(self) -> None:
        """Raise ``ValueError`` naming every parameter (the refiner's included) and norm
        buffer (``radon_norm``, ``init_norm``) that holds NaN or Inf entries: the
        certificate and the outputs of such a model are not finite."""
        check_finite_tensors(self, ("radon_norm", "init_norm"))

    def shares(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(beta_k, gamma_k)`` per layer: ``beta + gamma <= 2 - slack``."""
        p = torch.softmax(self.step_logits, dim=-1) * (2.0 - self.slack)
        return p[:, 0], p[:, 1]

    def coefficients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-layer ``(beta_k / a^2, gamma_k / ||W_k||^2)``: the factors the forward uses."""
        beta, gamma = self.shares()
        a2 = self.radon_norm.to(beta.dtype) ** 2
        norms = ridge_filter_norm2(self.weight, self.n)
        return beta / a2, gamma / norms.clamp(min=torch.finfo(norms.dtype).tiny)

    def profile(self, k: int, z: torch.Tensor) -> torch.Tensor:
        """``phi_k`` applied channelwise to ``z`` of shape ``(batch, C, N, N)``."""
        w = torch.softmax(self.clip_logits[k], dim=-1)[:, :-1]  # (C, m), sum < 1
        half = torch.exp(self.clip_logwidth[k])
        lo, hi = self.clip_centre[k] - half, self.clip_centre[k] + half
        # clip(z, lo, hi) - lo = relu(z - lo) - relu(z - hi): cheap forward and backward
        out = None
        for j in range(self.n_clips):
            sl = (slice(None), j, None, None)
            term = w[sl] * (F.relu(z - lo[sl]) - F.relu(z - hi[sl]))
            out = term if out is None else out + term
        return out

    def _project(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        if self.box is not None:
            x = x.clamp(self.box[0], self.box[1])
        return torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))

    def _layer(
        self, k: int, x: torch.Tensor, y: torch.Tensor, m: torch.Tensor, t: Any, s: Any
    ) -> torch.Tensor:
        g = self.radon.rmv(self.radon.mv(x) - y)
        w = self.weight[k]
        z = F.conv2d(x[:, None], w, self.bias[k], padding=w.shape[-1] // 2)
        reg = F.conv_transpose2d(self.profile(k, z), w, padding=w.shape[-1] // 2)[:, 0]
        return self._project(x - t[k] * g - s[k] * reg, m)

    def step(
        self, k: int, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Layer ``k`` applied to states ``x`` ``(batch, N, N)`` with sinograms ``y``.

        Non-expansive in ``x`` for any weights (an averaged operator followed by a
        projection). Inputs are not validated (this is the inner loop of ``forward``).
        """
        t, s = self.coefficients()
        m = self.mask.to(x.device) if mask is None else mask
        return self._layer(k, x, y, m, t, s)

    # ------------------------------------------------------------------ forward
    def forward(self, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruct images from sinograms ``y`` (see the class docstring for shapes)."""
        r = self.radon
        sino, channel = checked_sinograms("ConvexRidgeCT", y, r)
        check_model_dtype("sinograms 'y'", sino.dtype, self, data="y")
        if sino.device != self.weight.device:
            raise ValueError(
                f"Expected sinograms 'y' on the model's device {self.weight.device} (got "
                f"{sino.device}); move one of them, e.g. model.to(y.device)."
            )
        m = self.mask if mask is None else self._check_mask(mask, sino.shape[0])
        m = m.to(sino.device)
        t, s = self.coefficients()
        x = self._project(fbp(sino, r, filter=self.filter), m)
        for k in range(self.n_layers):
            x = self._layer(k, x, sino, m, t, s)
        if self.refiner is not None:
            x = self.refined(x, m)
        return x.unsqueeze(1) if channel else x

    def refined(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``P(x + R(x))``: the refinement (if any) applied to ridge reconstructions ``x``
        ``(batch, N, N)``; ``x`` itself without one. Inputs are not validated."""
        if self.refiner is None:
            return x
        m = self.mask.to(x.device) if mask is None else mask
        return self._project(self.refiner.forward(x), m)

    # ------------------------------------------------------------------ certificate
    @torch.no_grad()
    def lipschitz_bound(self, *, details: bool = False, recompute: bool = False) -> Any:
        """Certified Lipschitz constant, sinogram to image (Euclidean norms).

        ``sqrt(L_0^2 + sum_k t_k (2 - gamma_k) / (2 (2 - gamma_k - beta_k)))`` with the
        factors the forward uses, ``beta_k = t_k a^2`` and ``gamma_k`` recomputed from
        ``||W_k||^2`` in float64 (derivation in the class docstring), times the refiner's
        :meth:`LipschitzRefiner.lipschitz_bound` when there is one.

        Args:
            details: return a :class:`~unrollsci.imaging.LipschitzCertificate` with the
                per-layer terms instead of a float.
            recompute: recompute the power-iteration norms of ``A`` and of the FBP start.

        Returns:
            The bound (a float; ``inf`` if a step violates ``beta + gamma < 2``).

        Raises:
            ValueError: a parameter or norm holds NaN or Inf (:meth:`check_finite_weights`).
        """
        from ._lipschitz import LipschitzCertificate

        self.check_finite_weights()  # else inf for a NaN weight, finite for a NaN bias
        a, l0 = float(self.radon_norm), float(self.init_norm)
        if recompute:
            a = max(a, self.radon.norm(recompute=True) * (1.0 + self.margin))
            l0 = max(l0, self._fbp_norm(recompute=True))
        t, s = self.coefficients()
        total, layers = l0**2, []
        for k in range(self.n_layers):
            tk = float(t[k])
            beta = tk * a * a
            gamma = float(s[k]) * float(ridge_filter_norm2(self.weight[k].double(), self.n))
            inc = ridge_step_increment(tk, beta, gamma)
            total += inc
            layers.append({"step": tk, "beta": beta, "gamma": gamma, "bound": math.sqrt(total)})
        bound = math.sqrt(total)
        if self.refiner is not None:
            lip_r = self.refiner.lipschitz_bound()
            layers.append({"refiner": lip_r, "bound": bound * lip_r})
            bound *= lip_r
        cert = LipschitzCertificate(bound=bound, init=l0, radon_norm=a, layers=layers)
        return cert if details else bound
