"""Learning curves of `bench ct` runs: validation PSNR against training steps and CPU seconds.

Usage: python benchmarks/ct_curves.py RUN.json [RUN.json ...] --out benchmarks/results
       [--name ct_curves]

Reads the ``val_history`` (steps, wall s, CPU s, validation MSE) that ``bench ct`` stores per
network, and writes ``NAME.md`` (validation PSNR = 10 log10(1 / mean MSE) at fixed steps) and
``NAME.png`` (both curves). A figure needs matplotlib; the table does not.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from unrollsci._io import run_command
from unrollsci.bench._common import markdown_table, save_figure, write_text

STEPS = (250, 500, 1000, 1500, 2000, 2500, 3000)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--name", default="ct_curves")
    args = p.parse_args(argv)
    curves, rows = {}, []
    for path in args.runs:
        data = json.loads(path.read_text())
        for net, r in data["results"].items():
            if "val_history" not in r:
                continue
            label = f"{path.stem}: {net}, {data['config']['channels']} channels"
            pts = [(s, c, 10 * math.log10(1 / v)) for s, _, c, v in r["val_history"] if v]
            curves[label] = pts
            at = {s: (c, q) for s, c, q in pts}
            row = {"run": label, "CPU s / step": r["train_cpu_seconds"] / r["train_steps"]}
            for s in STEPS:
                row[f"{s} steps"] = f"{at[s][1]:.2f}" if s in at else ""
            row["test - TV (dB)"] = r["psnr_mean"] - data["results"]["tv"]["psnr_mean"]
            rows.append(row)
    if not curves:
        p.error("no val_history in the given files")
    note = "\n\nValidation PSNR (dB) = 10 log10(1 / mean validation MSE), at the steps given.\n"
    write_text(args.out / f"{args.name}.md", markdown_table(rows) + note)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return 0
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for label, pts in curves.items():
        axes[0].semilogx([s for s, _, _ in pts], [q for _, _, q in pts], label=label)
        axes[1].semilogx([c for _, c, _ in pts], [q for _, _, q in pts], label=label)
    axes[0].set_xlabel("training steps")
    axes[1].set_xlabel("training CPU seconds")
    for ax in axes:
        ax.set_ylabel("validation PSNR (dB)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, args.out / f"{args.name}.png", dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
