"""Audit of Dec 11 (unrollsci.train): fp16 on several processes skips the steps one process
skips; ``fit_layerwise`` keeps the steps of a stage shorter than ``val_every``; every rank
draws its own dropout masks and a resume restores every rank's generator; ``fit`` restores
the model's depth and train/eval mode when it raises; training data of another size on one
rank raises the same ``ValueError`` on every rank instead of hanging.

The multi-process cases share one launch of 2 gloo processes (the module fixture ``ranks``)
with a deadline, so that a regression that hangs a collective fails instead of blocking."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from torch import nn

from unrollsci.operators import MatrixOperator
from unrollsci.train import fit, fit_layerwise
from unrollsci.train._distributed import DistContext
from unrollsci.unrolled import LISTA

DEADLINE_S = 120.0  # the whole 2-process launch (a hang is killed, then reported)


# ---------------------------------------------------------------- models and data
def _fp16_net() -> nn.Module:
    """Two bias-free layers, the second large: a float16 overflow is in a row's activation
    gradient (not in a gradient summed over the batch's rows)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8, bias=False), nn.Linear(8, 1, bias=False))
    with torch.no_grad():
        net[1].weight.mul_(30.0)
    return net


def _fp16_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return 0.01 * torch.randn(8, 4, generator=g), torch.randn(8, 1, generator=g)


def _mse(model: nn.Module, batch) -> torch.Tensor:
    return (model(batch[0]) - batch[1]).pow(2).mean()


def _fp16_skipped_steps(**kw) -> list[int]:
    """The optimizer steps whose gradients the scaler found non-finite (it lowered its
    scale), on a float32 model under ``mixed_precision="fp16"``."""
    lowered: list[bool] = []
    update = torch.amp.GradScaler.update

    def recording(self, new_scale=None):
        before = self.get_scale()
        update(self, new_scale)
        lowered.append(self.get_scale() < before)

    torch.amp.GradScaler.update = recording
    try:
        fit(
            _fp16_net(),
            _mse,
            _fp16_data(),
            epochs=6,
            batch_size=8,
            lr=1e-3,
            mixed_precision="fp16",
            progress=False,
            **kw,
        )
    finally:
        torch.amp.GradScaler.update = update
    return [i for i, low in enumerate(lowered) if low]


class _DropNet(nn.Module):
    """A linear layer after a dropout; records the masks of its training forwards."""

    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.d = d
        self.lin = nn.Linear(d, d, dtype=torch.float64)
        self.drop = nn.Dropout(0.5)
        self.masks: list[torch.Tensor] = []

    def get_config(self) -> dict:
        return {"d": self.d}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = self.drop(torch.ones_like(x))
        if self.training:
            self.masks.append(keep != 0)
        return self.lin(x * keep)


def _drop_data(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g, dtype=torch.float64)
    return x, x.flip(1)


def _drop_fit(epochs: int, **kw) -> _DropNet:
    torch.manual_seed(0)
    model = _DropNet()
    fit(model, _mse, _drop_data(), epochs=epochs, batch_size=8, lr=1e-2, progress=False, **kw)
    return model


# ---------------------------------------------------------------- the 2-process launch
def _worker(rank: int, out: str) -> None:
    torch.set_num_threads(1)
    res: dict = {"fp16_skipped": _fp16_skipped_steps()}
    res["masks"] = _drop_fit(1).masks[0]
    res["uninterrupted"] = _drop_fit(3).lin.weight.detach().clone()
    ckpt = str(Path(out) / "dropout.pt")
    _drop_fit(1, checkpoint=ckpt)
    res["resumed"] = _drop_fit(3, resume=ckpt).lin.weight.detach().clone()
    torch.save(res, Path(out) / f"rank{rank}.pt")
    # last (the old code hangs here): rank 1 holds 4 more rows than rank 0
    x = torch.randn(10 + 4 * rank, 3, dtype=torch.float64)
    try:
        data, net = (x, x[:, :1]), nn.Linear(3, 1, dtype=torch.float64)
        fit(net, _mse, data, epochs=1, batch_size=4, progress=False)  # 3 steps, 4 steps
        msg = "no error"
    except ValueError as exc:
        msg = f"ValueError: {exc}"
    (Path(out) / f"size{rank}.txt").write_text(msg)


def _spawn_with_deadline(fn, out: str, deadline_s: float) -> bool:
    """Run ``fn(rank, out)`` on 2 processes as ``spawn`` does; False if they did not finish
    within ``deadline_s`` (they are then terminated)."""
    import torch.multiprocessing as mp

    from unrollsci.train._distributed import _child, _free_port

    procs = mp.start_processes(
        _child, args=(fn, 2, _free_port(), (out,)), nprocs=2, join=False, start_method="spawn"
    )
    end = time.monotonic() + deadline_s
    while not procs.join(timeout=0.5):
        if time.monotonic() > end:
            for p in procs.processes:
                if p.is_alive():
                    p.terminate()
            for p in procs.processes:
                p.join(10)
                if p.is_alive():
                    p.kill()
            return False
    return True


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dec11_ranks")
    finished = _spawn_with_deadline(_worker, str(out), DEADLINE_S)
    return out, finished


def _load(out: Path, rank: int) -> dict:
    path = out / f"rank{rank}.pt"
    assert path.exists(), f"rank {rank} did not finish its training cases"
    return torch.load(path, weights_only=True)


# ---------------------------------------------------------------- 1: fp16 on 2 processes
def test_fp16_two_processes_skip_the_steps_one_process_skips(ranks):
    out, _ = ranks
    one = _fp16_skipped_steps(distributed=False)
    assert one, "the problem must make the scaler skip steps on one process"
    for rank in (0, 1):
        assert _load(out, rank)["fp16_skipped"] == one


# ---------------------------------------------------------------- 3: per-rank randomness
def test_two_ranks_draw_different_dropout_masks(ranks):
    out, _ = ranks
    m0, m1 = _load(out, 0)["masks"], _load(out, 1)["masks"]
    assert m0.shape == m1.shape == (4, 8)  # each rank's 4 rows of the global batch of 8
    assert not torch.equal(m0, m1)


def test_resume_of_a_two_process_dropout_run_equals_the_uninterrupted_run(ranks):
    out, _ = ranks
    for rank in (0, 1):
        res = _load(out, rank)
        assert torch.equal(res["resumed"], res["uninterrupted"])


def test_a_rank_beyond_the_checkpoint_starts_a_fresh_stream():
    from unrollsci.train._state import rank_seed, seed_rank_rng

    state = {"epoch": 3, "torch_rng": torch.Generator().manual_seed(5).get_state()}
    draws = []
    for rank in (0, 1):  # a 1-process checkpoint resumed on 2 processes
        seed_rank_rng(7, DistContext(True, rank, 2), state)
        draws.append(torch.rand(4))
    torch.manual_seed(5)
    assert torch.equal(draws[0], torch.rand(4))  # rank 0: the saved state
    torch.manual_seed(rank_seed(7, 1, 3))
    assert torch.equal(draws[1], torch.rand(4))
    assert not torch.equal(draws[0], draws[1])
    assert rank_seed(7, 0) == 7 and len({rank_seed(7, 1), rank_seed(7, 2), rank_seed(8, 1)}) == 3


# ---------------------------------------------------------------- 5: data of another size
def test_training_data_of_another_size_on_one_rank_raises_on_every_rank(ranks):
    out, finished = ranks
    assert finished, "the ranks hung (a collective the other rank never joined)"
    for rank, rows in ((0, 10), (1, 14)):
        msg = (out / f"size{rank}.txt").read_text()
        assert msg.startswith("ValueError: Expected the same training arguments"), msg
        assert "train_data size" in msg and f"train_data size={rows}" in msg, msg


def test_data_size_is_what_the_ranks_compare():
    from unrollsci.train._distributed import data_size

    x = torch.zeros(5, 2)
    assert data_size(x, None) == 5 and data_size((x, x[:, 0]), None) == 5
    assert data_size([x, x, x], None) == 5  # a list of tensors: tensors of 5 rows
    assert data_size([(x, x), (x, x), (x, x)], None) == 3  # 3 batches
    assert data_size(lambda g: x, 7) == 7  # a sampler: steps per epoch
    assert data_size(iter([x]), None) is None and data_size(None, 4) is None


# ---------------------------------------------------------------- 2: short layer-wise stages
def _lista_problem():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(10, 20, generator=g, dtype=torch.float64) / 10**0.5

    def draw(gen):
        x = torch.randn(32, 20, generator=gen, dtype=torch.float64)
        x = x * (torch.rand(32, 20, generator=gen, dtype=torch.float64) < 0.1)
        return x @ a.T, x

    return a, draw, draw(torch.Generator().manual_seed(1))


def _nmse_db(model, y, x) -> list[float]:
    """Every layer's validation NMSE in dB, computed here from the iterates."""
    with torch.no_grad():
        _, xs = model(y, return_all=True)
    return [10 * float(torch.log10((xk - x).pow(2).sum() / x.pow(2).sum())) for xk in xs]


def test_layerwise_stage_shorter_than_val_every_keeps_its_steps():
    a, draw, (y, x) = _lista_problem()
    torch.manual_seed(0)
    model = LISTA(MatrixOperator(a), 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    start = _nmse_db(model, y, x)
    hist = fit_layerwise(model, draw, (y, x), lr=1e-2, lr_decays=(0.2,), max_steps=40, val_every=50)
    assert hist.steps == [80, 80]  # (a stage for the new layer, then one for all)
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
    end = _nmse_db(model, y, x)
    assert all(e < s - 0.5 for e, s in zip(end, start, strict=True)), (start, end)
    assert end[1] <= end[0]  # the non-increasing guarantee still holds


# ---------------------------------------------------------------- 4: fit restores the model
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_layerwise_fit_that_raises_restores_depth_and_mode(mode):
    a, draw, _ = _lista_problem()
    model = LISTA(MatrixOperator(a), 3)
    model.train(mode == "train")

    def loss(m, batch):
        if m.active_layers == 2:
            raise MemoryError("stage 2")
        return (m(batch[0]) - batch[1]).pow(2).mean()

    with pytest.raises(MemoryError, match="stage 2"):
        fit(model, loss, draw, steps_per_epoch=2, epochs=1, schedule="layerwise", progress=False)
    assert model.active_layers == 3
    assert model.training is (mode == "train")


# -- fit's options that the schedule or the data made ignored are refused -----------------


def _lin_fit(**kw):
    from unrollsci.train import fit

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    x = torch.randn(8, 3)
    y = x.sum(1, keepdim=True)

    def loss(m, batch):
        return (m(batch[0]) - batch[1]).pow(2).mean()

    data = kw.pop("data", (x, y))
    return model, fit(model, loss, data, epochs=3, lr=1e-2, progress=False, **kw)


@pytest.mark.parametrize(
    "kw, text",
    [
        ({"stage_epochs": 7}, "stage_epochs= only with schedule='layerwise'"),
        ({"stage_hook": lambda m, k: None}, "stage_hook= only with schedule='layerwise'"),
        ({"steps_per_epoch": 50}, "steps_per_epoch only with a sampler"),
    ],
)
def test_fit_refuses_options_it_would_ignore(kw, text):
    """fit(epochs=3, stage_epochs=7) ran 7 end-to-end epochs; stage_hook was never called
    end to end; steps_per_epoch with tensors did nothing."""
    with pytest.raises(ValueError, match=text):
        _lin_fit(**kw)


def test_fit_still_takes_those_options_where_they_act():
    x = torch.randn(8, 3)
    _, hist = _lin_fit(patience=1, val_data=(x, x.sum(1, keepdim=True)))
    assert len(hist.train_loss) >= 1
    _, hist = _lin_fit(data=lambda g: (x, x.sum(1, keepdim=True)), steps_per_epoch=2)
    assert len(hist.train_loss) == 3
