"""ADMM-Net section of ``unrollsci bench structured``: exact vs learned x-update solve."""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

import torch


# ----------------------------------------------------------------------- admm section
def _time(fn: Any, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def spikes(count: int, side: int, density: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(count, side * side, generator=g).abs() + 0.5
    return x * (torch.rand(count, side * side, generator=g) < density)


def _blur(side: int, cfg: dict[str, Any]) -> Any:
    """Gaussian blur on flattened ``side x side`` images (zero boundary).

    ``Convolution``'s adjoint runs ``conv_transpose2d``, measured here 10-15x slower than
    its forward ``conv2d`` on CPU for one channel; the subclass below computes the same
    adjoint as a ``conv2d`` with the flipped kernel on the input padded the other way round
    (checked against ``Convolution``'s adjoint at every call of this function), so that
    the matrix-free models are not timed on that slow path.
    """
    import torch.nn.functional as F  # noqa: N812

    from ..operators import Convolution, ReshapeOperator

    class _Blur(Convolution):
        def _rmv(self, y: torch.Tensor) -> torch.Tensor:
            (b0, a0), (b1, a1) = self._pads
            yp = F.pad(self._to_conv(y), [b1, a1, b0, a0])  # swapped (after, before)
            w = torch.flip(self._cast("weight", y), dims=(2, 3))
            return F.conv2d(yp, w).reshape(y.shape)

    n = side * side
    r = torch.arange(cfg["kernel"], dtype=torch.float32) - (cfg["kernel"] - 1) / 2
    h = torch.exp(-(r[:, None] ** 2 + r[None] ** 2) / (2 * cfg["blur_sigma"] ** 2))
    h = h / h.sum()
    conv = _Blur(h, (side, side))
    probe = torch.randn(2, side, side, dtype=torch.float64)
    ref = Convolution(h, (side, side)).adjoint(probe)
    if not torch.allclose(conv.adjoint(probe), ref, atol=1e-12):
        raise RuntimeError("the fast blur adjoint differs from Convolution's")
    return ReshapeOperator((side, side), (n,)) @ conv @ ReshapeOperator((n,), (side, side))


def _admm_size(side: int, cfg: dict[str, Any], log: Any) -> list[dict[str, Any]]:
    from ..unrolled import ADMMNet
    from .structured import nmse_db, train_model  # the group section's helpers

    n, k = side * side, cfg["K"]
    op = _blur(side, cfg)
    gen = torch.Generator().manual_seed(cfg["seed"])

    def data(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = spikes(count, side, cfg["density"], seed)
        with torch.no_grad():
            y = op(x)
        sig = y.norm(dim=1, keepdim=True) / math.sqrt(n)
        return x, y + sig * 10 ** (-cfg["snr"] / 20) * torch.randn(y.shape, generator=gen)

    xt, yt = data(cfg["n_train"], cfg["seed"] + 1)
    xv, yv = data(cfg["n_val"], cfg["seed"] + 2)
    xe, ye = data(cfg["n_test"], cfg["seed"] + 3)
    rows = []
    for label, opts in (
        ("exact", {"x_update": "exact"}),
        ("learned", {"x_update": "learned", "cg_steps": cfg["cg_steps"]}),
        ("cg", {"x_update": "cg", "cg_steps": cfg["cg_steps"]}),
    ):
        row: dict[str, Any] = {"n": n, "x-update": label}
        if label == "exact" and side > cfg["max_exact_side"]:
            row["note"] = "not run: the dense eigendecomposition is O(n^3) (see the setup column)"
            rows.append(row)
            continue
        t0 = time.perf_counter()
        model = ADMMNet(op, k, lam=cfg["lam"], dtype=torch.float32, **opts)
        row["setup (s)"] = time.perf_counter() - t0
        with torch.no_grad():
            row["NMSE untrained (dB)"] = nmse_db(model(ye), xe)
            row["forward (s)"] = _time(lambda: model(ye[: cfg["batch"]]), cfg["repeats"])  # noqa: B023
        info = train_model(
            model,
            xt,
            yt,
            xv,
            yv,
            steps=cfg["steps"],
            batch=cfg["batch"],
            lr=cfg["lr"],
            eval_every=cfg["eval_every"],
            seed=cfg["seed"],
        )
        with torch.no_grad():
            row["NMSE trained (dB)"] = nmse_db(model(ye), xe)
        row["train (s)"] = info["train_s"]
        log(f"  {row}")
        rows.append(row)
    return rows


def run_admm(cfg: dict[str, Any], log: Any) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for side in cfg["sides"]:
        rows += _admm_size(side, cfg, log)
    res: dict[str, Any] = {"config": cfg, "rows": rows}
    by = {(r["n"], r["x-update"]): r for r in rows}
    speed = {}
    for side in cfg["sides"]:
        n = side * side
        ex, le = by[(n, "exact")], by[(n, "learned")]
        if "forward (s)" in ex:
            speed[str(n)] = ex["forward (s)"] / le["forward (s)"]
    res["forward_speedup_learned_vs_exact"] = speed
    return res
