"""`unrollsci bench lista --quick` and the demo section run end to end."""

from __future__ import annotations

import json

import pytest

from unrollsci import cli


def test_bench_lista_quick(tmp_path, capsys):
    full = tmp_path / "lista.json"  # a full run's results: a quick run must not replace them
    full.write_bytes(b'{"full": true}')
    rc = cli.main(["bench", "lista", "--quick", "--no-progress", "--out", str(tmp_path)])
    assert rc == 0
    assert full.read_bytes() == b'{"full": true}'
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["lista.json", "lista_quick.json", "lista_quick.md", "lista_quick.png"]
    data = json.loads((tmp_path / "lista_quick.json").read_text())
    k = data["config"]["K"]
    inf = data["by_snr"]["inf"]
    for name in ("ISTA", "FISTA", "AMP", "BG-AMP", "LISTA", "ALISTA", "LAMP", "LAMP-BG"):
        assert len(inf["nmse_db"][name]) == k
    assert data["by_snr"]["40"]["oracle_db"] < -30
    assert "| SNR (dB) | method |" in capsys.readouterr().out
    # merging partial files reproduces the curves
    rc = cli.main(
        [
            "bench",
            "lista",
            "--out",
            str(tmp_path),
            "--name",
            "merged",
            "--merge",
            str(tmp_path / "lista_quick.json"),
        ]
    )
    assert rc == 0
    merged = json.loads((tmp_path / "merged.json").read_text())
    assert merged["by_snr"]["inf"]["nmse_db"]["ALISTA"] == inf["nmse_db"]["ALISTA"]


def test_demo_section(tmp_path, capsys):
    rc = cli.main(["demo", "--only", "unrolled", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "LISTA vs ISTA" in out and "ALISTA" in out
    assert (tmp_path / "lista_demo.png").exists()


def test_bench_lista_kkt_continuation_label(tmp_path):
    args = ["bench", "lista", "--quick", "--no-progress", "--out", str(tmp_path)]
    args += ["--kkt-only", "--snr", "inf", "--models", "LISTA"]
    rc = cli.main([*args, "--lam-kkt", "0.05", "--lam-kkt-start", "0.4", "--kkt-step", "3"])
    assert rc == 0
    data = json.loads((tmp_path / "lista_quick.json").read_text())
    curves = data["by_snr"]["inf"]["nmse_db"]
    power = data["config"]["kkt_power"]
    label = f"LISTA (KKT loss, lam=0.4->0.05, t=3/L, |r|^{power})"
    assert list(curves) == ["ISTA", "FISTA", "AMP", "BG-AMP", label]  # no supervised run
    # the residual's step changes the training; so does its power
    for step, pw in (("1", power), ("3", 3 - power)):
        other = tmp_path / f"other{step}{pw}"
        args[args.index("--out") + 1] = str(other)
        more = ["--lam-kkt", "0.05", "--lam-kkt-start", "0.4", "--kkt-step", step]
        assert cli.main([*args, *more, "--kkt-power", str(pw)]) == 0
        curves2 = json.loads((other / "lista_quick.json").read_text())["by_snr"]["inf"]["nmse_db"]
        label2 = f"LISTA (KKT loss, lam=0.4->0.05, t={step}/L, |r|^{pw})"
        assert curves2[label2] != curves[label]
    with pytest.raises(SystemExit):
        cli.main([*args, "--kkt-step", "0"])
