"""Merge two ``ct.json`` runs made side by side into one results file.

The main run (FBP, TV with its validation-chosen weight, the unconstrained
network) is kept as is; the network results of the second run (e.g. the
certified ``lip10`` variant, trained in a parallel process on the same data
seeds) are added, its gain over TV is taken against the main run's TV, and the
second run's own FBP/TV rows are only used to check that both runs scored the
same test set. Its configuration is kept under ``config_secondary``.

Usage: python benchmarks/ct_merge.py MAIN.json SECOND.json [OUTDIR]
"""

import json
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    main_run = json.loads(Path(argv[0]).read_text())
    second = json.loads(Path(argv[1]).read_text())
    out = Path(argv[2] if len(argv) > 2 else "benchmarks/results")
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
    out.mkdir(parents=True, exist_ok=True)
    path = out / "ct.json"
    path.write_text(json.dumps(main_run, indent=2))
    for k, r in res.items():
        ps, ss, sec = r["psnr_mean"], r["ssim_mean"], r["seconds_per_image"]
        print(f"| {k} | {ps:.2f} | {ss:.3f} | {sec:.3g} |")
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
