"""fit / fit_preconditioner (training audit, dec10 round): the sketched Frobenius loss is one
number per system and weights (resume == uninterrupted); resume refuses val_data /
lr_factor added or removed, and another per-stage length of a layer-wise run once a stage
has finished; fit_preconditioner checks fit's arguments before building any system; no
progress bar (and no crash) without a usable stderr; an epoch's train_loss weights each step
by its samples."""

from __future__ import annotations

import errno
import io
import math
import sys

import numpy as np
import pytest
import torch

import unrollsci.precond._training as training
from unrollsci.operators import MatrixOperator
from unrollsci.precond import (
    LearnedPreconditioner,
    diffusion2d,
    fit_preconditioner,
    make_batches,
    pcg_loss,
)
from unrollsci.train import fit
from unrollsci.train._distributed import DistContext
from unrollsci.unrolled import LISTA


def _lista(layers: int = 2, samples: int = 16):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 10, generator=g, dtype=torch.float64) / 6**0.5
    x = torch.randn(samples, 10, generator=g, dtype=torch.float64)
    x = x * (torch.rand(samples, 10, generator=g, dtype=torch.float64) < 0.3)
    xv = torch.randn(4, 10, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    model = LISTA(MatrixOperator(a), layers, lam=0.05)
    return model, (x @ a.T, x), (xv @ a.T, xv)


def _mse(model, batch):
    y, x = batch
    return (model(y) - x).pow(2).sum(-1).mean()


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- 1: the Frobenius sketch
def test_frobenius_loss_is_one_number_per_system_and_weights():
    torch.manual_seed(0)
    model = LearnedPreconditioner("factor", hidden=4, layers=1).double()
    a, b = make_batches(model, [diffusion2d(5, seed=1), diffusion2d(6, seed=2)], n_rhs=2)
    fn = pcg_loss(3, "frobenius", 0)
    with torch.no_grad():
        first_a = float(fn(model, a))
        again = [float(fn(model, b)), float(fn(model, a)), float(fn(model, a))]
        fresh = float(pcg_loss(3, "frobenius", 0)(model, a))  # another instance, as a resume
        other_seed = float(pcg_loss(3, "frobenius", 1)(model, a))
    assert again[1] == first_a and again[2] == first_a and fresh == first_a
    assert other_seed != first_a  # the seed still picks the sketch


def test_frobenius_fit_preconditioner_resume_equals_uninterrupted(tmp_path):
    mats = [diffusion2d(5, seed=i) for i in range(3)]
    val = [diffusion2d(5, seed=10)]

    def run(epochs, **kw):
        torch.manual_seed(0)
        model = LearnedPreconditioner("factor", hidden=4, layers=1).double()
        hist = fit_preconditioner(
            model, mats, val_matrices=val, steps=3, n_rhs=2, lr=1e-2, epochs=epochs,
            loss="frobenius", keep_base_if_better=False, **kw,
        )  # fmt: skip
        return model, hist

    ref_model, ref = run(4)
    ck = tmp_path / "f.pt"
    run(2, checkpoint=ck)
    model, hist = run(4, checkpoint=ck, resume=ck)
    assert _same(_weights(model), _weights(ref_model))
    assert hist.train_loss == ref.train_loss and hist.val_loss == ref.val_loss
    assert hist.best_val == ref.best_val


# ---------------------------------------------------------------- 2: resume arguments given
@pytest.mark.parametrize(
    ("first", "then", "name"),
    [
        ({"with_val": True}, {"with_val": False}, "val_data"),
        ({"with_val": False}, {"with_val": True}, "val_data"),
        ({"lr_factor": lambda s: 0.5}, {}, "lr_factor"),
        ({}, {"lr_factor": lambda s: 0.5}, "lr_factor"),
    ],
)
def test_resume_refuses_val_data_or_lr_factor_added_or_removed(tmp_path, first, then, name):
    def run(epochs, with_val=True, **kw):
        model, data, val = _lista()
        return fit(
            model, _mse, data, val_data=val if with_val else None, epochs=epochs,
            batch_size=8, progress=False, **kw,
        )  # fmt: skip

    ck = tmp_path / "r.pt"
    run(1, checkpoint=ck, **first)
    with pytest.raises(ValueError, match=rf"expected {name} .*got {name}"):
        run(2, resume=ck, **then)
    run(2, resume=ck, **first)  # the same inputs: resumes


def test_resume_of_a_checkpoint_without_the_given_flags_is_not_refused(tmp_path):
    ck = tmp_path / "old.pt"
    model, data, val = _lista()
    fit(model, _mse, data, val_data=val, epochs=1, batch_size=8, progress=False, checkpoint=ck)
    payload = torch.load(ck, weights_only=True)
    args = payload["extra"]["fit_state"]["args"]
    for key in [k for k in args if k.endswith(" given")]:  # as written before they were stored
        del args[key]
    torch.save(payload, ck)
    model, data, _ = _lista()
    hist = fit(model, _mse, data, epochs=2, batch_size=8, progress=False, resume=ck)
    assert len(hist.train_loss) == 2


# ---------------------------------------------------------------- 3: layer-wise epochs
def _layerwise(epochs, **kw):
    model, data, val = _lista(layers=2)
    hist = fit(
        model, _mse, data, val_data=val, epochs=epochs, batch_size=8, lr=1e-2,
        schedule="layerwise", lr_decay=0.8, progress=False, **kw,
    )  # fmt: skip
    return model, hist


def test_layerwise_resume_refuses_another_epochs_once_a_stage_finished(tmp_path):
    ck = tmp_path / "lw.pt"
    _layerwise(1, checkpoint=ck)  # both stages of 1 epoch finished
    with pytest.raises(ValueError, match=r"finished 2 stage.*Expected epochs=1 \(got 2\)"):
        _layerwise(2, resume=ck)
    _, hist = _layerwise(1, resume=ck)  # the same epochs: nothing left to train
    assert hist.stage == [1, 2]


def test_layerwise_resume_in_the_first_stage_may_grow_epochs(tmp_path):
    ref_model, ref = _layerwise(3)
    ck = tmp_path / "lw.pt"
    _layerwise(2, checkpoint=ck, callback=lambda e, t, v: e == 0)  # halted in stage 1
    model, hist = _layerwise(3, checkpoint=ck, resume=ck)
    assert hist.stage == ref.stage == [1, 1, 1, 2, 2, 2]
    assert hist.train_loss == ref.train_loss and hist.val_loss == ref.val_loss
    assert _same(_weights(model), _weights(ref_model))


# ---------------------------------------------------------------- 4: fit's args first
@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        ({"patience": 0}, ValueError, "patience"),
        ({"batch_size": -1}, ValueError, "batch_size"),
        ({"clip_grad": -1.0}, ValueError, "clip_grad"),
        ({"lr_decay": 2.0}, ValueError, "lr_decay"),
        ({"seed": -1}, ValueError, "seed"),
        ({"epoch": 3}, TypeError, "epoch"),
        ({"val_data": []}, TypeError, "val_matrices"),
        ({"distributed": "yes"}, TypeError, "distributed"),
    ],
)
def test_fit_preconditioner_checks_fit_arguments_before_building_systems(
    monkeypatch, bad, error, match
):
    built = []
    monkeypatch.setattr(training, "make_batches", lambda *a, **k: built.append(1) or [])
    model = LearnedPreconditioner("factor", hidden=4, layers=1).double()
    with pytest.raises(error, match=match):
        fit_preconditioner(model, [diffusion2d(5, seed=0)], epochs=1, **bad)
    assert built == []


