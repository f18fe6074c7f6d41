"""Audit of 14 December (benchmark files): every model file a benchmark writes is checked
before any work (as the results files are), with one line and exit status 2, instead of a
traceback after the training."""

from __future__ import annotations

import pytest

from unrollsci import cli


def _never(what: str):
    def fail(*args, **kwargs):
        raise AssertionError(f"{what} ran: the bad output path was not refused first")

    return fail


def _refused(capsys, argv: list[str], *names: str) -> str:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "error: Expected" in err[-1], err
    assert all(name in err[-1] for name in names), err[-1]
    return err[-1]


def _lista(tmp_path, *more: str) -> list[str]:
    args = ["bench", "lista", "--quick", "--no-progress", "--out", str(tmp_path / "r")]
    return [*args, "--staged", "1", "--models", "LISTA", "--snr", "inf", *more]


def test_lista_checkpoints_naming_a_file_is_refused_before_training(tmp_path, capsys, monkeypatch):
    import unrollsci.bench.lista as lista

    monkeypatch.setattr(lista, "train_staged", _never("training"))
    afile = tmp_path / "afile"
    afile.write_text("data")
    line = _refused(capsys, _lista(tmp_path, "--checkpoints", str(afile)), "--checkpoints", "afile")
    assert "folder" in line
    assert afile.read_text() == "data"


def test_lista_checkpoint_path_that_is_a_directory_is_refused_before_training(
    tmp_path, capsys, monkeypatch
):
    import unrollsci.bench.lista as lista

    monkeypatch.setattr(lista, "train_staged", _never("training"))
    ck = tmp_path / "ck"
    (ck / "LISTA_snrinf_quick.pt").mkdir(parents=True)
    _refused(capsys, _lista(tmp_path, "--checkpoints", str(ck)), "LISTA_snrinf_quick.pt")
    assert not (tmp_path / "r").exists()  # nothing written


def test_lista_checkpoints_into_a_new_nested_folder(tmp_path):
    """The folder is no longer made by the benchmark's loop: save_checkpoint makes it."""
    from unrollsci.train import load_checkpoint

    ck = tmp_path / "a" / "b"
    assert cli.main(_lista(tmp_path, "--checkpoints", str(ck))) == 0
    assert load_checkpoint(ck / "LISTA_snrinf_quick.pt").num_layers >= 1


def test_graph_model_path_that_is_a_directory_is_refused_before_training(
    tmp_path, capsys, monkeypatch
):
    import unrollsci.bench.graph as graph

    monkeypatch.setattr(graph, "train_models", _never("training"))
    models = tmp_path / "gm"
    (models / "graph_scalar.pt").mkdir(parents=True)
    argv = ["bench", "graph", "--quick", "--modes", "scalar", "--save-models", str(models)]
    _refused(capsys, [*argv, "--out", str(tmp_path / "r")], "graph_scalar.pt", "--save-models")


def test_ct_model_path_that_is_a_directory_is_refused_before_training(
    tmp_path, capsys, monkeypatch
):
    import unrollsci.imaging as imaging

    monkeypatch.setattr(imaging, "UnrolledCT", _never("building the network"))
    (tmp_path / "ct_unrolled_lip10_quick.pt").mkdir()
    argv = ["bench", "ct", "--quick", "--out", str(tmp_path)]
    _refused(capsys, argv, "ct_unrolled_lip10_quick.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct_unrolled_lip10_quick.pt"]
