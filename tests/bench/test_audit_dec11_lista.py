"""Round dec11 of the audits ("dec11" names the round, not a date): ``bench lista``'s
options are checked before any training."""

from __future__ import annotations

import pytest
import torch

from unrollsci import cli
from unrollsci.bench import lista


def _exit_2(argv, capsys, text):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert text in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra",
    [
        ["--checkpoints", "CK"],
        ["--resume", "DIR"],
        ["--decay-rate", "0.5"],
        ["--set", "batch_scale=2"],
    ],
)
def test_staged_options_without_staged_are_refused(tmp_path, capsys, monkeypatch, extra):
    """Without --staged these were ignored without a word (a plain training ran)."""
    (tmp_path / "DIR").mkdir()
    extra = [str(tmp_path / e) if e in ("CK", "DIR") else e for e in extra]
    monkeypatch.setattr(lista, "make_problem", _no_training)
    argv = ["bench", "lista", "--quick", "--out", str(tmp_path), "--models", "ALISTA", *extra]
    _exit_2(argv, capsys, "only with --staged")


def test_start_layer_without_resume_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(lista, "make_problem", _no_training)
    argv = ["bench", "lista", "--quick", "--out", str(tmp_path), "--models", "ALISTA"]
    _exit_2([*argv, "--staged", "1", "--start-layer", "3"], capsys, "only with --resume")


def test_staged_kkt_only_is_refused(tmp_path, capsys, monkeypatch):
    """--staged --kkt-only trained LISTA with the MSE loss under a 'KKT loss' label."""
    monkeypatch.setattr(lista, "make_problem", _no_training)
    argv = ["bench", "lista", "--quick", "--out", str(tmp_path), "--models", "LISTA-CP"]
    _exit_2([*argv, "--staged", "1", "--kkt-only"], capsys, "--kkt-only does not apply")


def test_resume_checks_every_checkpoint_before_training(tmp_path, capsys, monkeypatch):
    """A missing checkpoint of the second model (or SNR) was found only after the first
    one had trained (hours in a full run)."""
    ck = tmp_path / "ck"
    ck.mkdir()
    torch.save({"x": 1}, ck / "ALISTA_snrinf_quick.pt")  # the first exists, LAMP's not
    monkeypatch.setattr(lista, "make_problem", _no_training)
    argv = ["bench", "lista", "--quick", "--out", str(tmp_path / "o"), "--staged", "1"]
    argv += ["--models", "ALISTA", "LAMP", "--snr", "inf", "--resume", str(ck)]
    _exit_2(argv, capsys, "LAMP_snrinf_quick.pt")


def _no_training(*args, **kwargs):
    raise AssertionError("training started before the options were checked")
