"""The NVE drift benchmark runs end to end on a few steps and reports every configuration."""

from __future__ import annotations

import json
import math

from unrollsci.bench.md import main


def test_md_benchmark_smoke(tmp_path, capsys):
    assert main(["--steps", "15", "--seeds", "2", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "md.json").read_text())
    assert len(res["runs"]) == 10 and {r["seed"] for r in res["runs"]} == {0, 1}
    names = [(s["forces"], s["tol"], s["warm_start"]) for s in res["summary"]]
    assert names == [
        ("implicit", 1e-4, True),
        ("envelope", 1e-4, True),
        ("implicit", 1e-4, False),
        ("envelope", 1e-4, False),
        ("implicit", 1e-10, True),
    ]
    for r in res["runs"]:
        assert len(r["energy_trace"]) >= 2 and all(math.isfinite(e) for e in r["energy_trace"])
    # the converged run is its own reference
    ref = [r for r in res["runs"] if r["tol"] == 1e-10]
    assert all(r["excess_max_per_atom_eV"] == 0.0 for r in ref)
    assert all(math.isfinite(v) for v in res["envelope_over_implicit"].values())
    assert "ratios:" in capsys.readouterr().out


def test_md_equal_drift_smoke(tmp_path):
    argv = ["--equal-drift", "--steps", "12", "--ladder", "1e-4", "1e-8"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "md_equal_drift.json").read_text())
    names = [(s["forces"], s["tol"]) for s in res["summary"]]
    assert names == [
        ("implicit", 1e-4),
        ("envelope", 1e-4),
        ("envelope", 1e-8),
        ("implicit", 1e-10),
    ]
    assert all(s["ps_per_hour"] > 0 for s in res["summary"])
    assert res["summary"][-1]["mean_abs_excess_slope"] == 0.0  # the reference itself
    out = res["result"]
    if out["matching_envelope_tol"] is not None:
        assert out["speedup_implicit_over_envelope"] > 0
    assert (tmp_path / "md_equal_drift.md").read_text().startswith("NVE time to solution")


def test_md_equal_drift_several_adjoint_tolerances(tmp_path):
    argv = ["--equal-drift", "--steps", "8", "--ladder", "1e-8", "--adjoint-tols", "1e-4", "0.5"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "md_equal_drift.json").read_text())
    names = [(s["forces"], s["tol"], s["adjoint_tol"]) for s in res["summary"]]
    assert names == [
        ("implicit", 1e-4, 1e-4),
        ("implicit", 1e-4, 0.5),
        ("envelope", 1e-8, None),
        ("implicit", 1e-10, 1e-6),
    ]
    # a looser adjoint needs fewer iterations; each implicit run gets its own match
    assert res["summary"][1]["mean_adjoint_iters"] < res["summary"][0]["mean_adjoint_iters"]
    assert [r["adjoint_tol"] for r in res["result"]["by_adjoint_tol"]] == [1e-4, 0.5]
    assert res["result"]["adjoint_tol"] == 1e-4
