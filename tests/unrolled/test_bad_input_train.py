"""Checkpoint safety and training-loop errors (save_checkpoint, load_checkpoint, fit).

A checkpoint is read with weights_only=True and its model is built only from registered
classes: a file can neither run code nor call a callable it names. Saving is atomic.
fit / fit_preconditioner refuse arguments and data that would train on nothing.
"""

from __future__ import annotations

import importlib
import os
import shlex
import sys

import numpy as np
import pytest
import torch
from torch import nn

from unrollsci.operators import Convolution, Mask, MatrixOperator, SparseOperator
from unrollsci.train import _config as train  # the registry (_USER) and the encoding
from unrollsci.train import (
    fit,
    load_checkpoint,
    register_checkpoint_class,
    registered_checkpoint_classes,
    save_checkpoint,
)
from unrollsci.unrolled import ALISTA, LISTA


class _MakesMarker:
    """Unpickling this runs ``os.mkdir(marker)``: it creates the marker."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


class Toy(nn.Module):
    def __init__(self, width: int = 3, opts: dict | None = None) -> None:
        super().__init__()
        self.width, self.opts = width, opts or {}
        self.w = nn.Parameter(torch.linspace(0.5, 1.5, width))

    def forward(self, x):
        return x * self.w

    def get_config(self):
        return {"width": self.width, "opts": self.opts}


@pytest.fixture
def registry(monkeypatch):
    """Classes registered by a test are forgotten after it."""
    monkeypatch.setattr(train, "_USER", {})
    return train._USER


def _lista(seed: int = 0) -> LISTA:
    g = torch.Generator().manual_seed(seed)
    return LISTA(MatrixOperator(torch.randn(5, 8, generator=g, dtype=torch.float64)), 2)


def _payload(cls_name, config, state=None, fmt="unrollsci-checkpoint-2"):
    return {"format": fmt, "class": cls_name, "config": config, "state_dict": state or {}}


# ------------------------------------------------------------- code never runs on load
@pytest.mark.parametrize("where", ["config", "top", "state_dict"])
def test_pickled_reduce_is_refused_and_never_runs(tmp_path, where):
    marker = tmp_path / "pwned"
    evil = _MakesMarker(str(marker))
    good = _lista()
    if where == "config":
        payload = _payload("unrollsci.unrolled:LISTA", {**good.get_config(), "lam": evil})
    elif where == "state_dict":
        payload = _payload("unrollsci.unrolled:LISTA", {"num_layers": 2}, {"w": evil})
    else:
        payload = evil
    path = tmp_path / "evil.pt"
    torch.save(payload, path)
    for kw in ({}, {"expected": LISTA}):
        with pytest.raises(
            ValueError,
            match=r"evil.pt holds pickled Python objects \((os|posix|nt).mkdir\) and was not loaded",
        ):
            load_checkpoint(path, **kw)
    assert not marker.exists()
    # the file really is malicious: a full unpickler runs it (what load_checkpoint did before)
    torch.load(path, weights_only=False)
    assert marker.exists()


def _marker_config(name, marker):
    """Keyword arguments with which the callable ``name`` creates the file ``marker``."""
    code = f"open({str(marker)!r}, 'w').close()"
    return {
        "os:system": {"command": shlex.join([sys.executable, "-c", code])},
        "subprocess:run": {"args": [sys.executable, "-c", code]},
        "os:mkdir": {"path": str(marker)},
        "builtins:open": {"file": str(marker), "mode": "w"},
    }[name]


@pytest.mark.parametrize("fmt", ["unrollsci-checkpoint-1", "unrollsci-checkpoint-2"])
@pytest.mark.parametrize("name", ["os:system", "subprocess:run", "os:mkdir", "builtins:open"])
def test_unregistered_class_path_is_never_called(tmp_path, fmt, name):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save(_payload(name, _marker_config(name, marker), fmt=fmt), path)
    with pytest.raises(ValueError, match=f"'{name}', which is not a registered checkpoint"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="not a registered checkpoint class"):
        load_checkpoint(path, expected=nn.Module)
    assert not marker.exists()
    # the file really is malicious: calling what it names with its stored config (what a
    # loader doing cls(**config) would run) creates the marker
    stored = torch.load(path, weights_only=True)
    module, _, attr = stored["class"].partition(":")
    result = getattr(importlib.import_module(module), attr)(**stored["config"])
    if hasattr(result, "close"):
        result.close()
    assert marker.exists()


def test_nested_object_name_must_be_registered(tmp_path):
    cfg = {**train._encode(_lista().get_config(), "config")}
    cfg["operator"] = {train._OBJECT: "os:system", "config": {"command": "true"}}
    torch.save(_payload("unrollsci.unrolled:LISTA", cfg), tmp_path / "n.pt")
    with pytest.raises(ValueError, match="'os:system', which is not a registered"):
        load_checkpoint(tmp_path / "n.pt")


def test_class_without_colon(tmp_path):
    torch.save(_payload("LISTA", {}), tmp_path / "c.pt")
    with pytest.raises(
        ValueError, match=r"expected its class as a name 'module:Class' \(got 'LISTA'"
    ):
        load_checkpoint(tmp_path / "c.pt")


# ------------------------------------------------------------------- unreadable files
def test_unreadable_files_name_the_file(tmp_path):
    good = save_checkpoint(_lista(), tmp_path / "good.pt")
    data = good.read_bytes()
    cases = {
        "empty.pt": (b"", "is empty"),
        "trunc.pt": (data[: len(data) // 2], "could not be read"),
        "text.pt": (b"this is a text file\n", "could not be read"),
        "head.pt": (data[:10], "could not be read"),
    }
    for name, (content, msg) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=msg) as info:
            load_checkpoint(tmp_path / name)
        assert str(tmp_path / name) in str(info.value)
        assert "save_checkpoint" in str(info.value)  # says what was expected
    torch.save(torch.ones(3), tmp_path / "tensor.pt")
    with pytest.raises(ValueError, match="tensor.pt is not an unrollsci checkpoint.*got Tensor"):
        load_checkpoint(tmp_path / "tensor.pt")
    torch.save({"format": "other"}, tmp_path / "fmt.pt")
    with pytest.raises(ValueError, match="got format 'other'"):
        load_checkpoint(tmp_path / "fmt.pt")
    with pytest.raises(FileNotFoundError, match="No checkpoint file at"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        load_checkpoint(tmp_path)


def test_wrong_class_and_mismatched_weights(tmp_path):
    path = save_checkpoint(ALISTA(MatrixOperator(torch.randn(5, 8)), 2), tmp_path / "a.pt")
    with pytest.raises(ValueError, match=r"a.pt holds a ALISTA, expected LISTA"):
        load_checkpoint(path, expected=LISTA)
    payload = torch.load(path, weights_only=True)
    payload["config"]["num_layers"] = 3
    torch.save(payload, path)
    with pytest.raises(ValueError, match="its weights do not fit the rebuilt ALISTA"):
        load_checkpoint(path)
    payload["config"]["no_such_argument"] = 1
    torch.save(payload, path)
    with pytest.raises(ValueError, match="could not rebuild unrollsci.unrolled:ALISTA"):
        load_checkpoint(path)


# ----------------------------------------------------------------- old (format 1) files
def test_format1_checkpoint_with_pickled_operator_still_loads(tmp_path):
    model = _lista()
    with torch.no_grad():
        model.theta.add_(0.1)
    cfg = model.get_config()  # holds the MatrixOperator object, as format 1 stored it
    payload = _payload(
        "unrollsci.unrolled._lista:LISTA", cfg, model.state_dict(), fmt="unrollsci-checkpoint-1"
    )
    torch.save(payload, tmp_path / "old.pt")
    again = load_checkpoint(tmp_path / "old.pt", expected=LISTA)
    y = torch.randn(3, 5, dtype=torch.float64)
    assert torch.equal(again(y), model(y))
    assert again.operator is not cfg["operator"]  # rebuilt through its constructor


# --------------------------------------------------------------------- what is stored
def test_saved_file_is_plain_data(tmp_path):
    path = save_checkpoint(_lista(), tmp_path / "m.pt", extra={"note": "x", "ns": [1, 2]})
    payload = torch.load(path, weights_only=True)  # torch's restricted unpickler suffices
    assert payload["class"] == "unrollsci.unrolled:LISTA"
    assert payload["config"]["operator"][train._OBJECT] == "unrollsci.operators:MatrixOperator"
    assert payload["extra"] == {"note": "x", "ns": [1, 2]}


@pytest.mark.parametrize(
    "make_op",
    [
        lambda a: SparseOperator(a.to_sparse_csr()),
        lambda a: Convolution(torch.tensor([0.2, 1.0, 0.3], dtype=a.dtype), (8,)) * 0.5,
        lambda a: MatrixOperator(a) @ Mask(torch.arange(8) % 3 != 0),
        lambda a: MatrixOperator(a) + MatrixOperator(2 * a),
        lambda a: MatrixOperator(a.T).T,
        lambda a: MatrixOperator(nn.Parameter(a.clone())),
        lambda a: Mask(torch.arange(8) % 2 == 0, subsample=True),
    ],
    ids=["sparse", "conv-scaled", "composed-mask", "sum", "adjoint", "parameter", "subsample"],
)
def test_operators_roundtrip(tmp_path, make_op):
    a = torch.randn(8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    model = LISTA(make_op(a), 2, dtype=torch.float64)
    again = load_checkpoint(save_checkpoint(model, tmp_path / "m.pt"), expected=LISTA)
    assert type(again.operator) is type(model.operator)
    y = torch.randn(3, model.m, dtype=torch.float64)
    torch.testing.assert_close(again(y), model(y), rtol=0, atol=0)
    x = torch.randn(3, model.n, dtype=torch.float64)
    torch.testing.assert_close(again.operator(x), model.operator(x), rtol=0, atol=1e-15)


def test_unstorable_config_is_refused_before_writing(tmp_path, registry):
    register_checkpoint_class(Toy)
    path = tmp_path / "t.pt"
    with pytest.raises(
        TypeError, match=r"config\['opts'\]\['f'\] in a checkpoint: it is a function"
    ):
        save_checkpoint(Toy(opts={"f": lambda x: x}), path)
    assert not path.exists()
    with pytest.raises(TypeError, match=r"extra\['obj'\].*it is a object"):
        save_checkpoint(Toy(), path, extra={"obj": object()})
    with pytest.raises(TypeError, match=r"expected a dict with string keys \(got the key 1\)"):
        save_checkpoint(Toy(opts={1: 2}), path)
    assert not path.exists()


# ------------------------------------------------------------------------ atomic save
def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch, registry):
    register_checkpoint_class(Toy)
    path = tmp_path / "m.pt"
    save_checkpoint(Toy(width=4), path)
    before = path.read_bytes()
    # a config that cannot be stored
    with pytest.raises(TypeError, match="function"):
        save_checkpoint(Toy(opts={"f": print}), path)
    # the write itself fails half way
    real_save = torch.save

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(Toy(width=7), path)
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == before
    assert load_checkpoint(path).width == 4
    assert sorted(os.listdir(tmp_path)) == ["m.pt"]  # no temporary file left
    save_checkpoint(Toy(width=5), path)  # an explicit path may be replaced
    assert load_checkpoint(path).width == 5
    with pytest.raises(IsADirectoryError, match="is a directory"):
        save_checkpoint(Toy(), tmp_path)


# ------------------------------------------------------------------------- registry
def test_register_checkpoint_class(tmp_path, registry):
    path = save_checkpoint(Toy(width=2), tmp_path / "t.pt")
    with pytest.raises(ValueError, match="Toy', which is not a registered checkpoint class"):
        load_checkpoint(path)
    assert type(load_checkpoint(path, expected=Toy)) is Toy  # the caller names the class
    assert register_checkpoint_class(Toy) is Toy
    assert f"{Toy.__module__}:Toy" in registered_checkpoint_classes()
    assert "unrollsci.precond:LearnedPreconditioner" in registered_checkpoint_classes()
    again = load_checkpoint(path)
    assert type(again) is Toy and again.width == 2
    torch.testing.assert_close(again.w, torch.linspace(0.5, 1.5, 2))


def test_register_checkpoint_class_errors(registry):
    with pytest.raises(TypeError, match="Expected a class to register"):
        register_checkpoint_class(Toy())
    with pytest.raises(TypeError, match="get_config"):
        register_checkpoint_class(nn.Linear)
    with pytest.raises(ValueError, match="'module:Class'"):
        register_checkpoint_class(Toy, name="Toy")
    with pytest.raises(ValueError, match="taken by another class"):
        register_checkpoint_class(Toy, name="unrollsci.unrolled:LISTA")


def test_registered_name_is_used_for_saving(tmp_path, registry):
    register_checkpoint_class(Toy, name="mylab.models:Toy")
    path = save_checkpoint(Toy(), tmp_path / "t.pt")
    assert torch.load(path, weights_only=True)["class"] == "mylab.models:Toy"
    assert type(load_checkpoint(path)) is Toy


# ------------------------------------------------------------- precond: ordering config
def test_callable_ordering_is_refused_named_ordering_roundtrips(tmp_path):
    from unrollsci.precond import LearnedPreconditioner, diffusion2d, grid_orderings

    path = tmp_path / "p.pt"
    model = LearnedPreconditioner("factor", layers=0, seed=0, ordering=lambda a: grid_orderings(4))
    with pytest.raises(TypeError, match=r"config\['ordering'\].*stores no code.*ordering='grid'"):
        save_checkpoint(model, path)
    assert not path.exists()
    perms = grid_orderings(4)  # {name: numpy permutation}
    model = LearnedPreconditioner("factor", layers=0, seed=0, ordering=perms)
    back = load_checkpoint(save_checkpoint(model, path), expected=LearnedPreconditioner)
    assert set(back.ordering) == set(perms)
    for k, p in perms.items():
        assert isinstance(back.ordering[k], np.ndarray) and np.array_equal(back.ordering[k], p)
    a = diffusion2d(4, seed=0)
    r = torch.randn(2, 16, dtype=torch.float64)
    assert torch.equal(back.build(a)(r), model.build(a)(r))


# ------------------------------------------------------------------------ fit errors
def _loss(model, batch):
    return (model(batch) - 2 * batch).pow(2).mean()


X = torch.randn(16, 3)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"batch_size": 0}, ValueError, r"'batch_size' >= 1 \(got 0\)"),
        (
            {"batch_size": 2.5},
            TypeError,
            r"'batch_size' to be an integer or None \(got float 2.5\)",
        ),
        ({"epochs": 0}, ValueError, r"'epochs' >= 1 \(got 0\)"),
        ({"steps_per_epoch": 0}, ValueError, r"'steps_per_epoch' >= 1 \(got 0\)"),
        ({"stage_epochs": 0}, ValueError, r"'stage_epochs' >= 1"),
        ({"patience": 0}, ValueError, r"'patience' >= 1"),
        ({"lr": 0.0}, ValueError, r"'lr' > 0 \(got 0.0\)"),
        ({"lr": float("nan")}, ValueError, r"'lr' to be finite"),
        ({"lr": "0.1"}, TypeError, r"'lr' to be a real number \(got str\)"),
        ({"weight_decay": -1.0}, ValueError, r"'weight_decay' >= 0"),
        ({"clip_grad": 0.0}, ValueError, r"'clip_grad' > 0"),
        ({"lr_decay": 1.5}, ValueError, r"0 < lr_decay <= 1 \(got 1.5\)"),
        ({"seed": 1.5}, TypeError, r"'seed' to be an integer \(got float 1.5\)"),
    ],
)
def test_fit_argument_errors(kwargs, exc, match):
    model = Toy()
    before = model.w.detach().clone()
    with pytest.raises(exc, match=match):
        fit(model, _loss, X, progress=False, **kwargs)
    assert torch.equal(model.w, before)  # refused up front, nothing trained


def test_fit_data_that_gives_no_batch():
    with pytest.raises(ValueError, match="'train_data' to hold at least one batch.*empty list"):
        fit(Toy(), _loss, [], progress=False)
    with pytest.raises(ValueError, match=r"at least one sample \(got a tensor of shape \(0, 3\)"):
        fit(Toy(), _loss, torch.ones(0, 3), progress=False)
    with pytest.raises(ValueError, match="one-shot iterator.*first of 3 epochs"):
        fit(Toy(), _loss, (b for b in X.split(4)), epochs=3, progress=False)
    with pytest.raises(ValueError, match="Epoch 0 saw no training batch"):
        fit(Toy(), _loss, (b for b in []), epochs=1, progress=False)

    class Empty:  # re-iterable, but yields nothing
        def __iter__(self):
            return iter(())

    with pytest.raises(ValueError, match="Epoch 0 saw no training batch: train_data \\(Empty\\)"):
        fit(Toy(), _loss, Empty(), epochs=2, progress=False)
    with pytest.raises(ValueError, match="val_data yielded no batch"):
        fit(Toy(), _loss, X, val_data=Empty(), epochs=2, progress=False)
    with pytest.raises(ValueError, match="'val_data' is a one-shot iterator"):
        fit(Toy(), _loss, X, val_data=iter([X]), epochs=2, progress=False)
    with pytest.raises(TypeError, match=r"'train_data' to be tensors.*\(got int\)"):
        fit(Toy(), _loss, 5, progress=False)
    hist = fit(Toy(), _loss, (b for b in X.split(4)), epochs=1, progress=False)
    assert len(hist.train_loss) == 1 and hist.train_loss[0] > 0  # one pass is fine


def test_fit_loss_must_be_a_scalar_with_gradient():
    with pytest.raises(ValueError, match=r"scalar tensor \(training batch; got shape \(16, 3\)\)"):
        fit(Toy(), lambda m, b: (m(b) - b).pow(2), X, progress=False)
    with pytest.raises(TypeError, match=r"scalar torch.Tensor \(training batch; got float\)"):
        fit(Toy(), lambda m, b: 1.0, X, progress=False)
    with pytest.raises(ValueError, match="loss to depend on the model's trainable parameters"):
        fit(Toy(), lambda m, b: b.sum(), X, progress=False)
    with pytest.raises(ValueError, match=r"validation batch; got shape \(16, 3\)"):
        fit(Toy(), lambda m, b: _loss(m, b) if m.training else m(b), X, val_data=X, progress=False)
    with pytest.raises(TypeError, match="loss_fn to be callable"):
        fit(Toy(), None, X, progress=False)
    hist = fit(Toy(), lambda m, b: _loss(m, b).reshape(1), X, epochs=2, progress=False)
    assert len(hist.train_loss) == 2  # a one-element loss is a scalar


def test_fit_checkpoint_checked_before_training(tmp_path):
    model = nn.Linear(3, 3)
    before = model.weight.detach().clone()
    with pytest.raises(TypeError, match="checkpoint= needs a model with get_config"):
        fit(model, lambda m, b: m(b).pow(2).mean(), X, checkpoint=tmp_path / "c.pt")
    assert torch.equal(model.weight, before)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        fit(Toy(), _loss, X, checkpoint=tmp_path, progress=False)


# -------------------------------------------------------------- fit_preconditioner
def test_fit_preconditioner_errors(tmp_path):
    from unrollsci.precond import LearnedPreconditioner, diffusion2d, fit_preconditioner

    a = [diffusion2d(4, seed=0)]
    model = LearnedPreconditioner("factor", layers=0, seed=0)
    with pytest.raises(ValueError, match="at least one training matrix"):
        fit_preconditioner(model, [])
    with pytest.raises(TypeError, match=r"'matrices' to be a list.*\(got generator\)"):
        fit_preconditioner(model, (m for m in a))
    with pytest.raises(ValueError, match=r"'epochs' >= 1 \(got 0\)"):
        fit_preconditioner(model, a, epochs=0)
    with pytest.raises(ValueError, match=r"'n_rhs' >= 1 \(got 0\)"):
        fit_preconditioner(model, a, n_rhs=0)
    with pytest.raises(ValueError, match=r"'lr' > 0 \(got -1"):
        fit_preconditioner(model, a, lr=-1.0)
    with pytest.raises(ValueError, match=r"'batch_size' >= 1 \(got 0\)"):
        fit_preconditioner(model, a, epochs=1, batch_size=0)
    with pytest.raises(TypeError, match="Expected a LearnedPreconditioner"):
        fit_preconditioner(nn.Linear(2, 2), a)


def test_fit_preconditioner_checkpoint_holds_the_kept_model(tmp_path):
    from unrollsci.precond import LearnedPreconditioner, diffusion2d, fit_preconditioner

    train_m = [diffusion2d(5, seed=s) for s in range(2)]
    model = LearnedPreconditioner("factor", layers=0, seed=0)
    path = tmp_path / "p.pt"
    hist = fit_preconditioner(
        model,
        train_m,
        val_matrices=[diffusion2d(5, seed=10)],
        epochs=2,
        lr=0.5,  # so large that no epoch beats the base factor: the base is kept
        steps=5,
        n_rhs=2,
        checkpoint=path,
    )
    assert hist.kept_initial  # the case where fit's own last save was not the kept model
    back = load_checkpoint(path, expected=LearnedPreconditioner)
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
