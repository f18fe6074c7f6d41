"""Merge two ``ct.json`` runs made side by side into one results file.

The main run (FBP, TV with its validation-chosen weight, the unconstrained
network) is kept as is; the network results of the second run (e.g. the
certified ``lip10`` variant, trained in a parallel process on the same data
seeds) are added, its gain over TV is taken against the main run's TV, and the
second run's own FBP/TV rows are only used to check that both runs scored the
same test set. Its configuration is kept under ``config_secondary``.

Usage: python benchmarks/ct_merge.py MAIN.json SECOND.json [OUTDIR] [--force]

Writes OUTDIR/ct.json atomically; it refuses to write over MAIN.json or SECOND.json (e.g.
MAIN.json = OUTDIR/ct.json, the default layout) unless --force is given.
"""

import argparse
import json
import sys
from pathlib import Path

from unrollsci._argtypes import existing_file_arg, output_dir_arg
from unrollsci._io import run_command
from unrollsci.bench._common import json_text, write_text


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/ct_merge.py", description=__doc__.split("\n")[0])
    p.add_argument("main_json", metavar="MAIN.json", type=existing_file_arg)
    p.add_argument("second_json", metavar="SECOND.json", type=existing_file_arg)
    p.add_argument(
        "outdir", nargs="?", metavar="OUTDIR", type=output_dir_arg, default="benchmarks/results"
    )
    p.add_argument("--force", action="store_true", help="write over an input (MAIN.json)")
    args = p.parse_args(argv)
    out = Path(args.outdir)
    path = out / "ct.json"
    inputs = {Path(f).resolve() for f in (args.main_json, args.second_json)}
    if path.resolve() in inputs and not args.force:
        p.error(f"{path} is an input of this command; pass --force or choose another OUTDIR")
    main_run = json.loads(Path(args.main_json).read_text())
    second = json.loads(Path(args.second_json).read_text())
    fbp_a, fbp_b = main_run["results"]["fbp"]["psnr"], second["results"]["fbp"]["psnr"]
    if max(abs(a - b) for a, b in zip(fbp_a, fbp_b, strict=True)) > 1e-9:
        raise ValueError("the two runs did not score the same test set (FBP PSNRs differ)")
    res, summ = main_run["results"], main_run["summary"]
    tv = res["tv"]["psnr_mean"]
    for name, cert in second["summary"]["certificates"].items():
        res[name] = second["results"][name]
        summ["certificates"][name] = cert
        summ["per_network_minus_tv_db"][name] = res[name]["psnr_mean"] - tv
    main_run["config_secondary"] = second["config"]
    main_run["machine_secondary"] = second["machine"]
    main_run["merged"] = (
        f"networks {sorted(second['summary']['certificates'])} trained in a second process "
        "run at the same time (one torch thread each); FBP/TV rows from the main run"
    )
    write_text(path, json_text(main_run))  # atomic: an interrupted merge leaves the old file
    for k, r in res.items():
        ps, ss, sec = r["psnr_mean"], r["ssim_mean"], r["seconds_per_image"]
        print(f"| {k} | {ps:.2f} | {ss:.3f} | {sec:.3g} |")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, sys.argv[1:]))
