"""``unrollsci bench lista --merge``: the results of partial runs (e.g. one model per
process) in one file (split from ``lista.py``).

Each part is read and checked before anything is merged: a part that is not a results
file of ``bench lista`` (corrupt, truncated, hand-edited, another benchmark's) is refused
with one line naming it (:class:`~unrollsci.bench._common.BenchInputError`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._common import BenchInputError, read_json_input

__all__ = ["merge_parts", "read_parts"]


def read_parts(paths: list[str]) -> list[dict[str, Any]]:
    """The part files, each checked to hold ``config`` (with ``K``) and ``by_snr`` (each SNR
    with ``nmse_db`` and ``train_seconds`` tables)."""
    parts = []
    for path in paths:
        part = read_json_input(path, "--merge part")
        cfg, by_snr = part.get("config"), part.get("by_snr")
        ok = isinstance(cfg, dict) and "K" in cfg and isinstance(by_snr, dict)
        ok = ok and all(
            isinstance(res, dict)
            and isinstance(res.get("nmse_db"), dict)
            and isinstance(res.get("train_seconds"), dict)
            for res in by_snr.values()
        )
        if not ok:
            raise BenchInputError(
                f"--merge part {path!r}: expected a results file of 'bench lista' (a JSON "
                "object with 'config' holding 'K', and 'by_snr' holding 'nmse_db' and "
                "'train_seconds' per SNR)"
            )
        parts.append(part)
    return parts


def merge_parts(
    paths: list[str], parts: list[dict[str, Any]], classical: tuple[str, ...]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The merged results (``by_snr``, ``merged_from``, ``config``) and config of the parts
    read by :func:`read_parts` from ``paths``; the ``classical`` curves come first."""
    merged: dict[str, Any] = {"by_snr": {}, "merged_from": []}
    cfg: dict[str, Any] = {}
    for path, part in zip(paths, parts, strict=True):
        merged["merged_from"].append(
            {
                "file": Path(path).name,
                "machine": part.get("machine"),
                "models": part["config"].get("models"),
                "config": part["config"],  # each part's own budgets and settings
            }
        )
        cfg = cfg or dict(part["config"])
        for key, res in part["by_snr"].items():
            tgt = merged["by_snr"].setdefault(
                key, {"nmse_db": {}, "train_seconds": {}, "cpu_seconds": {}}
            )
            for field in (
                "nmse_db",
                "train_seconds",
                "cpu_seconds",
                "val_curve_db",
                "monotone",
                "load_average",
            ):
                if field in res:
                    tgt.setdefault(field, {}).update(res[field])
            if res.get("oracle_db") is not None:
                tgt["oracle_db"] = res["oracle_db"]
            tgt.setdefault("oracle_db", res.get("oracle_db"))
    cfg["models"] = sorted({m for p in merged["merged_from"] for m in (p["models"] or [])})
    cfg["note"] = (
        "the first part's settings; each model's own run is in merged_from[i].config (parts "
        "may differ: KKT lam/step, budgets, SNRs)"
    )
    merged["config"] = cfg
    for res in merged["by_snr"].values():  # classical curves first, then learned
        res["nmse_db"] = {
            **{c: res["nmse_db"][c] for c in classical if c in res["nmse_db"]},
            **{k: v for k, v in res["nmse_db"].items() if k not in classical},
        }
    return merged, cfg
