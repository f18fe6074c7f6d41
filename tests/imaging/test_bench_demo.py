"""Smoke runs of the CT demo section and both benchmarks in quick mode (slow)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_demo_section(tmp_path):
    from unrollsci.imaging._demo import run_demo

    rows = run_demo(tmp_path)
    assert [r["method"].split()[0] for r in rows] == ["FBP", "TV", "unrolled"]
    assert (tmp_path / "ct_demo.png").exists()


@pytest.mark.slow
def test_bench_ct_quick(tmp_path):
    from unrollsci.imaging._bench import main

    assert main(["--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "ct.json").read_text())
    certs = data["summary"]["certificates"]
    assert set(certs) == {"unrolled", "unrolled_lip10"}
    for c in certs.values():
        assert c["max_abs_outside_support"] == 0.0
        assert c["lipschitz_bound"] >= c["lipschitz_empirical"]
    assert certs["unrolled_lip10"]["lipschitz_bound"] <= 10.0


@pytest.mark.slow
def test_bench_radon_quick(tmp_path):
    from unrollsci.imaging._bench_radon import main

    assert main(["--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "radon.json").read_text())
    assert data["summary"]["rel_l2_vs_skimage_shepp_logan"] < 1e-6