# ---------------------------------------------------------------- 5: no usable stderr
class _ClosedStderr(io.TextIOBase):
    """What sys.stderr is in a process started with 2>&- : its descriptor is closed."""

    writes = 0

    def fileno(self) -> int:
        return 2**30  # no such descriptor (EBADF), as a closed fd 2

    def write(self, s: str) -> int:
        type(self).writes += 1
        raise OSError(errno.EBADF, "Bad file descriptor")


@pytest.mark.parametrize("stream", [None, _ClosedStderr()])
def test_progress_without_a_usable_stderr_trains_without_a_bar(monkeypatch, stream):
    monkeypatch.setattr(sys, "stderr", stream)
    model, data, _ = _lista()
    hist = fit(model, _mse, data, epochs=2, batch_size=8, progress=True)
    assert len(hist.train_loss) == 2 and all(math.isfinite(v) for v in hist.train_loss)
    assert _ClosedStderr.writes == 0


# ---------------------------------------------------------------- 6: train_loss weighting
def _recording(calls):
    def loss(model, batch):
        value = _mse(model, batch)
        calls.append((float(value.detach()), batch[0].shape[0]))
        return value

    return loss


def _plain_mean(values):
    total = 0.0
    for v in values:  # fit's order (sum() compensates since Python 3.12)
        total += v
    return total / len(values)


def test_train_loss_weights_a_short_last_batch_by_its_rows():
    calls = []
    model, data, _ = _lista(samples=19)  # batches of 8, 8, 3
    hist = fit(model, _recording(calls), data, epochs=2, batch_size=8, lr=1e-2, progress=False)
    for e in range(2):
        v, n = np.array(calls[3 * e : 3 * e + 3]).T
        assert list(n) == [8, 8, 3]
        assert hist.train_loss[e] == pytest.approx(float((v * n).sum() / n.sum()), rel=1e-13)
        assert abs(hist.train_loss[e] - v.mean()) > 1e-6  # the unweighted mean differs


def test_train_loss_of_equal_batches_is_the_plain_mean_bit_for_bit():
    calls = []
    model, data, _ = _lista(samples=24)  # batches of 8, 8, 8
    hist = fit(model, _recording(calls), data, epochs=1, batch_size=8, lr=1e-2, progress=False)
    assert hist.train_loss[0] == _plain_mean([v for v, _ in calls])


def test_train_loss_of_grouped_batches_is_the_mean_over_batches():
    calls = []
    model, (y, x), _ = _lista(samples=15)
    batches = [(y[i : i + 3], x[i : i + 3]) for i in range(0, 15, 3)]  # 5 batches, 2 per step
    hist = fit(model, _recording(calls), batches, epochs=1, batch_size=2, progress=False)
    assert len(calls) == 5
    assert hist.train_loss[0] == pytest.approx(float(np.mean([v for v, _ in calls])), rel=1e-13)


def test_train_loss_of_a_sampler_weights_its_batches_by_rows():
    calls = []
    model, (y, x), _ = _lista(samples=16)
    sizes = iter([8, 3])

    def sampler(g):
        k = next(sizes)
        return y[:k], x[:k]

    hist = fit(model, _recording(calls), sampler, epochs=1, steps_per_epoch=2, progress=False)
    v, n = np.array(calls).T
    assert list(n) == [8, 3]
    assert hist.train_loss[0] == pytest.approx(float((v * n).sum() / n.sum()), rel=1e-13)


@pytest.mark.parametrize("world", [2, 3])
def test_step_sizes_are_the_global_batch_rows_on_every_rank(world):
    from unrollsci.train._distributed import counted_steps

    y = torch.arange(19.0)[:, None]
    for rank in range(world):
        ctx = DistContext(True, rank, world)
        sizes = [n for *_, n in counted_steps(y, 8, torch.Generator().manual_seed(0), None, ctx)]
        assert sizes == [8, 8, 3]
