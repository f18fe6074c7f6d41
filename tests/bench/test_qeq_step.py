"""The per-step QEq benchmark (``unrollsci bench qeq --per-step``) runs end to end."""

from __future__ import annotations

import json
import math

from unrollsci.bench.qeq import main


def test_qeq_per_step_smoke(tmp_path):
    argv = ["--per-step", "--quick", "--steps", "3", "--repeats", "1", "--no-lammps"]
    argv += ["--threads", "1"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "qeq_step_quick.json").read_text())
    (row,) = res["rows"]
    assert row["atoms"] == 64 and row["steps"] == 3
    for key in ("ms_implicit", "ms_envelope", "ms_nocheck"):
        assert math.isfinite(row[key]) and row[key] > 0
    assert row["list_builds"] >= 1 and row["threads"] == 1
    assert row["solver"] == "direct" and row["cg_iters"] == 0  # 64 atoms: Cholesky
    assert math.isfinite(row["cpu_ms_implicit"]) and row["load_avg"] >= 0
    assert (tmp_path / "qeq_step_quick.md").read_text().startswith("QEq per MD step")
    assert not (tmp_path / "qeq_step.json").exists()  # a quick run never writes full results
