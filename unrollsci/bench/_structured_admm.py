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
    """Gaussian blur on flattened ``side x side`` images (zero boundary)."""
    from ..operators import Convolution, ReshapeOperator

    n = side * side
    r = torch.arange(cfg["kernel"], dtype=torch.float32) - (cfg["kernel"] - 1) / 2
    h = torch.exp(-(r[:, None] ** 2 + r[None] ** 2) / (2 * cfg["blur_sigma"] ** 2))
    h = h / h.sum()
    conv = Convolution(h, (side, side))
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
