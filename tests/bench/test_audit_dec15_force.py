"""Audit round dec15 ("dec15" names the round, not a date): the benchmarks' model files are
a user's files. ``bench lista --checkpoints``, ``bench graph --save-models``, ``bench amg
--save-models`` and ``graph_seeds.py train --models`` replaced existing models silently
(after the training); now an existing model file is refused before any work unless
``--force`` is given (one line, exit status 2), as every other command of the library."""

from __future__ import annotations

import pytest

from unrollsci import cli


def _never(what: str):
    def fail(*args, **kwargs):
        raise AssertionError(f"{what} ran: the existing model file was not refused first")

    return fail


def _refused(capsys, run, *names: str) -> None:
    with pytest.raises(SystemExit) as info:
        run()
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Refusing to write over the existing file" in err[-1], err
    assert "--force" in err[-1] and all(n in err[-1] for n in names), err[-1]


def _lista(tmp_path, *more: str) -> list[str]:
    args = ["bench", "lista", "--quick", "--no-progress", "--out", str(tmp_path / "r")]
    return [*args, "--staged", "1", "--models", "LISTA", "--snr", "inf", *more]


def test_lista_existing_checkpoint_refused_without_force(tmp_path, capsys, monkeypatch):
    import unrollsci.bench.lista as lista

    ck = tmp_path / "ck"
    ck.mkdir()
    old = ck / "LISTA_snrinf_quick.pt"
    old.write_bytes(b"a user's model")
    with monkeypatch.context() as m:
        m.setattr(lista, "train_staged", _never("training"))
        _refused(capsys, lambda: cli.main(_lista(tmp_path, "--checkpoints", str(ck))), old.name)
    assert old.read_bytes() == b"a user's model"
    assert not (tmp_path / "r").exists()
    # with --force it is replaced by the trained model
    from unrollsci.train import load_checkpoint

    assert cli.main(_lista(tmp_path, "--checkpoints", str(ck), "--force")) == 0
    assert load_checkpoint(old).num_layers >= 1


def test_graph_existing_model_refused_without_force(tmp_path, capsys, monkeypatch):
    import unrollsci.bench.graph as graph

    monkeypatch.setattr(graph, "train_models", _never("training"))
    models = tmp_path / "models"
    models.mkdir()
    (models / "graph_scalar.pt").write_bytes(b"keep")
    argv = ["bench", "graph", "--quick", "--modes", "scalar", "--save-models", str(models)]
    argv += ["--out", str(tmp_path / "r")]
    _refused(capsys, lambda: cli.main(argv), "graph_scalar.pt")
    assert (models / "graph_scalar.pt").read_bytes() == b"keep"


def test_amg_existing_model_refused_without_force(tmp_path, capsys, monkeypatch):
    import unrollsci.bench.amg as amg

    monkeypatch.setattr(amg, "run", _never("the benchmark"))
    models = tmp_path / "models"
    models.mkdir()
    (models / "amg_sa.pt").write_bytes(b"keep")
    argv = ["--quick", "--families", "diffusion", "--variants", "sa", "--save-models"]
    argv += [str(models), "--out", str(tmp_path / "r")]
    _refused(capsys, lambda: amg.main(argv), "amg_sa.pt")
    assert (models / "amg_sa.pt").read_bytes() == b"keep"


def test_graph_seeds_existing_model_refused_before_training(tmp_path, capsys, monkeypatch):
    import unrollsci.bench.graph_seeds as seeds

    monkeypatch.setattr(seeds, "train_config", _never("training"))
    models = tmp_path / "m"
    (models / "table_s1").mkdir(parents=True)
    (models / "table_s1" / "graph_window_jacobi.pt").write_bytes(b"keep")
    argv = ["train", "table", "--quick", "--seeds", "0", "1", "--models", str(models)]
    _refused(capsys, lambda: seeds.main(argv), "graph_window_jacobi.pt")
    assert (models / "table_s1" / "graph_window_jacobi.pt").read_bytes() == b"keep"
    assert not (models / "table_s0").exists()  # refused before the first seed trained
    # the same seed twice names one file twice
    with pytest.raises(SystemExit):
        seeds.main(["train", "table", "--quick", "--seeds", "2", "2", "--models", str(models)])
    assert "same file" in capsys.readouterr().err
