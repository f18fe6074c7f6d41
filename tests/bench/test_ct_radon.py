"""Smoke runs of the CT demo section and both benchmarks in quick mode (slow)."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.mark.slow
def test_demo_section(tmp_path):
    from unrollsci.bench.demo.imaging import run_demo

    rows = run_demo(tmp_path)
    assert [r["method"].split()[0] for r in rows] == ["FBP", "TV", "unrolled"]
    assert (tmp_path / "ct_demo.png").exists()


@pytest.mark.slow
def test_bench_ct_quick(tmp_path):
    from unrollsci.bench.ct import main

    assert main(["--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "ct_quick.json").read_text())
    assert not (tmp_path / "ct.json").exists()  # a quick run never writes the full results' name
    certs = data["summary"]["certificates"]
    assert set(certs) == {"unrolled", "unrolled_lip10"}
    for c in certs.values():
        assert c["max_abs_outside_support"] == 0.0
        assert c["lipschitz_bound"] >= c["lipschitz_empirical"]
    assert certs["unrolled_lip10"]["lipschitz_bound"] <= 10.0
    assert data["config"]["lr_schedule"] == "cosine" and data["config"]["memory"] == 5
    for name in certs:
        r = data["results"][name]
        assert r["train_steps"] == 25 * r["epochs"] > 0 and 0 <= r["best_epoch"] < r["epochs"]
        assert r["last_lr_factor"] == pytest.approx(0.02)  # the budget ran out: at the floor
        assert [h[0] for h in r["val_history"]] == [25 * (i + 1) for i in range(r["epochs"])]
    # the learning-curve script reads the stored val_history
    import importlib.util
    from pathlib import Path

    script = Path(__file__).parents[2] / "benchmarks" / "ct_curves.py"
    spec = importlib.util.spec_from_file_location("ct_curves", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main([str(tmp_path / "ct_quick.json"), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "ct_curves.md").read_text().count("| ct_quick: unrolled") == 2


@pytest.mark.slow
def test_bench_ct_256_quick(tmp_path):
    """The 256 x 256 low-dose setting (LoDoPaB-CT photon count and attenuation), smoke run."""
    from unrollsci.bench._ct_setup import LODOPAB_ATTENUATION
    from unrollsci.bench.ct import main

    argv = ["--quick", "--size", "256", "--angles", "45", "--variants", "free"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    assert not (tmp_path / "ct_quick.json").exists() and not (tmp_path / "ct_256.json").exists()
    data = json.loads((tmp_path / "ct_256_quick.json").read_text())
    cfg = data["config"]
    assert (cfg["size"], cfg["angles"], cfg["photons"]) == (256, 45, 4096.0)
    assert cfg["pixel_size"] == pytest.approx(LODOPAB_ATTENUATION / 256)
    assert (tmp_path / "ct_256_quick.md").read_text().startswith("| method")
    assert (tmp_path / "ct_256_unrolled_quick.pt").exists()
    r = data["results"]["unrolled"]
    assert r["train_steps"] == 2 * r["epochs"] > 0 and len(r["val_history"]) == r["epochs"]
    assert r["max_abs_outside_support"] == 0.0 and r["device"] == "cpu"
    assert len(r["psnr"]) == len(data["results"]["tv"]["psnr"]) == 4
    assert data["results"]["tv"]["seconds"] > 0 and r["train_cpu_seconds"] > 0


def test_make_data_noise_follows_the_attenuation():
    """``pixel_size=None`` is poisson_noise's default ``1 / n_det`` (the 64 x 64 benchmark's
    data are unchanged), and with ``pixel_size = mu`` the line integrals ``mu y`` have the
    Poisson variance ``exp(mu y) / I0`` (delta method, on rays with many photons)."""
    from unrollsci.bench.ct import make_data, pixel_size
    from unrollsci.imaging import Radon

    op = Radon(32, 12)
    y0, x0, m0 = make_data(8, 32, op, 4096.0, seed=3)
    y1, x1, _ = make_data(8, 32, op, 4096.0, seed=3, pixel_size=pixel_size(1.0, 32))
    assert torch.equal(y0, y1) and torch.equal(x0, x1)
    assert pixel_size(None, 32) is None
    mu = pixel_size(20.0, 32)
    y2, x2, _ = make_data(8, 32, op, 4096.0, seed=3, pixel_size=mu)
    assert torch.equal(x2, x0)
    clean = op(x0).double()
    for m, y in ((mu, y2), (1.0 / 32, y0)):
        var = torch.exp(m * clean) / 4096.0
        ok = 4096.0 * torch.exp(-m * clean) > 100  # the delta method holds
        ratio = float(((m * (y.double() - clean)) ** 2 / var)[ok].mean())
        assert int(ok.sum()) > 1000 and abs(ratio - 1.0) < 0.15


def test_cosine_factor():
    from unrollsci.bench.ct import cosine_factor

    assert cosine_factor(0.0, 100.0, 0.02) == 1.0
    assert cosine_factor(50.0, 100.0, 0.02) == pytest.approx(0.5)
    assert cosine_factor(25.0, 100.0, 0.02) == pytest.approx(0.5 * (1 + 2**-0.5))
    assert cosine_factor(99.0, 100.0, 0.02) == 0.02
    assert cosine_factor(500.0, 100.0, 0.0) == 0.0


def test_bench_ct_rejects_bad_options():
    from unrollsci.bench.ct import main

    for bad in (
        ["--lr-floor", "2"],
        ["--memory", "-1"],
        ["--lr-schedule", "step"],
        ["--train-steps", "-1"],
        ["--tv-lams"],
        ["--photons", "0"],
        ["--attenuation", "-1"],
    ):
        with pytest.raises(SystemExit):
            main(bad)


@pytest.mark.slow
def test_bench_radon_quick(tmp_path):
    from unrollsci.bench.radon import main

    argv = ["--quick", "--out", str(tmp_path), "--repeats", "1", "--threads", "1"]
    assert main([*argv, "--methods", "matrix", "matfree", "skimage"]) == 0
    data = json.loads((tmp_path / "radon_quick.json").read_text())
    assert not (tmp_path / "radon.json").exists()
    assert (tmp_path / "radon_quick.md").exists()
    assert set(data["results"]) == {"64x64_60", "96x96_90"}
    for r in data["results"].values():
        for m in ("matrix", "matfree"):
            assert r[m]["rel_l2_vs_skimage"] < 1e-6
            assert r[m]["forward_s"] > 0 and r[m]["adjoint_s"] > 0
            assert r[m]["peak_rss_mb"] > 0
        assert r["matfree"]["nnz"] == 0 < r["matrix"]["nnz"]
        assert r["skimage"]["images_timed"] == 16
        assert len(r["load_average_before_after"]) == 2  # (1, 5, 15 min) before and after
    fan = data["fanbeam"]
    assert fan["adjoint_error_float64"] < 1e-12
    assert fan["rel_error_vs_closed_form_power2"] < 3e-3  # N = 128 in quick mode
    assert abs(fan["psnr_fanbeam_fbp_db"] - fan["psnr_parallel_fbp_db"]) < 1.0


@pytest.mark.slow
def test_bench_ct_dual_bf16_and_self_ensemble(tmp_path):
    """The options of the final CT runs, end to end: --dual, --precision bfloat16, then
    benchmarks/ct_ensemble.py on the saved network."""
    import importlib.util
    from pathlib import Path

    from unrollsci.bench.ct import main

    args = ["--quick", "--variants", "free", "--dual", "--precision", "bfloat16"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "ct_quick.json").read_text())
    assert data["results"]["unrolled"]["dual"] and data["config"]["precision"] == "bfloat16"
    script = Path(__file__).parents[2] / "benchmarks" / "ct_ensemble.py"
    spec = importlib.util.spec_from_file_location("ct_ensemble", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ckpt, main_json = str(tmp_path / "ct_unrolled_quick.pt"), str(tmp_path / "ct_quick.json")
    argv = [ckpt, "--main-json", main_json, "--out", str(tmp_path), "--sizes", "1", "2"]
    assert mod.main([*argv, "--repeats", "1"]) == 0
    ens = json.loads((tmp_path / "ct_ensemble.json").read_text())["results"]
    assert set(ens) == {"tv"} | {
        f"unrolled_x{k}_{p}" for k in (1, 2) for p in ("float32", "bfloat16")
    }
    for name, r in ens.items():
        if name != "tv":
            assert r["max_abs_outside_support"] == 0.0
    one = data["results"]["unrolled"]["psnr_mean"]
    assert abs(ens["unrolled_x1_bfloat16"]["psnr_mean"] - one) < 1e-6  # same network, same data
