"""fit through torch.distributed: 2 gloo processes train like 1 process with the same global
batch, write one checkpoint, and a resume on 1 process continues the run.

One launch of 2 processes trains a small model of each kind (sparse recovery, learned
preconditioner via ``fit_preconditioner``, graph controller with ``graph_loss``, CT network);
the references run in this process. All in float64.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from unrollsci.bench.distributed import KINDS, build, equivalence_worker, train, weights
from unrollsci.train import load_checkpoint
from unrollsci.train._distributed import spawn

E1, E2 = 2, 2  # epochs before the checkpoint, epochs after it
# "schedule": a layer-wise LISTA with validation, patience, lr decay and an lr schedule,
# halted by its callback in the second stage (then resumed to the end)
CASES = (*KINDS, "schedule")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    out, ckpt = root / "out", root / "ckpt"
    out.mkdir()
    ckpt.mkdir()
    spawn(equivalence_worker, 2, CASES, str(out), str(ckpt), E1)
    return out, ckpt


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """Per kind, single-process runs: E1 epochs (with its checkpoint) and E1 + E2 epochs."""
    root = tmp_path_factory.mktemp("single")
    runs = {}
    for kind in CASES:
        case = build(kind, "test")
        start = weights(case.model)
        short = train(case, epochs=E1, checkpoint=root / f"{kind}.pt", **case.extra)
        after_e1 = weights(case.model)
        case = build(kind, "test")
        long = train(case, epochs=E1 + E2)
        runs[kind] = dict(
            start=start, e1=after_e1, e1_hist=short, e12=weights(case.model), e12_hist=long,
            ckpt=root / f"{kind}.pt",
        )  # fmt: skip
    return runs


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.mark.parametrize("kind", CASES)
def test_two_processes_train_like_one(two_ranks, single, kind):
    out, ckpt = two_ranks
    ref = single[kind]
    assert _max_diff(ref["e1"], ref["start"]) > 1e-4  # training moved the weights
    if kind == "schedule":  # halted in stage 2 after 3 epochs; uninterrupted: 3 stages x 2
        assert len(ref["e1_hist"].train_loss) == 3 and len(ref["e12_hist"].train_loss) == 6
    for rank in (0, 1):
        got = torch.load(out / f"{kind}_rank{rank}.pt", weights_only=True)
        diff = _max_diff(got["weights"], ref["e1"])
        print(f"{kind} rank {rank}: max |2 processes - 1 process| = {diff:.2e}")
        assert diff <= 1e-6
        np.testing.assert_allclose(got["train_loss"], ref["e1_hist"].train_loss, rtol=1e-9)
        assert got["world_size"] == 2 and ref["e1_hist"].world_size == 1
        if kind == "graph":  # each rank evaluated its half of the graphs of every step
            n = len(build(kind, "test").data)
            assert got["graph_loss_calls"] == E1 * n // 2
    # one checkpoint file, written by rank 0, holding the trained model
    assert sorted(p.name for p in (ckpt / kind).iterdir()) == ["fit.pt"]
    loaded = load_checkpoint(ckpt / kind / "fit.pt")
    assert _max_diff(weights(loaded), ref["e1"]) <= 1e-6


@pytest.mark.parametrize("kind", CASES)
def test_resume_on_one_process_continues_the_two_process_run(two_ranks, single, kind, tmp_path):
    _, ckpt = two_ranks
    path = tmp_path / "fit.pt"
    shutil.copy(ckpt / kind / "fit.pt", path)
    resumed = build(kind, "test")
    hist = train(resumed, epochs=E1 + E2, resume=path, checkpoint=path)
    diff = _max_diff(weights(resumed.model), single[kind]["e12"])
    print(f"{kind}: max |resumed on 1 process - uninterrupted| = {diff:.2e}")
    assert diff <= 1e-6
    np.testing.assert_allclose(hist.train_loss, single[kind]["e12_hist"].train_loss, rtol=1e-9)
    assert hist.resumed_from_epoch == len(single[kind]["e1_hist"].train_loss)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.pt"]


@pytest.mark.parametrize("kind", CASES)
def test_resume_is_bit_identical_on_one_process(single, kind):
    resumed = build(kind, "test")
    train(resumed, epochs=E1 + E2, resume=single[kind]["ckpt"])
    a, b = weights(resumed.model), single[kind]["e12"]
    assert all(torch.equal(a[k], b[k]) for k in a)
