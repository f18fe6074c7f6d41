"""Speed of the Radon projector (``unrollsci bench radon``).

Forward and adjoint on a batch of 16 images of 128 x 128 with 180 angles:
the sparse system-matrix :class:`~unrollsci.operators.Radon`, a rotate-and-sum
projector with ``torch.nn.functional.grid_sample`` (the alternative design,
measured here, adjoint by autograd), and scikit-image's ``radon`` / unfiltered
``iradon`` looped over the batch, all in the same run. deepinv is not installed
here (it needs torchvision), so its time is the issue author's measurement
(0.46 s forward for the batch), quoted and not re-measured.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from ._common import Timer, markdown_table, output_dir_arg, positive_int_arg, write_results

DEEPINV_FORWARD_S = 0.46  # issue 7: deepinv Tomography, batch of 16, 128x128, 180 angles


def _time(fn: Any, repeats: int, device: torch.device | None = None) -> float:
    fn()  # warm-up (builds caches)
    times = []
    for _ in range(repeats):
        with Timer(device) as t:
            fn()
        times.append(t.seconds)
    return statistics.median(times)


class RotateSum:
    """Rotate-and-sum projector with ``grid_sample`` (bilinear, zeros outside)."""

    def __init__(self, n: int, angles_deg: np.ndarray, device: Any, dtype: torch.dtype) -> None:
        th = torch.as_tensor(np.deg2rad(angles_deg), dtype=dtype, device=device)
        c, s = torch.cos(th), torch.sin(th)
        # Affine maps of normalized coordinates (align_corners=True), centre at pixel n//2.
        off = (2 * (n // 2) / (n - 1)) - 1
        theta = torch.zeros(len(th), 2, 3, dtype=dtype, device=device)
        theta[:, 0, 0], theta[:, 0, 1] = c, s
        theta[:, 1, 0], theta[:, 1, 1] = -s, c
        theta[:, 0, 2] = off - c * off - s * off
        theta[:, 1, 2] = off + s * off - c * off
        self.grid = F.affine_grid(theta, [len(th), 1, n, n], align_corners=True)
        self.n_angles = len(th)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        xin = x[:, None].expand(b, self.n_angles, n, n).reshape(b * self.n_angles, 1, n, n)
        grid = self.grid.repeat(b, 1, 1, 1)
        rot = F.grid_sample(xin, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return rot.sum(2).reshape(b, self.n_angles, n)

    def adjoint(self, y: torch.Tensor, n: int) -> torch.Tensor:
        x = torch.zeros(y.shape[0], n, n, dtype=y.dtype, device=y.device, requires_grad=True)
        (g,) = torch.autograd.grad(self.forward(x), x, grad_outputs=y)
        return g


def main(argv: list[str] | None = None) -> int:
    from skimage.transform import iradon, radon

    from ..imaging import shepp_logan
    from ..operators._radon import Radon, _system_matrix

    p = argparse.ArgumentParser(prog="unrollsci bench radon", description=__doc__)
    p.add_argument("--quick", action="store_true", help="64 x 64, 60 angles; radon_quick.json")
    p.add_argument("--out", type=output_dir_arg, default="benchmarks/results")
    p.add_argument("--size", type=positive_int_arg, default=128)
    p.add_argument("--angles", type=positive_int_arg, default=180)
    p.add_argument("--batch", type=positive_int_arg, default=16)
    p.add_argument("--repeats", type=positive_int_arg, default=5)
    p.add_argument("--threads", type=positive_int_arg, default=1)
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.angles, args.repeats = 64, 60, 2
    torch.set_num_threads(args.threads)
    n, b = args.size, args.batch
    theta = np.linspace(0.0, 180.0, args.angles, endpoint=False)
    rows: list[dict[str, Any]] = []
    res: dict[str, Any] = {}

    _system_matrix.cache_clear()
    t0 = time.perf_counter()
    op = Radon(n, args.angles)
    build = time.perf_counter() - t0
    x = shepp_logan(n)[None].repeat(b, 1, 1) * (1 + 0.1 * torch.rand(b, 1, 1))
    y = op(x)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for dev in devices:
        opd, xd, yd = op.to(dev), x.to(dev), y.to(dev)
        with torch.no_grad():
            fwd = _time(lambda: opd(xd), args.repeats, dev)  # noqa: B023
            adj = _time(lambda: opd.adjoint(yd), args.repeats, dev)  # noqa: B023
        res[f"radon_matrix_{dev.type}"] = {"forward_s": fwd, "adjoint_s": adj}
        rows.append(
            {
                "method": f"unrollsci Radon (sparse matrix, {dev.type})",
                "forward (s)": fwd,
                "adjoint (s)": adj,
                "fwd+adj (s)": fwd + adj,
            }
        )
        rs = RotateSum(n, theta, dev, torch.float32)
        with torch.no_grad():
            fwd = _time(lambda: rs.forward(xd), args.repeats, dev)  # noqa: B023
        adj = _time(lambda: rs.adjoint(yd, n), args.repeats, dev)  # noqa: B023
        res[f"rotate_sum_grid_sample_{dev.type}"] = {"forward_s": fwd, "adjoint_s": adj}
        rows.append(
            {
                "method": f"rotate-and-sum grid_sample ({dev.type})",
                "forward (s)": fwd,
                "adjoint (s)": adj,
                "fwd+adj (s)": fwd + adj,
            }
        )
    op = op.to("cpu")
    xn, yn = x.double().numpy(), y.double().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fwd = _time(lambda: [radon(im, theta, circle=True) for im in xn], max(1, args.repeats // 2))
        adj = _time(
            lambda: [iradon(s.T, theta, filter_name=None, circle=True) for s in yn],
            max(1, args.repeats // 2),
        )
    res["skimage"] = {
        "forward_s": fwd,
        "adjoint_s": adj,
        "forward_per_image_s": fwd / b,
        "adjoint_note": "unfiltered iradon (pixel-driven back-projection), not the exact adjoint",
    }
    rows.append(
        {
            "method": "scikit-image radon / iradon(filter=None), looped",
            "forward (s)": fwd,
            "adjoint (s)": adj,
            "fwd+adj (s)": fwd + adj,
        }
    )
    rows.append(
        {
            "method": "deepinv Tomography (issue author's number, not re-measured)",
            "forward (s)": DEEPINV_FORWARD_S,
            "adjoint (s)": math.nan,
            "fwd+adj (s)": math.nan,
        }
    )
    ours = res["radon_matrix_cpu"]["forward_s"]
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    img = resize(shepp_logan_phantom(), (n, n))
    ref = radon(img, theta, circle=True)
    mine = op(torch.from_numpy(img)[None])[0].numpy().T
    summary = {
        "speedup_forward_vs_deepinv_quoted": DEEPINV_FORWARD_S / ours,
        "speedup_forward_vs_skimage": res["skimage"]["forward_s"] / ours,
        "speedup_forward_vs_grid_sample": res["rotate_sum_grid_sample_cpu"]["forward_s"] / ours,
        "matrix_build_s": build,
        "matrix_nnz": op.nnz,
        "rel_l2_vs_skimage_shepp_logan": float(np.linalg.norm(mine - ref) / np.linalg.norm(ref)),
    }
    config = {
        **vars(args),
        "dtype": "float32",
        "deepinv_forward_s_quoted": DEEPINV_FORWARD_S,
        "load_average_1_5_15min": list(os.getloadavg()),
    }
    path = write_results(
        "radon",
        {"config": config, "results": res, "summary": summary},
        args.out,
        quick=args.quick,
    )
    print(markdown_table(rows))
    print(
        f"\nforward speed-up vs deepinv (quoted 0.46 s): "
        f"{summary['speedup_forward_vs_deepinv_quoted']:.0f}x; vs scikit-image (same run): "
        f"{summary['speedup_forward_vs_skimage']:.0f}x; matrix build {build:.2f} s "
        f"(cached per geometry), nnz {op.nnz}"
    )
    print(f"results: {path}")
    return 0
