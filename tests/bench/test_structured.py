"""`unrollsci bench structured --quick` runs end to end and never replaces a full run."""

from __future__ import annotations

import json

from unrollsci import cli


def test_bench_structured_quick(tmp_path, capsys):
    full = tmp_path / "structured_group.json"
    full.write_bytes(b'{"full": true}')
    rc = cli.main(["bench", "structured", "--quick", "--no-progress", "--out", str(tmp_path)])
    assert rc == 0
    assert full.read_bytes() == b'{"full": true}'
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [
        "structured_admm_quick.json",
        "structured_admm_quick.md",
        "structured_group.json",
        "structured_group_quick.json",
        "structured_group_quick.md",
        "structured_group_quick.png",
    ]
    group = json.loads((tmp_path / "structured_group_quick.json").read_text())
    res = group["by_snr"]["inf"]
    assert set(res["learned"]) == {"LISTA", "PreconditionedLISTA (diagonal)", "BlockLISTA"}
    assert set(res["curve"]) == {"LISTA", "BlockLISTA"}
    assert isinstance(res["claim"]["holds"], bool)
    admm = json.loads((tmp_path / "structured_admm_quick.json").read_text())
    kinds = {(r["n"], r["x-update"]) for r in admm["rows"]}
    assert (64, "exact") in kinds and (144, "learned") in kinds
    assert (144, "exact") in kinds and (64, "lasso (FISTA, converged)") in kinds
    assert admm["rho"]["rho"] in admm["config"]["rho_grid"]
    assert "| n | x-update |" in capsys.readouterr().out
