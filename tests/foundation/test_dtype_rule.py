"""The one dtype rule of every model: it computes in the dtype of its learned parameters,
inputs must have that dtype, a mismatch raises DtypeMismatchError naming both dtypes and
both fixes, nothing is cast silently, and ``model.double()`` / ``model.float()`` move the
model (and its checkpoint config) to the other dtype."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch

import unrollsci
from unrollsci import DtypeMismatchError
from unrollsci.graph import GraphInverseProblem, StepController, UnrolledGraphGD
from unrollsci.imaging import Radon, UnrolledCT, shepp_logan
from unrollsci.operators import Convolution, MatrixOperator
from unrollsci.train import load_checkpoint, save_checkpoint
from unrollsci.unrolled import ALISTA, LAMP, LISTA, LISTACP, ADMMNet, UnrolledFISTA

LASSO = [UnrolledFISTA, LISTA, LISTACP, ALISTA, ADMMNet, LAMP]


def _a(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 10, generator=g, dtype=torch.float64).to(dtype)


def _lasso_input(model, dtype):
    return torch.randn(3, model.m, generator=torch.Generator().manual_seed(1), dtype=dtype)


def _graph_problem(dtype):
    G = nx.connected_watts_strogatz_graph(12, 4, 0.3, seed=2)
    mask = np.zeros(12, bool)
    mask[::2] = True
    y = torch.as_tensor(np.random.default_rng(0).standard_normal((2, 12)) * mask, dtype=dtype)
    return GraphInverseProblem.from_networkx(G, y, mask=mask)


def _ct_input(dtype):
    op = Radon(16, 10)
    return op, op(shepp_logan(16, dtype=torch.float64)[None]).to(dtype)


def _models():
    """(id, model factory, input factory, call) for every model family."""
    out = [
        (
            cls.__name__,
            lambda cls=cls: cls(MatrixOperator(_a(torch.float32)), 2, lam=0.1),
            lambda m, dt: _lasso_input(m, dt),
            lambda m, x: m(x),
        )
        for cls in LASSO
    ]
    out.append(
        (
            "UnrolledGraphGD",
            lambda: UnrolledGraphGD(3, StepController(hidden=4, window=3)),
            lambda m, dt: _graph_problem(dt),
            lambda m, p: m(p).x,
        )
    )
    out.append(
        (
            "UnrolledCT",
            lambda: UnrolledCT(_ct_input(torch.float32)[0], n_layers=2, channels=3),
            lambda m, dt: _ct_input(dt)[1],
            lambda m, y: m(y),
        )
    )
    return out


MODELS = _models()


@pytest.mark.parametrize(
    ("make", "data", "call"), [m[1:] for m in MODELS], ids=[m[0] for m in MODELS]
)
def test_mismatch_raises_then_conversion_works(make, data, call):
    torch.manual_seed(0)
    model = make()
    assert model.dtype == torch.float32
    x64 = data(model, torch.float64)
    with pytest.raises(DtypeMismatchError) as info:
        call(model, x64)
    msg = str(info.value)
    assert "model's dtype torch.float32 (got torch.float64)" in msg
    assert "model.double()" in msg and ".float()" in msg
    # one exception class that old callers of either contract still catch
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)
    # the documented fix works, and nothing was cast: the output has the model's dtype
    out32 = call(model, data(model, torch.float32))
    assert out32.dtype == torch.float32
    model.double()
    assert model.dtype == torch.float64
    assert call(model, x64).dtype == torch.float64
    with pytest.raises(DtypeMismatchError, match=r"torch\.float64 \(got torch\.float32\)"):
        call(model, data(model, torch.float32))


@pytest.mark.parametrize("cls", LASSO, ids=[c.__name__ for c in LASSO])
def test_lasso_default_dtype_is_the_operators(cls):
    assert cls(MatrixOperator(_a(torch.float64)), 2).dtype == torch.float64
    assert cls(MatrixOperator(_a(torch.float32)), 2).dtype == torch.float32
    # an operator that holds no floating tensor of its own: torch's default dtype
    conv = Convolution(torch.tensor([0.2, 1.0, 0.3]), (10,))
    assert cls(conv, 2).dtype == torch.get_default_dtype()
    # an explicit dtype wins over the operator's (the operator follows the input)
    model = cls(MatrixOperator(_a(torch.float32)), 2, dtype=torch.float64)
    assert model.dtype == torch.float64
    assert model(_lasso_input(model, torch.float64)).dtype == torch.float64


def test_converted_model_checkpoints_its_current_dtype(tmp_path):
    model = LISTA(MatrixOperator(_a(torch.float32)), 2).double()
    assert model.get_config()["dtype"] == torch.float64
    again = load_checkpoint(save_checkpoint(model, tmp_path / "m.pt"), expected=LISTA)
    assert again.dtype == torch.float64
    y = _lasso_input(model, torch.float64)
    torch.testing.assert_close(again(y), model(y), rtol=0, atol=0)


def test_bad_dtype_argument():
    with pytest.raises(TypeError, match="float32 or torch.float64"):
        LISTA(MatrixOperator(_a()), 2, dtype=torch.int64)


def test_error_is_public():
    assert unrollsci.DtypeMismatchError is DtypeMismatchError
    assert "DtypeMismatchError" in unrollsci.__all__
