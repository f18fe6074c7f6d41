"""``unrollsci bench lista --floors``: what a saved model's error at its last layer is made of,
and the floors its structure allows.

Forward passes, least-squares solves and a lasso path (minutes at the benchmark's size; no
training). For each checkpoint, on the benchmark's test set:

* the split of its squared error between the true nonzeros it kept, the true nonzeros it
  set to zero and the entries it made nonzero outside the true support;
* least squares on the support the model returned (what a debiasing step would give);
* for the support-selection models (ALISTA, LISTA-CPSS), the **fixed point on the true
  support**: once the true support is passed unshrunk, every fixed point of ``x <- x +
  gamma W^T (y - A x)`` restricted to it solves ``W_S^T (y - A_S x_S) = 0``, i.e. ``x_S =
  (W_S^T A_S)^{-1} W_S^T y`` (an oblique projection; the model's last ``W``). With ``W``
  proportional to ``A`` this is least squares on the true support (the oracle); with any
  other ``W`` its noise is larger;
* for ALISTA (one fixed ``W``, ``K`` learned steps), the ``K``-step iteration on the true
  support from zero with the model's own steps and with steps tuned on the test vectors
  themselves (L-BFGS on their log): what ALISTA's steps could give if the support were
  known from the first layer;
* once per SNR, the lasso (scikit-learn's coordinate descent, an independent solver) on a
  grid of ``lam``, plain and debiased: the estimator that soft-threshold iterations (ISTA,
  AMP) converge to, with its ``lam`` chosen on the test set.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._lista_setup import make_problem, oracle_nmse_db, sample

__all__ = [
    "error_split",
    "floors_report",
    "lasso_path",
    "least_squares_on",
    "support_fixed_point",
    "support_steps_db",
    "tune_support_steps",
]

#: the lasso weights of the report (sklearn's ``alpha`` is ``lam / m``); the best at 40 dB
#: on the benchmark is inside the grid
LASSO_LAMS = (0.001, 0.002, 0.003, 0.005, 0.008, 0.012, 0.02, 0.03, 0.05)


def _db(err: float, ref: float) -> float:
    return 10.0 * math.log10(err / ref) if err > 0 else -math.inf


def error_split(xh: torch.Tensor, x: torch.Tensor) -> dict[str, float]:
    """The pooled NMSE (dB) of ``xh`` against ``x`` and its parts: the error on the true
    nonzeros that ``xh`` kept (``kept``), on those it set to zero (``missed``) and on the
    entries it made nonzero outside the true support (``false``), each relative to the same
    ``sum ||x||^2`` (the parts' linear values add up to the total); and per vector the mean
    number of missed and of false nonzeros."""
    xh, x = xh.double(), x.double()
    true, found = x != 0, xh != 0
    e = (xh - x).pow(2)
    ref = float(x.pow(2).sum())
    out = {"nmse_db": _db(float(e.sum()), ref)}
    for key, sel in (("kept", true & found), ("missed", true & ~found), ("false", ~true & found)):
        out[f"{key}_db"] = _db(float(e[sel].sum()), ref)
    out["missed per vector"] = float((true & ~found).sum(1).double().mean())
    out["false per vector"] = float((~true & found).sum(1).double().mean())
    return out


def least_squares_on(a: torch.Tensor, y: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Per vector, least squares on ``support`` (a boolean ``(batch, n)``), zero elsewhere
    (float64). A support with ``m`` or more entries gets the minimum-norm solution."""
    a64, y64 = a.double(), y.double()
    out = torch.zeros(support.shape, dtype=torch.float64)
    for i in range(support.shape[0]):
        s = support[i]
        if bool(s.any()):
            out[i, s] = torch.linalg.lstsq(a64[:, s], y64[i][:, None], driver="gelsd").solution[
                :, 0
            ]
    return out


def _padded_support(support: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per vector the indices of its support, padded to the largest with index ``n`` (a
    zero column appended to the matrices), and the mask of the real entries."""
    n = support.shape[1]
    k = max(int(support.sum(1).max()), 1)
    # stable sort puts each row's support first, in index order
    order = torch.sort((~support).to(torch.int8), dim=1, stable=True).indices[:, :k]
    real = torch.gather(support, 1, order)
    return torch.where(real, order, torch.full_like(order, n)), real


def _support_systems(
    w: torch.Tensor, a: torch.Tensor, y: torch.Tensor, support: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per vector on ``support``: ``W_S^T A_S``, ``W_S^T y``, the padded indices and the
    mask of real entries (padding rows and columns of the matrices are zero)."""
    idx, real = _padded_support(support)
    zero = torch.zeros(w.shape[0], 1, dtype=torch.float64)
    ws = torch.cat([w.double(), zero], 1)[:, idx].permute(1, 0, 2)  # (batch, m, k)
    as_ = torch.cat([a.double(), zero], 1)[:, idx].permute(1, 0, 2)
    mat = ws.transpose(1, 2) @ as_
    rhs = (ws.transpose(1, 2) @ y.double()[..., None])[..., 0]
    return mat, rhs, idx, real


def _scatter(vals: torch.Tensor, idx: torch.Tensor, real: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.zeros(idx.shape[0], n + 1, dtype=torch.float64)
    out.scatter_(1, idx, torch.where(real, vals, 0.0))
    return out[:, :n]


def support_fixed_point(
    w: torch.Tensor, a: torch.Tensor, y: torch.Tensor, support: torch.Tensor
) -> torch.Tensor:
    """Per vector, ``x_S = (W_S^T A_S)^{-1} W_S^T y`` on ``support``, zero elsewhere: the
    fixed point of ``x <- x + gamma W^T (y - A x)`` on that support for any step
    ``gamma != 0`` (float64; ``W``, ``A``: ``(m, n)``)."""
    mat, rhs, idx, real = _support_systems(w, a, y, support)
    # padding: identity rows and zero right-hand sides, so those entries solve to zero
    mat = mat + torch.diag_embed((~real).double())
    return _scatter(torch.linalg.solve(mat, rhs), idx, real, support.shape[1])


def _true_systems(
    w: torch.Tensor, a: torch.Tensor, y: torch.Tensor, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_support_systems` on the true support, with ``x_S`` (zero-padded; padding
    entries stay zero through the iteration)."""
    mat, rhs, idx, real = _support_systems(w, a, y, x != 0)
    xs = torch.gather(torch.cat([x.double(), x.new_zeros(x.shape[0], 1).double()], 1), 1, idx)
    return mat, rhs, torch.where(real, xs, 0.0)


def _steps_db(systems: tuple[torch.Tensor, torch.Tensor, torch.Tensor], gammas: Any) -> Any:
    mat, rhs, xs = systems
    z = torch.zeros_like(xs)
    for g in gammas:
        z = z + g * (rhs - (mat @ z[..., None])[..., 0])
    return 10 * torch.log10((z - xs).pow(2).sum() / xs.pow(2).sum())


def support_steps_db(
    w: torch.Tensor, a: torch.Tensor, y: torch.Tensor, x: torch.Tensor, gammas: Any
) -> float:
    """Pooled NMSE (dB) after ``len(gammas)`` steps ``x <- x + gamma_k W^T (y - A x)`` from
    zero, each vector restricted to its true support (no thresholds)."""
    with torch.no_grad():
        return float(_steps_db(_true_systems(w, a, y, x), torch.as_tensor(gammas).double()))


def tune_support_steps(
    w: torch.Tensor,
    a: torch.Tensor,
    y: torch.Tensor,
    x: torch.Tensor,
    starts: list[Any],
    *,
    rounds: int = 5,
) -> tuple[list[float], float]:
    """The steps of :func:`support_steps_db` that minimize its NMSE on these vectors
    (L-BFGS on the steps' logarithms from each start; the best result over the starts).
    Tuned on the vectors it is evaluated on: an optimistic figure for these steps."""
    systems = _true_systems(w, a, y, x)
    best: tuple[list[float], float] | None = None
    for start in starts:
        lg = torch.log(torch.as_tensor(start, dtype=torch.float64)).clone().requires_grad_(True)
        opt = torch.optim.LBFGS(
            [lg],
            lr=1,
            max_iter=500,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-12,
            tolerance_change=1e-14,
        )

        def closure(lg: torch.Tensor = lg, opt: Any = opt) -> torch.Tensor:
            opt.zero_grad()
            loss = _steps_db(systems, lg.exp())
            loss.backward()
            return loss

        for _ in range(rounds):
            opt.step(closure)
        with torch.no_grad():
            val = float(_steps_db(systems, lg.exp()))
        if math.isfinite(val) and (best is None or val < best[1]):
            best = ([float(v) for v in lg.detach().exp()], val)
    if best is None:
        raise RuntimeError("No start gave a finite NMSE.")
    return best


def lasso_path(
    a: torch.Tensor, y: torch.Tensor, x: torch.Tensor, lams: tuple[float, ...] = LASSO_LAMS
) -> list[dict[str, float]]:
    """The lasso ``min 1/2 ||y - A x||^2 + lam ||x||_1`` per vector for each ``lam``
    (scikit-learn's coordinate descent to ``tol = 1e-12``), its pooled NMSE (dB), the NMSE
    of least squares on its support (debiased; vectors whose lasso support has ``m`` or
    more entries keep the lasso solution) and its mean number of nonzeros."""
    from sklearn.linear_model import Lasso

    a64 = a.double().numpy()
    y64, x64 = y.double().numpy(), x.double()
    m = a64.shape[0]
    ref = float(x64.pow(2).sum())
    rows = []
    for lam in lams:
        fit = Lasso(alpha=lam / m, fit_intercept=False, tol=1e-12, max_iter=200_000)
        coef = torch.from_numpy(np.atleast_2d(fit.fit(a64, y64.T).coef_))
        small = (coef != 0).sum(1) < m
        deb = coef.clone()
        deb[small] = least_squares_on(a, y[small], (coef != 0)[small])
        rows.append(
            {
                "lam": lam,
                "lasso_db": _db(float((coef - x64).pow(2).sum()), ref),
                "debiased_db": _db(float((deb - x64).pow(2).sum()), ref),
                "nonzeros per vector": float((coef != 0).sum(1).double().mean()),
            }
        )
    return rows


def _last_weight(model: Any) -> torch.Tensor | None:
    """The ``W`` of the model's last layer (ALISTA's fixed one; LISTA-CP(SS)'s last), or
    None for models without one."""
    w = getattr(model, "W", None)
    if isinstance(w, torch.Tensor):
        return w.detach()
    if isinstance(w, torch.nn.ParameterList):
        return w[-1].detach()
    return None


def floors_report(
    paths: list[str], cfg: dict, out: str, name: str, lams: tuple[float, ...] = LASSO_LAMS
) -> int:
    """Writes ``out/name.json`` and ``out/name.md``: one row per checkpoint (module
    docstring), then the lasso path of each SNR among them."""
    from ._common import markdown_table, write_results, write_text
    from ._lista_tails import load_saved_model

    a = make_problem(cfg["m"], cfg["n"], cfg["seed"])
    rows: list[dict[str, Any]] = []
    sets: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for path in paths:
        model, snr_text, snr = load_saved_model(path, cfg)
        if snr_text not in sets:
            g = torch.Generator().manual_seed(cfg["seed"] + 1)
            sets[snr_text] = sample(a, cfg["n_test"], cfg["p"], snr, g)
        y, x = sets[snr_text]
        with torch.no_grad():
            xh = model(y)
        ref = float(x.double().pow(2).sum())
        row: dict[str, Any] = {"model": Path(path).stem, **error_split(xh, x)}
        row["oracle_db"] = oracle_nmse_db(a, y, x) if math.isfinite(snr) else -math.inf
        ls = least_squares_on(a, y, xh != 0)
        row["ls on model support_db"] = _db(float((ls - x.double()).pow(2).sum()), ref)
        w = _last_weight(model)
        if w is not None and getattr(model, "support_selection", False):
            fp = support_fixed_point(w, a, y, x != 0)
            row["fixed point on true support_db"] = _db(float((fp - x.double()).pow(2).sum()), ref)
        if type(model).__name__ == "ALISTA":
            own = model._pos(model.gamma, y).detach().double().reshape(-1)
            row["true support, own steps_db"] = support_steps_db(w, a, y, x, own)
            k = own.numel()
            starts = [own, torch.ones(k, dtype=torch.float64)]
            _, row["true support, tuned steps_db"] = tune_support_steps(w, a, y, x, starts)
        rows.append(row)
        print(f"{row['model']}: {row['nmse_db']:.2f} dB", flush=True)
    lasso = {key: lasso_path(a, *sets[key], lams=lams) for key in sorted(sets) if key != "inf"}
    table = markdown_table(rows)
    parts = [
        f"# {name}: the parts of each model's error at its last layer, and floors "
        f"({cfg['n_test']} test vectors; dB of the pooled NMSE)\n\n{table}\n",
    ]
    for key, lrows in lasso.items():
        parts.append(f"\n## The lasso at SNR {key} dB (scikit-learn, per vector)\n\n")
        parts.append(markdown_table(lrows) + "\n")
    print("".join(parts))
    write_results(name, {"config": cfg, "rows": rows, "lasso": lasso}, out)
    write_text(Path(out) / f"{name}.md", "".join(parts))
    return 0
