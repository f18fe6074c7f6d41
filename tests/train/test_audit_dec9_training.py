"""Training entry points an audit found wrong: ranks of a distributed fit with different
arguments (silently diverging weights, or a deadlock), fit_layerwise's bare errors on an
empty or misshapen validation set, a checkpoint path that cannot be written found only after
training, and a resume with fewer epochs than the checkpoint already did."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unrollsci.operators import MatrixOperator
from unrollsci.train import fit, fit_layerwise
from unrollsci.train._distributed import spawn
from unrollsci.unrolled import ALISTA, LISTA


def _lista(layers=2):
    torch.manual_seed(0)
    return LISTA(MatrixOperator(torch.randn(6, 10, dtype=torch.float64)), layers, lam=0.05)


def _loss(model, batch):
    y, x = batch
    return (model(y) - x).pow(2).mean()


def _data(n=12):
    g = torch.Generator().manual_seed(1)
    y = torch.randn(n, 6, generator=g, dtype=torch.float64)
    return y, torch.randn(n, 10, generator=g, dtype=torch.float64)


# ---------------------------------------------------------------- item 3: distributed args
def _linear_loss(m, b):
    return (m(b[0]) - b[1]).pow(2).mean()


def _mismatch_worker(rank: int, out: str) -> None:
    """Rank 1 passes another lr, then another batch_size; each rank records its error."""
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, generator=g, dtype=torch.float64)
    data = (x, x.sum(1, keepdim=True))
    for name, value in (("lr", 1.0), ("batch_size", 4)):
        torch.manual_seed(0)
        kw = dict(epochs=2, batch_size=8, progress=False)
        if rank == 1:
            kw[name] = value
        try:
            fit(torch.nn.Linear(3, 1).double(), _linear_loss, data, **kw)
            msg = "no error"
        except ValueError as exc:
            msg = f"ValueError: {exc}"
        Path(out, f"{name}_{rank}.txt").write_text(msg)
        if msg == "no error":  # both ranks got here: a different batch_size would hang
            return


def test_distributed_fit_refuses_different_arguments_on_the_ranks(tmp_path):
    spawn(_mismatch_worker, 2, str(tmp_path))
    for name, mine in (("lr", "lr=1.0"), ("batch_size", "batch_size=4")):
        for rank in (0, 1):
            path = tmp_path / f"{name}_{rank}.txt"
            assert path.exists(), f"rank {rank} did not reach the {name} case"
            msg = path.read_text()
            assert msg.startswith("ValueError: Expected the same training arguments"), msg
            assert f"different {name} " in msg, msg
            assert (mine if rank == 1 else f"{name}=") in msg, msg


def test_args_digest_and_differing_args():
    from unrollsci.train._distributed import (
        DistContext,
        args_digest,
        check_same_args,
        differing_args,
    )

    a = {"lr": 1e-3, "batch_size": 8, "seed": 0, "clip_grad": None}
    same = args_digest(dict(a, lr=0.001, batch_size=torch.tensor(8).item()))
    assert same == args_digest(a)
    import numpy as np

    assert args_digest(dict(a, batch_size=np.int64(8))) == args_digest(a)
    names = sorted(a)
    other = args_digest(dict(a, lr=1.0, clip_grad=1.0))
    assert differing_args([args_digest(a), same], names) == []
    assert differing_args([args_digest(a), other, same], names) == ["clip_grad", "lr"]
    assert all(v == int(v) and 0 <= v < 2**53 for v in other)  # exact in float64
    check_same_args(DistContext(), a)  # one process: nothing to compare


# ---------------------------------------------------------------- item 8: fit_layerwise val
def _alista_case():
    g0 = torch.Generator().manual_seed(0)
    A = torch.randn(20, 40, generator=g0) / 20**0.5

    def draw(g, n=16):
        x = torch.randn(n, 40, generator=g) * (torch.rand(n, 40, generator=g) < 0.1)
        return x @ A.T, x

    return ALISTA(MatrixOperator(A), 3, lam=0.1), draw, draw(g0)


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda y, x: (y[:0], x[:0]), r"at least one sample.*got y of shape \(0, 20\)"),
        (lambda y, x: (y, x[:, :10]), r"x of shape \(16, 40\).*got \(16, 10\)"),
        (lambda y, x: (y, x[:5]), r"16 rows.*got \(5, 40\)"),
        (lambda y, x: (y[:, :7], x), r"y of shape \(16, 20\).*got \(16, 7\)"),
        (lambda y, x: (y, x[0]), r"x of shape \(16, 40\).*got \(40,\)"),
        (lambda y, x: (y.tolist(), x), r"tensors \(got y of type list\)"),
    ],
)
def test_fit_layerwise_checks_val_data_up_front(bad, match):
    model, draw, (y, x) = _alista_case()
    calls = []

    def sampler(g):
        calls.append(1)
        return draw(g)

    with pytest.raises((ValueError, TypeError), match=match):
        fit_layerwise(model, sampler, bad(y, x), max_steps=2, val_every=1)
    assert calls == []  # refused before any training step


def test_layer_nmse_db_on_no_sample_is_a_value_error():
    from unrollsci.train._layerwise import layer_nmse_db

    model, _, (y, x) = _alista_case()
    with pytest.raises(ValueError, match="at least one sample"):
        layer_nmse_db(model, y[:0], x[:0])


# ---------------------------------------------------------------- item 10: checkpoint path
@pytest.mark.parametrize("sub", ["afile/ck.pt", "afile/deeper/ck.pt"])
def test_checkpoint_under_a_file_is_refused_before_training(tmp_path, sub):
    (tmp_path / "afile").write_text("x")
    path = tmp_path / sub
    epochs = []
    with pytest.raises(NotADirectoryError, match=r"'checkpoint'.*" + str(path)):
        fit(_lista(), _loss, _data(), epochs=3, checkpoint=path, checkpoint_every=3,
            callback=lambda e, *_: epochs.append(e), progress=False)  # fmt: skip
    assert epochs == []


def test_checkpoint_that_is_a_directory_is_refused_before_training(tmp_path):
    epochs = []
    with pytest.raises(IsADirectoryError, match=str(tmp_path)):
        fit(_lista(), _loss, _data(), epochs=2, checkpoint=tmp_path,
            callback=lambda e, *_: epochs.append(e), progress=False)  # fmt: skip
    assert epochs == []


def test_checkpoint_in_a_new_folder_still_works(tmp_path):
    path = tmp_path / "new" / "sub" / "ck.pt"
    fit(_lista(), _loss, _data(), epochs=1, checkpoint=path, progress=False)
    assert path.is_file()


# ---------------------------------------------------------------- item 11: resume epochs
def test_resume_with_fewer_epochs_than_done_is_refused(tmp_path):
    path = tmp_path / "r.pt"
    fit(_lista(), _loss, _data(), epochs=3, checkpoint=path, progress=False)
    with pytest.raises(ValueError, match=r"Expected epochs >= 3 \(got 2\)"):
        fit(_lista(), _loss, _data(), epochs=2, resume=path, progress=False)
    # the same or more epochs: accepted as before
    same = fit(_lista(), _loss, _data(), epochs=3, resume=path, progress=False)
    more = fit(_lista(), _loss, _data(), epochs=4, resume=path, progress=False)
    assert len(same.train_loss) == 3 and len(more.train_loss) == 4


def test_layerwise_resume_with_fewer_epochs_per_stage_is_refused(tmp_path):
    path = tmp_path / "lw.pt"
    fit(_lista(), _loss, _data(), epochs=2, schedule="layerwise", checkpoint=path,
        progress=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"Expected epochs >= 2 \(got 1\)"):
        fit(_lista(), _loss, _data(), epochs=1, schedule="layerwise", resume=path,
            progress=False)  # fmt: skip
