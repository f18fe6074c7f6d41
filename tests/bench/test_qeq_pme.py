"""The PME vs explicit Ewald benchmark (``benchmarks/qeq_pme.py``) runs end to end."""

from __future__ import annotations

import json
import math

from unrollsci.bench.qeq_pme import crossover, main


def test_qeq_pme_quick(tmp_path):
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "qeq_pme_quick.json").read_text())
    (row,) = res["rows"]
    assert row["atoms"] == 512 and row["accuracy"] == 1e-6
    for key in ("s_ewald_q", "s_pme_q", "s_ewald_ef", "s_pme_ef"):
        assert math.isfinite(row[key]) and row[key] > 0
    # the two methods compute the same charges, energy and forces (to ~ewald_accuracy 1e-6)
    assert row["max_dq"] < 1e-5 and row["rel_dE"] < 1e-5 and row["max_dF"] < 1e-4
    assert row["n_kvectors"] > 0 and row["pme_mesh"].count("x") == 2
    assert (tmp_path / "qeq_pme_quick.md").read_text().startswith("QEq with Ewald")
    assert not (tmp_path / "qeq_pme.json").exists()  # a quick run never writes full results


def test_crossover_rule():
    rows = [
        {"atoms": 512, "pme/ewald_ef": 1.3},
        {"atoms": 1000, "pme/ewald_ef": 0.9},
        {"atoms": 1728, "pme/ewald_ef": 1.1},
        {"atoms": 4096, "pme/ewald_ef": 0.5},
        {"atoms": 8000},  # explicit sum not timed
    ]
    assert crossover(rows) == 4096
    rows[2]["pme/ewald_ef"] = 0.95
    assert crossover(rows) == 1000
    assert crossover(rows[:1]) is None


def test_qeq_pme_products_quick(tmp_path):
    """--products times building each reciprocal operator and one product per method."""
    assert main(["--quick", "--products", "--repeats", "2", "--out", str(tmp_path)]) == 0
    (row,) = json.loads((tmp_path / "qeq_pme_quick.json").read_text())["rows"]
    for key in ("s_ewald_build", "s_pme_build", "s_ewald_product", "s_pme_product"):
        assert math.isfinite(row[key]) and row[key] > 0
    assert row["n_kvectors"] > 0 and row["pme_mesh"].count("x") == 2
