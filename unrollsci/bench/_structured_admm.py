"""ADMM-Net section of ``unrollsci bench structured``: exact vs learned x-update solve, its
report, and the earlier results an ``--admm-sides`` rerun keeps."""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from ._common import BenchInputError, markdown_table, read_json_input


# ----------------------------------------------------------------------- admm section
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


def _data(op: Any, side: int, cfg: dict[str, Any], count: int, seed: int) -> tuple[Any, Any]:
    """``count`` spike images and their blurred measurements at ``cfg['snr']`` dB."""
    n = side * side
    x = spikes(count, side, cfg["density"], seed)
    with torch.no_grad():
        y = op(x)
    sig = y.norm(dim=1, keepdim=True) / math.sqrt(n)
    noise = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 100))
    return x, y + sig * 10 ** (-cfg["snr"] / 20) * noise


def pick_rho(cfg: dict[str, Any], log: Any) -> dict[str, Any]:
    """The penalty of classical ``K``-iteration ADMM (= the untrained exact ADMM-Net) with
    the best validation NMSE, on the smallest size; every model starts from it."""
    from ..unrolled import ADMMNet
    from .structured import nmse_db

    side = min(cfg["sides"])
    op = _blur(side, cfg)
    xv, yv = _data(op, side, cfg, cfg["n_val"], cfg["seed"] + 2)
    scores = {}
    for rho in cfg["rho_grid"]:
        model = ADMMNet(op, cfg["K"], lam=cfg["lam"], rho=rho, dtype=torch.float32)
        with torch.no_grad():
            scores[rho] = nmse_db(model(yv), xv)
    best = min(scores, key=scores.get)
    log(f"  rho grid (validation NMSE dB, n={side * side}): {scores} -> {best}")
    return {"rho": best, "validation_nmse_db": {str(k): v for k, v in scores.items()}}


def _lasso_db(op: Any, y: torch.Tensor, x: torch.Tensor, cfg: dict[str, Any]) -> float:
    """NMSE of the lasso solution itself (FISTA with restart, ``lasso_iters`` iterations):
    what the classical iterations approach."""
    import warnings

    from .. import ConvergenceWarning, solvers
    from .structured import nmse_db

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sol = solvers.fista(op, y.double(), cfg["lam"], max_iter=cfg["lasso_iters"], tol=1e-8)
    return nmse_db(sol.x, x.double())


def _admm_size(side: int, cfg: dict[str, Any], rho: float, log: Any) -> list[dict[str, Any]]:
    from ..unrolled import ADMMNet
    from .structured import nmse_db, train_model  # the group section's helpers

    n, k = side * side, cfg["K"]
    op = _blur(side, cfg)
    xt, yt = _data(op, side, cfg, cfg["n_train"], cfg["seed"] + 1)
    xv, yv = _data(op, side, cfg, cfg["n_val"], cfg["seed"] + 2)
    xe, ye = _data(op, side, cfg, cfg["n_test"], cfg["seed"] + 3)
    lasso = {"n": n, "x-update": "lasso (FISTA, converged)"}
    if cfg["lasso_iters"]:
        lasso["NMSE untrained (dB)"] = _lasso_db(op, ye, xe, cfg)
    else:
        lasso["note"] = "not run"
    rows: dict[str, dict[str, Any]] = {}
    models: dict[str, Any] = {}
    for label, opts in (
        ("exact", {"x_update": "exact"}),
        ("learned", {"x_update": "learned", "cg_steps": cfg["cg_steps"]}),
        ("cg", {"x_update": "cg", "cg_steps": cfg["cg_steps"]}),
    ):
        rows[label] = {"n": n, "x-update": label}
        if label == "exact" and side > cfg["max_exact_side"]:
            rows[label]["note"] = "not run: the dense eigendecomposition is O(n^3)"
            continue
        t0 = time.perf_counter()
        models[label] = ADMMNet(op, k, lam=cfg["lam"], rho=rho, dtype=torch.float32, **opts)
        rows[label]["setup (s)"] = time.perf_counter() - t0
        log(f"  n={n} {label}: setup {rows[label]['setup (s)']:.1f} s")
    # forward passes timed interleaved (round robin over the models), medians
    times: dict[str, list[float]] = {label: [] for label in models}
    yb = ye[: cfg["batch"]]
    with torch.no_grad():
        for label, model in models.items():
            rows[label]["NMSE untrained (dB)"] = nmse_db(model(ye), xe)
        for _ in range(cfg["repeats"]):
            for label, model in models.items():
                t = time.perf_counter()
                model(yb)
                times[label].append(time.perf_counter() - t)
    for label, model in models.items():
        rows[label]["forward (s)"] = statistics.median(times[label])
        if cfg["steps"] <= 0:  # (the command line refuses < 0)
            rows[label]["note"] = f"not trained ({cfg['steps']} steps)"
            log(f"  {rows[label]}")
            continue
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
            rows[label]["NMSE trained (dB)"] = nmse_db(model(ye), xe)
        rows[label]["train (s)"] = info["train_s"]
        log(f"  {rows[label]}")
    return [lasso, *rows.values()]


