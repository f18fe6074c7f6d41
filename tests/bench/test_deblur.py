"""`unrollsci bench deblur --quick` runs end to end and never replaces a full run."""

from __future__ import annotations

import json

from unrollsci import cli


def test_bench_deblur_quick(tmp_path, capsys):
    full = tmp_path / "deblur.json"
    full.write_bytes(b'{"full": true}')
    rc = cli.main(["bench", "deblur", "--quick", "--no-progress", "--out", str(tmp_path)])
    assert rc == 0
    assert full.read_bytes() == b'{"full": true}'
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["deblur.json", "deblur_quick.json", "deblur_quick.md", "deblur_quick.png"]
    res = json.loads((tmp_path / "deblur_quick.json").read_text())
    cfg = res["config"]
    assert len(res["model"]["psnr_db_by_layer"]) == cfg["K"]
    f = res["fista"]
    assert 1 <= f["iterations_to_target"] <= cfg["fista_iters"]
    assert f["psnr_db"] <= f["peak_psnr_db"]
    assert str(f["lam"]) in f["validation_psnr_db"] or f["lam"] in cfg["lams"]
    assert isinstance(res["accepted_10x"], bool)
    assert "UnrolledAnalysisFISTA" in capsys.readouterr().out
