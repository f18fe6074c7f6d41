"""Self-ensemble of a trained CT network over the symmetries of the scan geometry.

Loads the network that ``benchmarks/ct.py`` saved (``ct_unrolled.pt`` in its ``--out``
folder), rebuilds the same 100 held-out test phantoms (same seeds), and scores, in one
process: TV (the weight from the main run's validation), the network alone, and
``unrollsci.imaging.self_ensemble`` with 2, 4 and 8 symmetries (each sinogram mapped
exactly to the sinogram of the flipped/transposed object, reconstructed, mapped back,
averaged). Times per image are measured here, in the same run, so the speed ratios
against TV are like for like. Writes ``ct_ensemble.json`` and prints a table.

Usage: python benchmarks/ct_ensemble.py CHECKPOINT [--main-json ct.json] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from unrollsci._argtypes import positive_int_arg
from unrollsci._io import run_command
from unrollsci.bench._common import Timer, markdown_table, write_results
from unrollsci.bench.ct import SEEDS, _tv, make_data, scores
from unrollsci.imaging import Radon, UnrolledCT, self_ensemble
from unrollsci.train import load_checkpoint


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("checkpoint")
    p.add_argument("--main-json", default="benchmarks/results/ct.json")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--sizes", type=positive_int_arg, nargs="+", default=[1, 2, 4, 8])
    p.add_argument(
        "--precisions", nargs="+", default=["float32", "bfloat16"], help="CNN arithmetic"
    )
    p.add_argument("--threads", type=positive_int_arg, default=2)
    p.add_argument(
        "--repeats", type=positive_int_arg, default=3, help="timing repeats (the best is kept)"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    main_run = json.loads(Path(args.main_json).read_text())
    cfg = main_run["config"]
    model = load_checkpoint(args.checkpoint, expected=UnrolledCT).eval()
    radon = Radon(cfg["size"], cfg["angles"])
    y, x, m = make_data(cfg["n_test"], cfg["size"], radon, cfg["photons"], SEEDS["test"])
    lam = main_run["results"]["tv"]["lam"]
    rows, results = [], {}

    def timed(fn):  # best of a few repeats: the machine is noisy
        best, out = float("inf"), None
        for _ in range(args.repeats):
            with Timer() as t:
                out = fn()
            best = min(best, t.seconds)
        return out, best

    _tv(y[:2], radon, lam, m[:2], cfg["tv_iters"])  # warm-up, as the networks get below
    x_tv, t_tv = timed(lambda: _tv(y, radon, lam, m, cfg["tv_iters"]).x)
    ps, ss = scores(x_tv, x)
    results["tv"] = {"lam": lam, "psnr_mean": sum(ps) / len(ps), "ssim_mean": sum(ss) / len(ss)}
    results["tv"]["seconds_per_image"] = t_tv / len(y)
    with torch.no_grad():
        for prec, k in ((prec, k) for prec in args.precisions for k in args.sizes):
            model.precision = prec
            model(y[:2], mask=m[:2])  # warm-up
            if k == 1:
                out, sec = timed(lambda: model(y, mask=m))
            else:
                self_ensemble(model, y[:2], mask=m[:2], symmetries=k)  # warm-up, cache
                out, sec = timed(lambda k=k: self_ensemble(model, y, mask=m, symmetries=k))
            outside = float(out[~m].abs().max())
            ps, ss = scores(out, x)
            results[f"unrolled_x{k}_{prec}"] = {
                "symmetries": k,
                "precision": prec,
                "psnr_mean": sum(ps) / len(ps),
                "ssim_mean": sum(ss) / len(ss),
                "seconds_per_image": sec / len(y),
                "max_abs_outside_support": outside,
                "psnr": ps,
            }
    tv = results["tv"]
    for name, r in results.items():
        rows.append(
            {
                "method": name,
                "PSNR (dB)": r["psnr_mean"],
                "- TV (dB)": r["psnr_mean"] - tv["psnr_mean"],
                "SSIM": r["ssim_mean"],
                "time / image (s)": r["seconds_per_image"],
                "TV time / time": tv["seconds_per_image"] / r["seconds_per_image"],
            }
        )
    config = {
        "checkpoint": args.checkpoint,
        "main_json": args.main_json,
        "main_config": cfg,
        "threads": args.threads,
        "repeats": args.repeats,
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    path = write_results("ct_ensemble", {"config": config, "results": results}, args.out)
    print(markdown_table(rows))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