def run_admm(cfg: dict[str, Any], log: Any, save: Any = None) -> dict[str, Any]:
    """All sizes; ``save(partial_result)`` after each size (a long run keeps what it did)."""
    import os

    rho = cfg["rho_fixed"] if "rho_fixed" in cfg else pick_rho(cfg, log)
    rows: list[dict[str, Any]] = []
    res: dict[str, Any] = {"config": cfg, "rho": rho, "rows": rows}
    speed: dict[str, float] = {}
    res["forward_speedup_learned_vs_exact"] = speed
    for side in cfg["sides"]:
        new = _admm_size(side, cfg, rho["rho"], log)
        rows += new
        by = {r["x-update"]: r for r in new}
        if "forward (s)" in by["exact"]:
            speed[str(side * side)] = by["exact"]["forward (s)"] / by["learned"]["forward (s)"]
        res["load_average"] = list(os.getloadavg())
        res["sizes_done"] = [r["n"] for r in rows if r["x-update"] == "exact"]
        if save is not None:
            save(res)
    return res


def previous_results(path: Path) -> dict[str, Any]:
    """The results file of an earlier run of the admm section, checked to hold what
    ``--admm-sides`` keeps of it (``rows`` with ``n``, ``rho``); a corrupt or other file
    raises :class:`~unrollsci.bench._common.BenchInputError` naming it."""
    prev = read_json_input(path, "previous results file")
    rows = prev.get("rows")
    ok = isinstance(rows, list) and all(isinstance(r, dict) and "n" in r for r in rows)
    if not ok or "rho" not in prev:
        raise BenchInputError(
            f"previous results file {str(path)!r}: expected the results of 'bench structured "
            "--only admm' (a JSON object with 'rows', each with 'n', and 'rho'); move it away "
            "or rerun without --admm-sides"
        )
    return prev


def admm_report(data: dict[str, Any], cfgs: dict[str, Any]) -> str:
    cfg = cfgs["admm"]
    return (
        markdown_table(data["rows"])
        + (
            f"\n\nK = {cfg['K']} layers, rho = {data['rho']['rho']} (validation grid "
            f"{data['rho']['validation_nmse_db']}); forward: one pass on a batch of "
            f"{cfg['batch']}, "
            f"median of {cfg['repeats']}, models timed round robin; forward speed-up, learned vs "
            f"exact, by n: {data['forward_speedup_learned_vs_exact']} (setup not included)\n"
        )
        + (
            f"\nRows of n = {[s * s for s in cfg['sides']]} from a rerun (`--admm-sides "
            f"{' '.join(map(str, cfg['sides']))} --admm-steps {cfg['steps']} --admm-lasso-iters "
            f"{cfg['lasso_iters']}`); the other rows, and rho, from the earlier run "
            "(its config under config.previous_rows_from in the JSON).\n"
            if "previous_rows_from" in cfg
            else ""
        )
    )
