"""A physics-based unrolled CT network (learned gradient or primal-dual) with a hard support
constraint."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from .._validation import (
    as_bool_mask,
    check_batch,
    check_count,
    check_finite,
    check_model_dtype,
    check_tensor,
    model_dtype,
)
from ..operators._radon import Radon
from ..prox import project_support
from ._certify import (
    certified_divisor,
    check_finite_tensors,
    cnn_cap_for_target,
    conv_operator_norm,
    init_norm,
)
from ._fbp import FILTERS, fbp

__all__ = ["UnrolledCT"]

_INITS = ("fbp", "zero", "adjoint")
_PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}


def check_support_mask(mask: Any, n: int, batch: int | None) -> torch.Tensor:
    """A support mask ``(n, n)`` or ``(batch, n, n)`` (bool, or 0/1 floats) as a bool tensor;
    ``ValueError`` naming the expected shape otherwise (``batch=None``: any batch)."""
    ok = (
        isinstance(mask, torch.Tensor) and mask.dim() in (2, 3) and tuple(mask.shape[-2:]) == (n, n)
    )
    if ok and mask.dim() == 3 and batch is not None and mask.shape[0] not in (1, batch):
        ok = False
    if not ok:
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"Expected 'mask' of shape ({n}, {n}) or (batch, {n}, {n}) (got {got}).")
    return as_bool_mask(mask)


class _Conv(nn.Module):
    """A conv layer whose operator norm can be capped (spectral normalization).

    With ``cap`` set, the weight used is ``W / max(1, sigma / cap)``. In training,
    ``sigma`` estimates the norm of the convolution *operator* on ``size x size``
    images by power iteration (one step per forward, persistent vector, as
    ``torch.nn.utils.spectral_norm`` does for matrices). In evaluation mode ``sigma`` is
    the FFT upper bound of that norm (:func:`conv_operator_norm`, refreshed by
    :meth:`refresh_sigma_` when the model switches to eval), and the weight used is
    ``W / d`` with the divisor ``d >= max(1, sigma / cap)`` rounded up until the FFT bound
    of ``W / d`` as computed (in the weights' dtype) is ``<= cap``, so the evaluated layer
    provably has operator norm ``<= cap`` and the certificate meets its target exactly.
    """

    def __init__(
        self, c_in: int, c_out: int, k: int, size: int | tuple[int, int], cap: float | None
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, padding=k // 2)
        # channels-last weights let oneDNN pick faster convolution kernels on CPU (see
        # docs/ct.md); the values are the same
        w = self.conv.weight
        w.data = w.data.contiguous(memory_format=torch.channels_last)
        hw = (size, size) if isinstance(size, int) else tuple(size)
        # the FFT bound for the longest side bounds the norm on any smaller grid
        self.cap, self.size = cap, max(hw)
        if cap is not None:
            u = torch.randn(1, c_in, *hw, generator=torch.Generator().manual_seed(c_in))
            self.register_buffer("u", u / u.norm())
            self.register_buffer("sigma", torch.ones(()))

    def weight(self) -> torch.Tensor:
        w = self.conv.weight
        if self.cap is None:
            return w
        if self.training:
            with torch.no_grad():
                v = F.conv2d(self.u, w, padding=w.shape[-1] // 2)
                u = F.conv_transpose2d(v, w, padding=w.shape[-1] // 2)
                u = u / u.norm().clamp(min=1e-30)
                # a non-finite step (NaN, Inf or overflowing weights) never reaches the
                # buffer, as in the refiner: it would keep every later training output NaN
                # after the weights are repaired (a select on the device: no host sync)
                self.u.copy_(torch.where(torch.isfinite(u).all(), u, self.u))
        if not self.training:
            # the certified scale of the weights as they are now: eval() set it, but weights
            # changed since (an EMA copy, load_state_dict into an eval-mode model) would run
            # uncapped with the old scale (refresh_sigma_ compares contents, recomputes on
            # a change)
            if not self.refresh_sigma_():
                raise ValueError(
                    "Expected a capped convolution with a finite operator-norm bound (got a "
                    "non-finite bound: its weights overflow or are not finite)."
                )
            return w / self._divisor
        # sigma ~ ||W u|| with the (detached) converged u; differentiable in W. A snapshot
        # of u: the graph saves it for W's gradient, and the next call (a tied network's
        # next layer, a second forward before backward) updates the buffer in place
        sigma = F.conv2d(self.u.clone(), w, padding=w.shape[-1] // 2).norm()
        self.sigma.copy_(sigma.detach())
        return w / torch.clamp(sigma / self.cap, min=1.0)

    @torch.inference_mode(False)  # kept for later calls: never an inference tensor
    @torch.no_grad()
    def refresh_sigma_(self) -> bool:
        """Set ``sigma`` to the FFT upper bound of the raw weight's operator norm, and the
        eval-mode divisor of the weight (:func:`certified_divisor`).

        Returns False if that bound is not finite (a NaN or Inf weight: the layer's
        outputs are then not finite either), True otherwise or without a cap."""
        if self.cap is None:
            return True
        # Keyed on content, not on w._version: an edit through w.data (EMA, weight
        # averaging) does not bump the version, and a training forward rewrites sigma.
        w, done = self.conv.weight.detach(), getattr(self, "_refreshed", None)
        if getattr(self, "_divisor", None) is None:  # a module pickled by an older version
            done = None
        if done is not None and all(
            a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
            for a, b in zip(done, (w, self.sigma), strict=True)
        ):
            return True
        bound = conv_operator_norm(w, self.size)
        self.sigma.fill_(bound)
        self._divisor = certified_divisor(w, bound, self.cap, self.size)
        self._refreshed = (w.clone(), self.sigma.clone())
        return math.isfinite(bound)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        w = self.weight()
        return F.conv2d(z, w, self.conv.bias, padding=w.shape[-1] // 2)


class _Block(nn.Module):
    """Small CNN ``[x, grad, h_1..h_m] -> [update, h'_1..h'_m]``: convs with LeakyReLU between."""

    def __init__(
        self,
        channels: int,
        depth: int,
        k: int,
        size: int | tuple[int, int],
        cap: float | None,
        slope: float,
        memory: int = 0,
    ) -> None:
        super().__init__()
        chans = [2 + memory] + [channels] * (depth - 1) + [1 + memory]
        per = None if cap is None else cap ** (1.0 / depth)
        self.convs = nn.ModuleList(
            _Conv(chans[i], chans[i + 1], k, size, per) for i in range(depth)
        )
        self.slope = slope
        nn.init.zeros_(self.convs[-1].conv.weight)  # start as plain gradient descent
        nn.init.zeros_(self.convs[-1].conv.bias)

    def lipschitz(self) -> float:
        """Upper bound on the CNN's Lipschitz constant: the product of the FFT bounds of
        its convolutions on their grid (LeakyReLU is 1-Lipschitz)."""
        lip = 1.0
        for conv in self.convs:
            lip *= conv_operator_norm(conv.weight(), conv.size)
        return lip

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            z = conv(z)
            if i < len(self.convs) - 1:
                z = F.leaky_relu(z, self.slope)
        return z


class UnrolledCT(nn.Module):
    """Learned-gradient (or primal-dual) CT reconstruction with a support projection per layer.

    Layer ``k`` is one projected gradient step on ``||A x - y / a||^2`` (``A`` the
    projector scaled to unit norm) plus a learned CNN correction:
    ``x_{k+1} = P_M(x_k - s_k g_k + CNN_k([x_k, g_k]))``, ``g_k = A^T (A x_k - y / a)``,
    with steps ``s_k`` in (0, 2), starting from ``P_M(FBP(y))``. ``memory`` adds channels
    carried between layers (learned gradient, Adler & Oktem 2017); ``dual=True`` adds a
    sinogram CNN that corrects the residual (learned primal-dual, Adler & Oktem 2018).
    The equations and the derivation of the certificate are in docs/ct.md.

    Guarantee: the output is exactly zero outside the support mask ``M`` whatever the
    weights, the untrained network is projected gradient descent (each CNN's last layer
    starts at zero), and with ``lipschitz_target=T`` the certified bound
    :func:`~unrollsci.imaging.lipschitz_bound` is ``<= T`` after any training.

    Args:
        radon: the projector (its geometry is fixed; move the model with ``.to``).
        n_layers: unrolled iterations.
        channels, depth, kernel_size: CNN width, number of convolutions, kernel size.
        tied: share one CNN and one step size across layers.
        mask: default support ``(N, N)`` (boolean); the reconstruction disk if None.
            ``forward`` may override it per call (e.g. per-patient boundaries).
        init: ``"fbp"``, ``"adjoint"`` (``A^T y / a^2``) or ``"zero"``.
        filter: FBP filter for ``init="fbp"``, one of :data:`~unrollsci.imaging.FILTERS`.
        cnn_lipschitz: if set, cap each CNN's Lipschitz constant at this value by
            spectral normalization of every convolution (``cap^(1/depth)`` each;
            exact in eval mode, see ``_Conv``).
        lipschitz_target: if set (instead of ``cnn_lipschitz``), choose the CNN cap so
            that :func:`~unrollsci.imaging.lipschitz_bound` stays below this target
            for any step sizes (the certificate is enforced by construction).
        negative_slope: LeakyReLU slope (in [0, 1], keeps it 1-Lipschitz).
        memory: number of memory channels carried from layer to layer (0: none).
        dual: add a dual CNN per layer on the sinogram (learned primal-dual); it
            carries ``memory`` channels of its own. Covered by the certificate.
        precision: ``"float32"`` (default: the CNNs compute in the input dtype) or
            ``"bfloat16"``: the CNNs run under ``torch.autocast`` to bfloat16, their
            outputs cast back; the projector, steps and projection stay in the input
            dtype. The certificate is for exact arithmetic; bfloat16 adds rounding of
            relative size ``2^-8`` to the CNN outputs. May be changed after training
            (``model.precision = "bfloat16"``).

    Shapes:
        ``forward(y)``: ``(batch, n_angles, n_det)`` -> ``(batch, N, N)``; with a
        channel axis ``(batch, 1, ...)`` in and out.

    Example:
        >>> import torch
        >>> from unrollsci.operators import Radon
        >>> model = UnrolledCT(Radon(32, 20), n_layers=2, channels=4)
        >>> x = model(torch.rand(3, 20, 32))
        >>> x.shape
        torch.Size([3, 32, 32])
        >>> bool((x[:, ~model.mask] == 0).all())  # exactly zero outside the support
        True
    """

    def __init__(
        self,
        radon: Radon,
        n_layers: int = 6,
        channels: int = 16,
        depth: int = 3,
        kernel_size: int = 3,
        tied: bool = False,
        mask: torch.Tensor | None = None,
        init: str = "fbp",
        filter: str = "ram-lak",
        cnn_lipschitz: float | None = None,
        negative_slope: float = 0.2,
        lipschitz_target: float | None = None,
        memory: int = 0,
        dual: bool = False,
        precision: str = "float32",
    ) -> None:
        super().__init__()
        if not isinstance(radon, Radon):
            raise TypeError(
                f"Expected 'radon' to be a Radon operator (got {type(radon).__name__})."
            )
        args = (n_layers, channels, depth, kernel_size, memory)
        names, lows = ("n_layers", "channels", "depth", "kernel_size", "memory"), (1, 1, 2, 1, 0)
        n_layers, channels, depth, kernel_size, memory = map(check_count, names, args, lows)
        if not isinstance(tied, bool):
            raise TypeError(f"Expected 'tied' to be a bool (got {type(tied).__name__}).")
        for name, v in (("cnn_lipschitz", cnn_lipschitz), ("lipschitz_target", lipschitz_target)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise TypeError(f"Expected '{name}' to be None or a number (got {v!r}).")
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ValueError(f"Expected '{name}' to be None or a finite number > 0 (got {v}).")
        if kernel_size % 2 == 0:
            raise ValueError(f"Expected an odd kernel_size (got {kernel_size}).")
        if precision not in _PRECISIONS:
            raise ValueError(f"Expected precision in {tuple(_PRECISIONS)} (got {precision!r}).")
        if not isinstance(dual, bool):
            raise TypeError(f"Expected 'dual' to be a bool (got {type(dual).__name__}).")
        if init not in _INITS:
            raise ValueError(f"Expected init in {_INITS} (got {init!r}).")
        if filter not in FILTERS:
            raise ValueError(f"Expected filter in {tuple(FILTERS)} (got {filter!r}).")
        if not 0.0 <= negative_slope <= 1.0:
            raise ValueError(f"Expected negative_slope in [0, 1] (got {negative_slope}).")
        self.radon = radon
        n = radon.image_size
        if mask is None:
            mask = radon.support()
        if isinstance(mask, torch.Tensor) and mask.dim() != 2:
            raise ValueError(
                f"Expected the default 'mask' of shape ({n}, {n}) (got {tuple(mask.shape)}); "
                "a per-image mask goes to forward(y, mask=...)."
            )
        self.register_buffer("mask", self._check_mask(mask, None).clone())
        self.register_buffer("radon_norm", torch.tensor(radon.norm(), dtype=torch.float64))
        if lipschitz_target is not None:
            if cnn_lipschitz is not None:
                raise ValueError("Give either cnn_lipschitz or lipschitz_target, not both.")
            a, margin = radon.norm(), 1e-2
            n_a = 1.0 + margin  # ||radon|| / a with the certificate's margin
            l0 = init_norm(radon, init, filter, a, n_a, margin)
            cnn_lipschitz = cnn_cap_for_target(
                float(lipschitz_target), l0, n_layers, n_a, a, dual=dual
            )
        self.config = dict(
            n_layers=n_layers,
            channels=channels,
            depth=depth,
            kernel_size=kernel_size,
            tied=tied,
            init=init,
            filter=filter,
            cnn_lipschitz=None if lipschitz_target is not None else cnn_lipschitz,
            negative_slope=negative_slope,
            lipschitz_target=lipschitz_target,
            memory=memory,
            dual=dual,
            precision=precision,
        )
        self.memory, self.dual = memory, dual
        self.cnn_lipschitz = cnn_lipschitz
        self.num_layers = self.active_layers = int(n_layers)
        self.tied, self.init, self.filter = bool(tied), init, filter
        n_blocks = 1 if tied else n_layers
        self.blocks = nn.ModuleList(
            _Block(channels, depth, kernel_size, n, cnn_lipschitz, negative_slope, memory)
            for _ in range(n_blocks)
        )
        sino = radon.out_shape
        self.dual_blocks = nn.ModuleList(
            _Block(channels, depth, kernel_size, sino, cnn_lipschitz, negative_slope, memory)
            for _ in range(n_blocks if dual else 0)
        )
        # s = 2 sigmoid(r) in (0, 2); r = 0 gives s = 1 (the 1/L step of the scaled problem).
        self.step_logits = nn.Parameter(torch.zeros(n_blocks))

    # ---------------------------------------------------------------- helpers
    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def,override]
        # radon_norm is no weight: a cast must not round it (lipschitz_target's cap is for the
        # float64 norm the certificate divides by); it moves device only, as operator buffers
        norm = self._buffers["radon_norm"]

        def keep(t: torch.Tensor) -> torch.Tensor:
            return fn(t) if t is not norm else t.to(device=fn(t.new_empty(0)).device)

        return super()._apply(keep, recurse)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # states saved after model.float() by older versions hold radon_norm rounded: load
        # the projector's float64 norm where the saved value is its rounding (any dtype)
        key, exact = prefix + "radon_norm", torch.tensor(self.radon.norm(), dtype=torch.float64)
        saved = state_dict.get(key)
        if isinstance(saved, torch.Tensor) and saved.is_floating_point() and saved.numel() == 1:
            if saved.dtype != torch.float64 and float(saved) == float(exact.to(saved.dtype)):
                state_dict[key] = exact
        self.radon_norm = self.radon_norm.to(torch.float64)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def train(self, mode: bool = True) -> UnrolledCT:
        """Switch mode; entering eval mode fixes each capped conv at its certified scale."""
        super().train(mode)
        if not mode:
            # the bounds are host floats already: checking them costs no extra sync
            bad = [
                f"{name}.conv.weight"
                for name, conv in self.named_modules()
                if isinstance(conv, _Conv) and not conv.refresh_sigma_()
            ]
            if bad:
                self.check_finite_weights()  # names the parameters with their counts
                raise ValueError(
                    f"Expected capped convolutions with a finite operator-norm bound (got a "
                    f"non-finite bound for {', '.join(bad)}: the weights overflow)."
                )
        return self

    def check_finite_weights(self) -> None:
        """Raise ``ValueError`` naming every parameter (and ``radon_norm``) that holds NaN or
        Inf entries: the certificate and the outputs of such a model are not finite."""
        check_finite_tensors(self, ("radon_norm",))

    def get_config(self) -> dict[str, Any]:
        """Constructor arguments (for :func:`unrollsci.train.save_checkpoint`)."""
        return {"radon": self.radon, "mask": self.mask.cpu(), **self.config}

    def _check_mask(self, mask: Any, batch: int | None) -> torch.Tensor:
        return check_support_mask(mask, self.radon.image_size, batch)

    def _check_input(self, y: torch.Tensor) -> None:
        """Raise if ``y`` and the CNN weights differ in dtype or device (conv2d would
        fail deep inside the first layer with a message about bias types)."""
        w = self.blocks[0].convs[0].conv.weight
        check_model_dtype("sinograms 'y'", y.dtype, self, data="y")
        if y.device != w.device:
            raise ValueError(
                f"Expected sinograms 'y' on the model's device {w.device} (got {y.device}); "
                f"move one of them, e.g. y.to('{w.device}') or model.to(y.device)."
            )

    @property
    def dtype(self) -> torch.dtype | None:
        """The model's dtype: that of its learned parameters (``model.double()`` changes
        it). Inputs must have it (:class:`~unrollsci.DtypeMismatchError` otherwise)."""
        return model_dtype(self)

    @property
    def precision(self) -> str:
        """Arithmetic of the CNNs: ``"float32"`` (the input dtype) or ``"bfloat16"``."""
        return self.config["precision"]

    @precision.setter
    def precision(self, value: str) -> None:
        if value not in _PRECISIONS:
            raise ValueError(f"Expected precision in {tuple(_PRECISIONS)} (got {value!r}).")
        self.config["precision"] = value

    def _cnn(self, block: _Block, z: torch.Tensor) -> torch.Tensor:
        low = _PRECISIONS[self.precision]
        if low is None:
            return block(z)
        with torch.autocast(z.device.type, dtype=low):
            out = block(z)
        return out.to(z.dtype)

    def step_sizes(self) -> torch.Tensor:
        """Per-layer steps ``s_k`` in (0, 2)."""
        return 2.0 * torch.sigmoid(self.step_logits)

    def layer(self, k: int) -> tuple[_Block, torch.Tensor]:
        """CNN and step of layer ``k``."""
        i = 0 if self.tied else k
        return self.blocks[i], self.step_sizes()[i]

    def dual_layer(self, k: int) -> _Block | None:
        """Dual (sinogram) CNN of layer ``k``; None without ``dual``."""
        if not self.dual:
            return None
        return self.dual_blocks[0 if self.tied else k]

    def initial(self, y: torch.Tensor) -> torch.Tensor:
        """``x_0`` before projection (a linear function of ``y``)."""
        a = self.radon_norm.to(y.dtype)
        if self.init == "fbp":
            return fbp(y, self.radon, filter=self.filter)
        if self.init == "adjoint":
            return self.radon.rmv(y) / a**2
        return torch.zeros(y.shape[0], *self.radon.in_shape, dtype=y.dtype, device=y.device)

    # ---------------------------------------------------------------- forward
    def forward(self, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruct images from sinograms ``y`` (see class docstring for shapes)."""
        check_tensor("y", y, ndim=(3, 4))
        channel = y.dim() == 4
        sino = y[:, 0] if channel and y.shape[1] == 1 else y
        if sino.dim() != 3 or tuple(sino.shape[1:]) != self.radon.out_shape:
            r = self.radon
            raise ValueError(
                f"Expected sinograms of shape (batch, {r.n_angles}, {r.n_detectors}) for "
                f"{r.image_size}x{r.image_size} images and {r.n_angles} angles (got shape "
                f"{tuple(y.shape)})."
            )
        check_batch("y", sino)
        check_finite("y", sino)
        self._check_input(sino)
        m = self.mask if mask is None else self._check_mask(mask, sino.shape[0])
        m = m.to(sino.device)
        a = self.radon_norm.to(sino.dtype)
        ys = sino / a
        x = project_support(self.initial(sino), m)
        h = q = None
        if self.memory:
            h = x.new_zeros(x.shape[0], self.memory, *x.shape[1:])
            if self.dual:
                q = ys.new_zeros(ys.shape[0], self.memory, *ys.shape[1:])
        for k in range(self.active_layers):
            block, s = self.layer(k)
            r = self.radon.mv(x) / a - ys
            dual = self.dual_layer(k)
            if dual is not None:
                if q is None:
                    r = r + self._cnn(dual, torch.stack([r, ys], 1))[:, 0]
                else:
                    out = self._cnn(dual, torch.cat([r[:, None], ys[:, None], q], 1))
                    r, q = r + out[:, 0], out[:, 1:]
            g = self.radon.rmv(r) / a
            if h is None:
                update = self._cnn(block, torch.stack([x, g], 1))[:, 0]
            else:
                out = self._cnn(block, torch.cat([x[:, None], g[:, None], h], 1))
                update, h = out[:, 0], out[:, 1:]
            x = project_support(x - s.to(x.dtype) * g + update, m)
        return x.unsqueeze(1) if channel else x
