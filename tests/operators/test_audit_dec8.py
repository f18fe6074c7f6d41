"""copy.deepcopy of operators with sparse CSR buffers (an audit, December 8): Radon's system
matrix and SparseOperator's matrix could not be deep-copied (torch has no deepcopy for a
tensor without storage); the copy must match the original's products and share nothing."""

from __future__ import annotations

import copy
import pickle

import pytest
import scipy.sparse as sp
import torch

from unrollsci.operators import FanBeam, Radon, SparseOperator

F64 = torch.float64


def _sparse() -> sp.csr_matrix:
    return sp.random(9, 7, density=0.4, format="csr", random_state=0)


OPERATORS = {
    "radon_matrix": lambda: Radon(16, 10, method="matrix"),
    "radon_matrix_square": lambda: Radon(12, 7, method="matrix", circle=False),
    "radon_matfree": lambda: Radon(16, 10, method="matfree"),
    "fanbeam": lambda: FanBeam(16, 12, source_distance=40.0, detector_distance=60.0),
    "sparse_scipy": lambda: SparseOperator(_sparse()),
    "sparse_torch": lambda: SparseOperator(torch.tensor(_sparse().toarray()).to_sparse_csr()),
    "composed": lambda: Radon(12, 6, method="matrix").T @ Radon(12, 6, method="matrix"),
}


def _products(op, dtype):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, *op.in_shape, generator=g, dtype=F64).to(dtype)
    y = torch.randn(2, *op.out_shape, generator=g, dtype=F64).to(dtype)
    return x, y, op(x), op.adjoint(y)


def _roundtrip(how, op):  # type: ignore[no-untyped-def]
    if how == "deepcopy":
        return copy.deepcopy(op)
    if how == "copy":
        return copy.copy(op)
    return pickle.loads(pickle.dumps(op))


@pytest.mark.parametrize("how", ["deepcopy", "copy", "pickle"])
@pytest.mark.parametrize("name", list(OPERATORS))
def test_copies_give_the_same_products(name, how):
    op = OPERATORS[name]()
    _products(op, torch.float32)  # fills the cast caches (float32 CSR copies)
    twin = _roundtrip(how, op)
    assert type(twin) is type(op)
    for dtype in (F64, torch.float32):
        x, y, ax, aty = _products(op, dtype)
        assert torch.equal(twin(x), ax)
        assert torch.equal(twin.adjoint(y), aty)
    assert twin.norm() == pytest.approx(op.norm(), rel=1e-9)


@pytest.mark.parametrize("name", ["radon_matrix", "radon_matrix_square", "sparse_scipy"])
def test_deepcopy_is_independent(name):
    """The copy owns its matrix: scaling it leaves the original (and every other operator of
    the geometry, which shares the cached system matrix) unchanged."""
    op = OPERATORS[name]()
    x, y, ax, aty = _products(op, F64)
    op.adjoint(y)  # SparseOperator forms A^T on the first adjoint
    twin = copy.deepcopy(op)
    for key, buf in op.named_buffers():
        other = dict(twin.named_buffers())[key]
        if buf.layout == torch.strided:
            assert other.data_ptr() != buf.data_ptr()
        else:
            assert other.values().data_ptr() != buf.values().data_ptr()
            assert torch.equal(other.to_dense(), buf.to_dense())
    with torch.no_grad():
        twin.matrix.values().mul_(2.0)
        if getattr(twin, "matrix_t", None) is not None and name.startswith("radon"):
            twin.matrix_t.values().mul_(2.0)
    assert torch.equal(op(x), ax) and torch.equal(op.adjoint(y), aty)
    assert torch.allclose(twin(x), 2.0 * ax)
    assert torch.allclose(twin.adjoint(y), 2.0 * aty)
    fresh = OPERATORS[name]()
    assert torch.equal(fresh(x), ax)


def test_deepcopy_keeps_shared_sub_operators_shared():
    op = Radon(12, 6, method="matrix")
    twin = copy.deepcopy(op.T @ op)
    radons = {id(m) for m in twin.modules() if isinstance(m, Radon)}
    assert len(radons) == 1 and id(op) not in radons


def test_deepcopy_keeps_the_state_dict():
    op = Radon(12, 6, method="matrix")
    twin = copy.deepcopy(op)
    assert list(twin.state_dict()) == list(op.state_dict()) == ["angles"]
    twin.load_state_dict(op.state_dict())
    with pytest.raises(ValueError, match="angles are fixed"):
        twin.load_state_dict({"angles": op.angles + 1.0})
