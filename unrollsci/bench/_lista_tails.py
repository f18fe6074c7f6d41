"""``unrollsci bench lista --tails``: where a saved model's error at its last layer comes from.

Forward passes only (seconds): the share of the error from the worst test vectors, the
spread of the metric between test sets, and the NMSE by the vectors' number of nonzeros.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ._lista_setup import make_problem, sample

# the bins of ||x||_0 (lo, hi]: x has Binomial(500, 0.1) nonzeros, mean 50, sd 6.7
NONZERO_EDGES = (0, 40, 45, 50, 55, 60, 65, 500)


def _db(v: Any) -> float:
    return 10.0 * math.log10(max(float(v), 1e-300))


def tail_stats(
    model: Any, a: torch.Tensor, cfg: dict, snr: float, cap: float = 0.13, n_sets: int = 5
) -> dict[str, Any]:
    """How much of a model's pooled NMSE at its last layer comes from a few test vectors.

    On the benchmark's test set (``cfg["n_test"]`` vectors, seed ``cfg["seed"] + 1``): the
    NMSE (dB), the share of the summed squared error from the 10 worst vectors, the NMSE
    without them, the NMSE of the vectors with at most ``cap * n`` nonzeros (the
    support-selection cap) and how many have more, and the median per-vector NMSE (dB).
    Then the NMSE on ``n_sets`` further independent sets of the same size (seeds
    ``cfg["seed"] + 101 ...``): the spread of the metric itself between test sets.
    """

    def errors(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y, x = sample(a, cfg["n_test"], cfg["p"], snr, torch.Generator().manual_seed(seed))
        with torch.no_grad():
            xh = model(y)
        return (xh - x).double().pow(2).sum(1), x.double().pow(2).sum(1), (x != 0).sum(1)

    err, ref, nnz = errors(cfg["seed"] + 1)
    order = err.argsort(descending=True)
    worst = order[:10]
    rest = order[10:]
    small = nnz <= int(math.floor(cap * a.shape[1]))
    others = [
        _db(e.sum() / r.sum()) for e, r, _ in (errors(cfg["seed"] + 101 + i) for i in range(n_sets))
    ]
    return {
        "nmse_db": _db(err.sum() / ref.sum()),
        "worst10_error_share": float(err[worst].sum() / err.sum()),
        "nmse_db_without_worst10": _db(err[rest].sum() / ref.sum()),
        "worst10_nonzeros": nnz[worst].tolist(),
        "n_over_cap": int((~small).sum()),
        "nmse_db_nonzeros_within_cap": _db(err[small].sum() / ref[small].sum()),
        "median_vector_nmse_db": _db((err / ref).median()),
        "other_sets_nmse_db": others,
    }


def nonzero_bins(
    model: Any,
    a: torch.Tensor,
    cfg: dict,
    snr: float,
    layers: tuple[int, ...] = (8, 12, 16),
    edges: tuple[int, ...] = NONZERO_EDGES,
) -> list[dict[str, Any]]:
    """The test NMSE of a model's layers, pooled over the vectors in each bin of ``||x||_0``.

    On the benchmark's test set (seed ``cfg["seed"] + 1``): one row per layer of
    ``layers`` (those beyond the model's depth are skipped), with the NMSE (dB) of the
    vectors with ``lo < ||x||_0 <= hi`` for consecutive ``edges`` (NaN for an empty bin),
    the bins' sizes, and the share of the layer's summed squared error from the vectors
    above the second-to-last edge. Shows whether a model's error at depth is a property
    of the sparsest vectors or of the densest few.
    """
    y, x = sample(a, cfg["n_test"], cfg["p"], snr, torch.Generator().manual_seed(cfg["seed"] + 1))
    with torch.no_grad():
        _, xs = model(y, return_all=True)
    nnz = (x != 0).sum(1)
    ref = x.double().pow(2).sum(1)
    rows = []
    for k in layers:
        if k > len(xs):
            continue
        err = (xs[k - 1] - x).double().pow(2).sum(1)
        row: dict[str, Any] = {"layer": k}
        for lo, hi in zip(edges, edges[1:], strict=False):
            sel = (nnz > lo) & (nnz <= hi)
            key = f"nnz {lo + 1}-{hi}"
            row[key] = _db(err[sel].sum() / ref[sel].sum()) if bool(sel.any()) else math.nan
        row["bin sizes"] = [
            int(((nnz > lo) & (nnz <= hi)).sum()) for lo, hi in zip(edges, edges[1:], strict=False)
        ]
        row[f"error share of nnz > {edges[-2]}"] = float(err[nnz > edges[-2]].sum() / err.sum())
        rows.append(row)
    return rows


def load_saved_model(path: str, cfg: dict) -> tuple[Any, str, float]:
    """A model saved by ``bench lista --staged`` (``<model>_snr<snr>[_quick].pt``), checked to
    be of the benchmark's problem, with its SNR as named in the file and as a number."""
    from ..train import load_checkpoint

    model = load_checkpoint(path)
    if getattr(model, "n", None) != cfg["n"] or getattr(model, "m", None) != cfg["m"]:
        raise ValueError(f"{path}: not a model of the {cfg['m']} x {cfg['n']} problem")
    snr_text = Path(path).stem.rsplit("_snr", 1)[-1].removesuffix("_quick")
    return model, snr_text, math.inf if snr_text == "inf" else float(snr_text)


def tails_report(paths: list[str], cfg: dict, out: str, name: str) -> int:
    """Where the error of saved models comes from (:func:`tail_stats`, :func:`nonzero_bins`).

    Writes ``out/name.json`` and ``out/name.md``: one row per checkpoint, then per
    checkpoint its NMSE by number of nonzeros at layers ``K/2``, ``3K/4`` and ``K``.
    """
    from ._common import markdown_table, write_results, write_text

    a = make_problem(cfg["m"], cfg["n"], cfg["seed"])
    rows, by_nnz = [], {}
    for path in paths:
        model, snr_text, snr = load_saved_model(path, cfg)
        stats = tail_stats(model, a, cfg, snr)
        others = stats.pop("other_sets_nmse_db")
        rows.append(
            {
                "model": Path(path).stem,
                **stats,
                "5 other sets: min": min(others),
                "max": max(others),
            }
        )
        k = int(model.num_layers)  # layers K/2, 3K/4 and K: 8, 12, 16 for the benchmark
        layers = tuple(sorted({max(1, k // 2), max(1, 3 * k // 4), k}))
        by_nnz[Path(path).stem] = nonzero_bins(model, a, cfg, snr, layers=layers)
    table = markdown_table(rows)
    print(table)
    parts = [
        f"# {name}: where the NMSE at the last layer comes from ({cfg['n_test']} test "
        f"vectors; the support-selection cap is 13 % of n)\n\n{table}\n",
        "\n## NMSE (dB) by the test vectors' number of nonzeros\n",
    ]
    for stem, brows in by_nnz.items():
        parts.append(f"\n{stem}\n\n{markdown_table(brows)}\n")
    write_results(name, {"config": cfg, "rows": rows, "by_nonzeros": by_nnz}, out)
    write_text(Path(out) / f"{name}.md", "".join(parts))
    return 0
