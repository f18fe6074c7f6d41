"""Smoke runs of the certified CT benchmark in quick mode (the checkpoint one is slow)."""

from __future__ import annotations

import json

import pytest


def test_bench_ct_certified_quick(tmp_path):
    from unrollsci.bench.ct_certified import main

    assert main(["--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "ct_certified_quick.json").read_text())
    assert not (tmp_path / "ct_certified.json").exists()
    assert (tmp_path / "ct_certified_quick.md").read_text().startswith("|")
    net, s = data["results"]["network"], data["summary"]
    # the certificate is never below either attack
    assert 0 < net["lipschitz_empirical"] <= net["lipschitz_bound"]
    assert 0 < net["jacobian_norm_max"] <= net["lipschitz_bound"]
    assert net["max_beta_plus_gamma"] < 2.0
    assert s["bound_over_empirical"] == pytest.approx(
        net["lipschitz_bound"] / net["lipschitz_empirical"]
    )
    for key in ("fbp", "tv", "network"):
        assert len(data["results"][key]["psnr"]) == 4
    # a second run refuses to write over the results without --force
    with pytest.raises(FileExistsError, match="--force"):
        main(["--quick", "--out", str(tmp_path)])


@pytest.mark.slow
def test_bench_ct_certified_checkpoint_reproduces(tmp_path):
    from unrollsci.bench.ct_certified import main

    assert main(["--quick", "--out", str(tmp_path)]) == 0
    net = json.loads((tmp_path / "ct_certified_quick.json").read_text())["results"]["network"]
    ckpt = tmp_path / "trained.pt"
    ckpt.write_bytes((tmp_path / "ct_certified_quick.pt").read_bytes())
    args = ["--quick", "--out", str(tmp_path), "--force", "--checkpoint", str(ckpt)]
    assert main(args) == 0
    again = json.loads((tmp_path / "ct_certified_quick.json").read_text())["results"]["network"]
    assert again["psnr"] == pytest.approx(net["psnr"], abs=1e-9)
    assert again["lipschitz_bound"] == pytest.approx(net["lipschitz_bound"])
