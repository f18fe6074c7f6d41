"""fit's distributed, resume, checkpoint and batching options: bad input, and single-process
behaviour (the two-process runs are in test_distributed.py)."""

from __future__ import annotations

import pytest
import torch

from unrollsci.operators import MatrixOperator
from unrollsci.train import fit, is_main_process, save_checkpoint
from unrollsci.train._distributed import DistContext, global_steps
from unrollsci.unrolled import LISTA


def _lista():
    torch.manual_seed(0)
    return LISTA(MatrixOperator(torch.randn(6, 10, dtype=torch.float64)), 2, lam=0.05)


def _loss(model, batch):
    y, x = batch
    return (model(y) - x).pow(2).mean()


def _data(n=12):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randn(
        n, 10, generator=g, dtype=torch.float64
    )


def test_distributed_option_bad_input_and_no_group():
    with pytest.raises(TypeError, match="'distributed' to be None, True or False"):
        fit(_lista(), _loss, _data(), distributed="yes", progress=False)
    with pytest.raises(RuntimeError, match="distributed=True needs an initialized process group"):
        fit(_lista(), _loss, _data(), distributed=True, progress=False)
    hist = fit(_lista(), _loss, _data(), epochs=1, progress=False)  # auto: one process
    assert hist.world_size == 1
    assert is_main_process()


def test_resume_refuses_other_arguments_and_foreign_files(tmp_path):
    path = tmp_path / "c.pt"
    fit(_lista(), _loss, _data(), epochs=2, batch_size=4, checkpoint=path, progress=False)
    with pytest.raises(
        ValueError, match=r"other training arguments: batch_size=5 \(checkpoint: 4\)"
    ):
        fit(_lista(), _loss, _data(), epochs=3, batch_size=5, resume=path, progress=False)
    with pytest.raises(ValueError, match=r"seed=1 \(checkpoint: 0\), lr="):
        fit(_lista(), _loss, _data(), epochs=3, batch_size=4, seed=1, lr=0.1, resume=path,
            progress=False)  # fmt: skip
    plain = save_checkpoint(_lista(), tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="holds no training state"):
        fit(_lista(), _loss, _data(), epochs=3, resume=plain, progress=False)
    with pytest.raises(ValueError, match="was written for a unrollsci.unrolled:LISTA"):
        fit(torch.nn.Linear(6, 10).double(), lambda m, b: (m(b[0]) - b[1]).pow(2).mean(),
            _data(), resume=path, progress=False)  # fmt: skip
    with pytest.raises(TypeError, match="'resume' to be a path"):
        fit(_lista(), _loss, _data(), resume=3, progress=False)
    with pytest.raises(IsADirectoryError, match="'resume' to be a file path"):
        fit(_lista(), _loss, _data(), resume=tmp_path, progress=False)
    with pytest.raises(FileNotFoundError):
        fit(_lista(), _loss, _data(), resume=tmp_path / "none.pt", progress=False)
    with pytest.raises(ValueError, match=r"'checkpoint_every' >= 1 \(got 0\)"):
        fit(_lista(), _loss, _data(), checkpoint_every=0, progress=False)


def test_checkpoint_every_and_resume_of_a_finished_run(tmp_path):
    path = tmp_path / "c.pt"
    model = _lista()
    fit(model, _loss, _data(), epochs=3, checkpoint=path, checkpoint_every=2, progress=False)
    again = _lista()
    hist = fit(again, _loss, _data(), epochs=3, resume=path, progress=False)  # nothing left
    assert len(hist.train_loss) == 3 and hist.resumed_from_epoch == 3
    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters(), strict=True)
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_a_list_of_batches_with_batch_size_averages_their_losses():
    y, x = _data(12)
    items = [(y[i : i + 3], x[i : i + 3]) for i in range(0, 12, 3)]
    grouped = _lista()
    fit(grouped, _loss, items, epochs=2, batch_size=2, lr=1e-2, progress=False)
    # reference: the mean of two losses per step, by hand
    ref = _lista()
    opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    for _ in range(2):
        for i in range(0, 4, 2):
            opt.zero_grad()
            (0.5 * _loss(ref, items[i]) + 0.5 * _loss(ref, items[i + 1])).backward()
            opt.step()
    for a, b in zip(grouped.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_global_batches_are_shared_and_weighted_to_the_global_mean():
    y, x = _data(11)
    single = list(global_steps((y, x), 4, torch.Generator().manual_seed(0), None, DistContext()))
    for world in (2, 3, 5):
        per_rank = [
            list(
                global_steps(
                    (y, x),
                    4,
                    torch.Generator().manual_seed(0),
                    None,
                    DistContext(True, rank, world),
                )
            )  # fmt: skip
            for rank in range(world)
        ]
        for k, (ref_parts, _) in enumerate(single):  # 11 samples, batch 4: 4 + 4 + 3
            n = ref_parts[0][0].shape[0]
            rows, share = [], 0.0
            for rank in range(world):
                (part,), (w,) = per_rank[rank][k]
                if w == 0:  # a stand-in (this rank has no sample of this batch)
                    continue
                rows.append(part[0])
                # DDP averages over ranks: w / world must be this rank's share of the batch
                assert w / world == pytest.approx(part[0].shape[0] / n, rel=1e-15)
                share += w / world
            assert share == pytest.approx(1.0, rel=1e-15)
            assert torch.equal(torch.cat(rows), ref_parts[0][0])  # the global batch, in order
