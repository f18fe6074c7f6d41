"""Keeping the best weights of a model on a sparse matrix (an audit, December 8):
``copy.deepcopy(model.state_dict())`` fails on a sparse CSR buffer (torch cannot deep-copy
one), so ``fit`` / ``fit_layerwise`` with validation data crashed on any model built on a
``SparseOperator``. The state is now copied with ``copy_state``."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import scipy.sparse as sp
import torch

from unrollsci.operators import SparseOperator
from unrollsci.train import fit, fit_layerwise, layer_nmse_db
from unrollsci.unrolled import LISTA

M, N = 6, 10


def _matrix() -> sp.csr_matrix:
    return sp.random(M, N, density=0.5, random_state=0, format="csr")


def _lista(layers: int = 2) -> LISTA:
    torch.manual_seed(0)
    return LISTA(SparseOperator(_matrix()), layers, lam=0.05)


def _loss(model, batch):  # type: ignore[no-untyped-def]
    y, x = batch
    return (model(y) - x).pow(2).mean()


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(n, M, generator=g, dtype=torch.float64)
    x = torch.randn(n, N, generator=g, dtype=torch.float64)
    return y, x


def _dense_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """An independent copy of the state, sparse entries as dense tensors (to compare)."""
    return {
        k: (v.to_dense() if v.layout != torch.strided else v).detach().clone()
        for k, v in model.state_dict().items()
    }


def _assert_state_equal(model: torch.nn.Module, ref: dict[str, torch.Tensor]) -> None:
    now = _dense_state(model)
    assert now.keys() == ref.keys()
    for k in ref:
        assert torch.equal(now[k], ref[k]), k


def test_the_state_dict_of_a_sparse_model_cannot_be_deep_copied():
    """The failure copy_state avoids (if torch learns to deep-copy CSR, this test says so)."""
    with pytest.raises(NotImplementedError, match="storage"):
        copy.deepcopy(_lista().state_dict())


def test_fit_with_validation_keeps_the_best_weights_of_a_sparse_model():
    """Crashed in the first epoch; now the restored weights are exactly the best epoch's."""
    model = _lista()
    y0 = _data(5, 7)[0]
    with torch.no_grad():
        before = model.operator(torch.eye(N, dtype=torch.float64))
    snaps: list[dict[str, torch.Tensor]] = []

    def snapshot(epoch, train_loss, val_loss):  # type: ignore[no-untyped-def]
        snaps.append(_dense_state(model))

    hist = fit(
        model,
        _loss,
        _data(12, 1),
        val_data=_data(7, 5),
        epochs=4,
        lr=3e-2,
        progress=False,
        callback=snapshot,
    )
    assert len(snaps) == 4
    # the best epoch is not the last: the restore changes the weights
    assert hist.best_epoch is not None and hist.best_epoch < 3
    assert not torch.equal(snaps[hist.best_epoch]["theta"], snaps[-1]["theta"])
    _assert_state_equal(model, snaps[hist.best_epoch])
    with torch.no_grad():  # the operator is intact and still works (products, adjoint)
        assert torch.equal(model.operator(torch.eye(N, dtype=torch.float64)), before)
        assert torch.isfinite(model(y0)).all()
        assert model.operator.adjoint(torch.ones(1, M, dtype=torch.float64)).shape == (1, N)


def test_fit_with_patience_only_keeps_the_best_weights_of_a_sparse_model():
    """patience without validation data tracks the best training loss: the same copy."""
    hist = fit(_lista(), _loss, _data(12, 1), epochs=3, lr=1e-2, patience=2, progress=False)
    assert len(hist.train_loss) == 3


def test_fit_with_checkpoint_and_validation_on_a_sparse_model(tmp_path):
    """The kept weights also go into the checkpoint's training state; a resumed run ends
    as the uninterrupted one does."""
    from unrollsci.train import load_checkpoint

    kw = {"val_data": _data(7, 5), "lr": 3e-2, "progress": False}
    model = _lista()
    fit(model, _loss, _data(12, 1), epochs=2, checkpoint=tmp_path / "a.pt", **kw)
    y = _data(4, 3)[0]
    with torch.no_grad():
        assert torch.equal(load_checkpoint(tmp_path / "a.pt")(y), model(y))
    resumed, whole = _lista(), _lista()
    fit(resumed, _loss, _data(12, 1), epochs=3, resume=tmp_path / "a.pt", **kw)
    fit(whole, _loss, _data(12, 1), epochs=3, **kw)
    _assert_state_equal(resumed, _dense_state(whole))


def test_fit_layerwise_on_a_sparse_model():
    """fit_layerwise copies the state at the start of every stage: it crashed at once."""
    a = torch.from_numpy(_matrix().toarray())

    def draw(g, batch=16):  # type: ignore[no-untyped-def]
        x = torch.randn(batch, N, generator=g, dtype=torch.float64)
        x = x * (torch.rand(batch, N, generator=g, dtype=torch.float64) < 0.3)
        return x @ a.T, x

    model = _lista()
    val = draw(torch.Generator().manual_seed(5), 64)
    hist = fit_layerwise(model, draw, val, lr=1e-3, lr_decays=(0.2,), max_steps=10, val_every=5)
    assert len(hist.curve_db) == 2
    assert hist.curve_db == pytest.approx(layer_nmse_db(model, *val))


def test_copy_state_is_an_independent_copy():
    from unrollsci.train._state import copy_state

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    model.add_module("op", SparseOperator(_matrix()))
    state = model.state_dict()
    state["note"] = {"epoch": 3}  # a non-tensor entry is kept (deep-copied)
    out = copy_state(state)
    assert isinstance(out, OrderedDict) and list(out) == list(state)
    assert out["note"] == {"epoch": 3} and out["note"] is not state["note"]
    # torch's per-module versions (read by load_state_dict) survive the copy
    assert out._metadata == state._metadata  # type: ignore[attr-defined]
    assert out["op.matrix"].layout == torch.sparse_csr
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            assert out[k] is not v and not out[k].requires_grad
            if v.layout == torch.strided:
                assert torch.equal(out[k], v) and out[k].data_ptr() != v.data_ptr()
            else:
                assert torch.equal(out[k].to_dense(), v.to_dense())
                assert out[k].values().data_ptr() != v.values().data_ptr()
    ref = _dense_state(model)
    with torch.no_grad():  # change the model in place: the copy keeps the old values
        model[0].weight.add_(1.0)
        model.op.matrix.values().mul_(2.0)
    del out["note"]
    model.load_state_dict(out)
    _assert_state_equal(model, ref)


def test_copy_state_keeps_shared_tensors_shared():
    """As deepcopy does: one tensor under two names stays one tensor in the copy."""
    from unrollsci.train._state import copy_state

    t = torch.ones(3)
    out = copy_state({"a": t, "b": t, "c": t[:2]})
    assert out["a"] is out["b"] and out["a"] is not t
    assert torch.equal(out["c"], torch.ones(2))
