"""Radon projector at scale, and fan beam (``unrollsci bench radon``).

Parallel beam, forward and adjoint on a batch of 16 float32 images at 128^2 / 180,
256^2 / 360 and 512^2 / 720 angles: the stored-matrix and the matrix-free
:class:`~unrollsci.operators.Radon`, deepinv's ``Tomography`` and scikit-image's ``radon``
/ unfiltered ``iradon`` (looped over the batch), in the same run. Each method runs in its
own subprocess, so its peak resident memory (``ru_maxrss``, including the Python and torch
runtime) is its own; build time is the constructor's wall time (caches cleared). Times are
medians over ``--repeats`` runs (on 2 images, scaled, for deepinv at 512^2; one run on 2
images, scaled, for scikit-image from 256^2 on; said in the JSON). Agreement: relative L2
difference of each method's float64 projection of the Shepp-Logan phantom to
``skimage.transform.radon``.

Fan beam (N = 256, 128 in ``--quick``): relative error of the projection of ellipse
phantoms against their closed-form line integrals, the adjoint test in float64, and the
PSNR of fan-beam FBP against parallel-beam FBP at matched sampling.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._common import (
    markdown_table,
    output_dir_arg,
    parse_bench_args,
    positive_int_arg,
    write_results,
    write_text,
)

SIZES = ((128, 180), (256, 360), (512, 720))
QUICK_SIZES = ((64, 60), (96, 90))
METHODS = ("matrix", "matfree", "deepinv", "skimage")
#: The stored matrix is not attempted above this estimated construction peak (bytes).
MATRIX_LIMIT = 8e9
#: ... and is built a second time for the interleaved timing only below this one.
TIMING_MATRIX_LIMIT = 2e9


def _phantom(n: int) -> np.ndarray:
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    return resize(shepp_logan_phantom(), (n, n))


def _batch(n: int, batch: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    scale = 1 + 0.1 * torch.rand(batch, 1, 1, generator=gen)
    return torch.from_numpy(_phantom(n)).float()[None].repeat(batch, 1, 1) * scale


def _memory_worker(method: str, n: int, n_angles: int, batch: int, tmp: str) -> dict:
    """Build one Radon method (caches cold), apply it once both ways: build time, peak
    resident memory of this process, and its float64 projection of Shepp-Logan."""
    from ..operators import Radon

    x = _batch(n, batch)
    out: dict[str, Any] = {"method": method, "rss_start_mb": _rss_mb()}
    t0 = time.perf_counter()
    op = Radon(n, n_angles, method=method, max_memory=float("inf"))
    out["build_s"] = time.perf_counter() - t0
    with torch.no_grad():
        op.adjoint(op(x))
        y64 = op(torch.from_numpy(_phantom(n))[None])[0].numpy()
    np.save(os.path.join(tmp, f"{method}.npy"), y64.T)
    out["nnz"] = op.nnz
    out["peak_rss_mb"] = _rss_mb()
    return out


def _deepinv_op(n: int, n_angles: int, batch: int) -> tuple[Any, bool]:
    from deepinv.physics import Tomography

    # The default (all angles in one grid_sample) holds batch x angles x N^2 values;
    # past 2 GB of them deepinv's per-angle loop (parallel_computation=False) is used.
    parallel = batch * n_angles * n * n * 4 <= 2e9
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        op = Tomography(
            angles=n_angles,
            img_width=n,
            circle=True,
            normalize=False,
            parallel_computation=parallel,
            device="cpu",
        )
    return op, parallel


def _timing_worker(methods: list[str], n: int, n_angles: int, args: Any, tmp: str) -> dict:
    """All methods in one process, timed in interleaved rounds (round r runs every method
    once), so that a change of the machine's load hits all of them alike."""
    from skimage.transform import iradon, radon

    from ..operators import Radon

    theta = np.linspace(0.0, 180.0, n_angles, endpoint=False)
    x = _batch(n, args.batch)
    big = n >= 512
    fns: dict[str, tuple[Any, Any, int]] = {}
    info: dict[str, dict[str, Any]] = {}
    for m in methods:
        if m in ("matrix", "matfree"):
            op = Radon(n, n_angles, method=m, max_memory=float("inf"))
            y = op(x)
            fns[m] = (lambda op=op: op(x), lambda op=op, y=y: op.adjoint(y), args.repeats)
            info[m] = {}
        elif m == "deepinv":
            import deepinv.physics  # noqa: F401  (the import is not part of the build time)

            k = 2 if big else args.batch  # its adjoint at 512^2 x 16 needs over 20 GB
            t0 = time.perf_counter()
            # the mode for the k images timed (all angles at once where they fit), not for
            # the whole batch: the per-angle loop is deepinv's slower path
            dop, parallel = _deepinv_op(n, n_angles, k)
            info[m] = {
                "build_s": time.perf_counter() - t0,
                "parallel_computation": parallel,
                "images_timed": k,
                "scale": args.batch / k,
            }
            xb = x[:k, None]
            yb = dop.A(xb)
            dop.A_adjoint(yb)  # warm: the timed rounds never hold the first adjoint call
            reps = args.repeats
            fns[m] = (
                lambda dop=dop, xb=xb: dop.A(xb),
                lambda dop=dop, yb=yb: dop.A_adjoint(yb),
                reps,
            )
        else:  # scikit-image, looped over k images of the batch, scaled to the batch
            xs = x.double().numpy()
            k = 2 if n >= 256 else args.batch  # the slowest column: 2 images from 256^2 on
            sinos = [radon(im, theta, circle=True) for im in xs[:k]]

            def sk_fwd(xs: np.ndarray = xs, k: int = k) -> None:
                [radon(im, theta, circle=True) for im in xs[:k]]

            def sk_adj(sinos: list = sinos) -> None:
                [iradon(s, theta, filter_name=None, circle=True) for s in sinos]

            fns[m] = (sk_fwd, sk_adj, 1 if n >= 256 else args.repeats)
            info[m] = {"images_timed": k, "scale": args.batch / k, "build_s": 0.0}
            np.save(os.path.join(tmp, "skimage.npy"), radon(_phantom(n), theta, circle=True))
    times: dict[str, dict[str, list[float]]] = {m: {"fwd": [], "adj": []} for m in fns}
    load = [list(os.getloadavg())]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for r in range(max(v[2] for v in fns.values())):
            for m, (fwd, adj, reps) in fns.items():
                if r >= reps:
                    continue
                for key, fn in (("fwd", fwd), ("adj", adj)):
                    t0 = time.perf_counter()
                    fn()
                    times[m][key].append(time.perf_counter() - t0)
    for m, t in times.items():
        scale = info[m].get("scale", 1.0)
        info[m]["forward_s"] = statistics.median(t["fwd"]) * scale
        info[m]["adjoint_s"] = statistics.median(t["adj"]) * scale
        info[m]["runs"] = len(t["fwd"])
    load.append(list(os.getloadavg()))
    return {"timing": info, "peak_rss_mb_all_methods": _rss_mb(), "load_average": load}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _run_worker(kind: str, methods: list[str], n: int, a: int, args: Any, tmp: str) -> dict:
    cmd = [sys.executable, "-m", "unrollsci.bench.radon", "--worker", kind, "--tmp", tmp]
    cmd += ["--methods", *methods, "--size", str(n), "--angles", str(a)]
    cmd += ["--batch", str(args.batch), "--repeats", str(args.repeats)]
    cmd += ["--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
        return {"error": f"exit {done.returncode}: {tail[0][:300]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _deepinv_available() -> bool:
    try:
        import deepinv.physics  # noqa: F401
    except Exception:  # noqa: BLE001 - any import failure means: not measured here
        return False
    return True


def _fanbeam_checks(n: int) -> dict[str, Any]:
    from ..imaging import (
        fanbeam_ellipse_sinogram,
        fanbeam_fbp,
        fbp,
        profiled_ellipse_image,
        shepp_logan,
    )
    from ..imaging._phantoms import _MODIFIED_SHEPP_LOGAN
    from ..operators import FanBeam, Radon, check_adjoint

    res: dict[str, Any] = {"image_size": n}
    geo = {"source_distance": 2.0 * n, "detector_distance": 4.0 * n, "detector_spacing": 2.0}
    op = FanBeam(n, 180, **geo)
    res["geometry"] = {**geo, "n_detectors": op.n_detectors, "step": op.step, "views": 180}
    params = torch.tensor(_MODIFIED_SHEPP_LOGAN, dtype=torch.float64)
    params[:, 5] = torch.deg2rad(params[:, 5])
    for power in (0, 1, 2):
        ref = fanbeam_ellipse_sinogram(params, op, power=power)
        img = profiled_ellipse_image(params[None], n, power=power, supersample=4)
        rel = float((op(img)[0] - ref).norm() / ref.norm())
        res[f"rel_error_vs_closed_form_power{power}"] = rel
    res["adjoint_error_float64"] = check_adjoint(op, dtype=torch.float64)
    x = shepp_logan(n, dtype=torch.float64)[None]
    c = torch.arange(n) - (n - 1) / 2
    mask = (c[:, None] ** 2 + c[None, :] ** 2) <= (n / 2 - 1) ** 2

    def psnr(rec: torch.Tensor) -> float:
        mse = float(((rec[0] - x[0])[mask] ** 2).mean())
        return 10 * math.log10(float(x[0][mask].max()) ** 2 / mse)

    n_par = 360 if n >= 256 else 2 * n
    par = Radon(n, n_par)
    fan = FanBeam(n, 2 * n_par, **geo)  # 360 degrees, same angular density; tau = 1 pixel
    res["psnr_parallel_fbp_db"] = psnr(fbp(par(x), par))
    res["psnr_fanbeam_fbp_db"] = psnr(fanbeam_fbp(fan(x), fan))
    res["matched_sampling"] = (
        f"parallel: {n_par} angles over 180 deg, {par.n_detectors} detectors of 1 pixel; fan: "
        f"{2 * n_par} views over 360 deg, {fan.n_detectors} detectors of 1 pixel at the centre"
    )
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="unrollsci bench radon", description=__doc__)
    p.add_argument("--quick", action="store_true", help="64^2/60 and 96^2/90; radon_quick.*")
    p.add_argument("--out", type=output_dir_arg, default="benchmarks/results")
    p.add_argument("--batch", type=positive_int_arg, default=16)
    p.add_argument("--repeats", type=positive_int_arg, default=3)
    p.add_argument("--threads", type=positive_int_arg, default=2)
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--worker", choices=("memory", "timing"), help=argparse.SUPPRESS)
    p.add_argument("--size", type=positive_int_arg, help=argparse.SUPPRESS)
    p.add_argument("--angles", type=positive_int_arg, help=argparse.SUPPRESS)
    p.add_argument("--tmp", help=argparse.SUPPRESS)
    args = parse_bench_args(p, argv, "radon")
    torch.set_num_threads(args.threads)
    if args.worker == "memory":
        m = args.methods[0]
        print(json.dumps(_memory_worker(m, args.size, args.angles, args.batch, args.tmp)))
        return 0
    if args.worker == "timing":
        print(json.dumps(_timing_worker(args.methods, args.size, args.angles, args, args.tmp)))
        return 0
    from ..operators._radon import radon_memory_estimate

    sizes = QUICK_SIZES if args.quick else SIZES
    methods = [m for m in args.methods if m != "deepinv" or _deepinv_available()]
    results: dict[str, Any] = {}
    rows = []
    for n, a in sizes:
        key = f"{n}x{n}_{a}"
        results[key] = {}
        with tempfile.TemporaryDirectory() as tmp:
            est = radon_memory_estimate(n, a)
            for m in ("matrix", "matfree"):
                if m not in methods:
                    continue
                if m == "matrix" and est > MATRIX_LIMIT:
                    results[key][m] = {"skipped": f"estimated build peak {est / 1e9:.1f} GB"}
                    continue
                results[key][m] = _run_worker("memory", [m], n, a, args, tmp)
                print(key, m, results[key][m], flush=True)
            # The matrix joins the interleaved timing where it is cheap to build again.
            timed = [m for m in methods if m != "matrix" or est <= TIMING_MATRIX_LIMIT]
            timing = _run_worker("timing", timed, n, a, args, tmp)
            print(key, "timing", timing, flush=True)
            results[key]["timing_process_peak_rss_mb"] = timing.get("peak_rss_mb_all_methods")
            if "error" in timing:
                results[key]["timing_error"] = timing["error"]
            if "load_average" in timing:  # 1, 5, 15 min, before and after the timed rounds
                results[key]["load_average_before_after"] = timing["load_average"]
            for m, t in timing.get("timing", {}).items():
                results[key].setdefault(m, {}).update(t)
            if "matrix" in results[key] and "forward_s" not in results[key]["matrix"]:
                results[key]["matrix"]["note"] = "not timed (build too slow to repeat here)"
            ref_path = os.path.join(tmp, "skimage.npy")
            ref = np.load(ref_path) if os.path.exists(ref_path) else None
            for m in ("matrix", "matfree"):
                path = os.path.join(tmp, f"{m}.npy")
                if ref is not None and os.path.exists(path):
                    mine = np.load(path)
                    rel = float(np.linalg.norm(mine - ref) / np.linalg.norm(ref))
                    results[key][m]["rel_l2_vs_skimage"] = rel
        dref = results[key].get("deepinv", {})
        for m, r in results[key].items():
            if not isinstance(r, dict):
                continue
            if "forward_s" not in r:
                note = r.get("skipped", r.get("error", r.get("note")))
                rows.append({"size": key, "method": m, "note": note})
                continue
            fa = r["forward_s"] + r["adjoint_s"]
            row = {
                "size": key,
                "method": m,
                "build (s)": r.get("build_s", 0.0),
                "forward (s)": r["forward_s"],
                "adjoint (s)": r["adjoint_s"],
                "peak RSS (GB)": r.get("peak_rss_mb", math.nan) / 1024,
                "rel. diff. to skimage": r.get("rel_l2_vs_skimage", math.nan),
            }
            if "forward_s" in dref and m in ("matrix", "matfree"):
                r["speedup_vs_deepinv"] = {
                    "forward": dref["forward_s"] / r["forward_s"],
                    "adjoint": dref["adjoint_s"] / r["adjoint_s"],
                    "forward_plus_adjoint": (dref["forward_s"] + dref["adjoint_s"]) / fa,
                }
                row["x deepinv (fwd / adj / both)"] = "{:.1f} / {:.1f} / {:.1f}".format(
                    *r["speedup_vs_deepinv"].values()
                )
            rows.append(row)
    fan = _fanbeam_checks(128 if args.quick else 256)
    config = {
        **{k: v for k, v in vars(args).items() if k not in ("worker", "size", "angles", "tmp")},
        "dtype": "float32 (timings), float64 (agreement)",
        "sizes": [list(s) for s in sizes],
        "load_average_1_5_15min": list(os.getloadavg()),
        "deepinv_measured": "deepinv" in methods,
        "timing": "all methods of a size in one process, interleaved rounds, median of "
        "--repeats rounds; deepinv at 512^2: --repeats rounds on 2 images, skimage from "
        "256^2 on: one round on 2 images, both scaled to the batch (time is linear in the "
        "batch; deepinv's adjoint of 16 images at 512^2 x 720 needs over 20 GB; skimage's "
        "agreement is computed in full); peak RSS and build time: one process per method",
    }
    data = {"config": config, "results": results, "fanbeam": fan}
    path = write_results("radon", data, args.out, quick=args.quick)
    table = markdown_table(rows)
    fan_rows = [{"quantity": k, "value": v} for k, v in fan.items() if k != "geometry"]
    loads = ", ".join(
        f"{k}: {r['load_average_before_after'][0][0]:.1f} -> "
        f"{r['load_average_before_after'][1][0]:.1f}"
        for k, r in results.items()
        if "load_average_before_after" in r
    )
    table += f"\n\nLoad average (1 min) before -> after the timed rounds, {loads}."
    text = f"# Radon projector at scale\n\n{table}\n\n## Fan beam\n\n{markdown_table(fan_rows)}\n"
    write_text(Path(path).with_suffix(".md"), text)
    print(table)
    print(markdown_table(fan_rows))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
