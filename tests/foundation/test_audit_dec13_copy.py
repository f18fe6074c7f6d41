"""Copy / pickle audit (dec 13).

* ``copy.deepcopy`` of a GraphInverseProblem once a model has run on it (its cache then
  holds sparse CSR tensors, which torch cannot deep-copy): an independent copy, same outputs.
* ``AMGPreconditioner`` pickles (PyAMG's coarse solver is a local class) and deep-copies
  into a preconditioner that runs its own hierarchy; same outputs bit for bit.
* Operators and problems cross a process boundary (DataLoader workers) without torch's
  sparse-CSR notices: their pickled state holds no compressed tensor, which torch's
  reducer would rebuild outside unrollsci's ``quiet_csr``.
"""

from __future__ import annotations

import copy
import io
import os
import pickle
import subprocess
import sys
import textwrap
from multiprocessing.reduction import ForkingPickler

import networkx as nx
import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.multiprocessing  # noqa: F401  (registers torch's reducers with ForkingPickler)

from unrollsci.graph import GraphInverseProblem, StepController, UnrolledGraphGD
from unrollsci.imaging import Radon
from unrollsci.operators import SparseOperator
from unrollsci.precond import AMGPreconditioner, LearnedPreconditioner, amg, diffusion2d

COMPRESSED = (torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc)


def _problem() -> GraphInverseProblem:
    g = torch.Generator().manual_seed(0)
    y = torch.randn(2, 36, generator=g, dtype=torch.float64)
    mask = torch.rand(36, generator=g) < 0.5
    return GraphInverseProblem.from_networkx(nx.grid_2d_graph(6, 6), y, mask=mask)


def _model(mode: str = "scalar", **kw) -> UnrolledGraphGD:
    torch.manual_seed(0)
    return UnrolledGraphGD(4, StepController(hidden=8), mode=mode, **kw).double()


def _csr_entries(p: GraphInverseProblem) -> list[str]:
    return [
        k for k, v in p._store.items() if isinstance(v, torch.Tensor) and v.layout in COMPRESSED
    ]


# ------------------------------------------------------------------ 2. deepcopy of a problem
@pytest.mark.parametrize("kw", [{}, {"controller_sample": 8}])
def test_deepcopy_of_a_problem_a_model_ran_on(kw):
    p = _problem()
    model = _model("window" if kw else "scalar", **kw)
    with torch.no_grad():
        ref = model(p).x
    if not kw:
        assert _csr_entries(p)  # the controller's mean adjacency, a CSR tensor
    q = copy.deepcopy(p)
    with torch.no_grad():
        assert torch.equal(model(q).x, ref)
    for key in _csr_entries(p):
        mine, theirs = p._store[key], q._store[key]
        assert theirs.values().data_ptr() != mine.values().data_ptr()
        # the copy's mean adjacency is D^-1 W of the graph (numpy reference)
        w = p.adjacency.toarray()
        np.fill_diagonal(w, 0.0)
        ref_mean = w / w.sum(1, keepdims=True)
        np.testing.assert_allclose(theirs.to_dense().numpy(), ref_mean, rtol=1e-15, atol=0)
        theirs.values().mul_(3.0)  # independent: the original's output does not move
    with torch.no_grad():
        assert torch.equal(model(p).x, ref)


def test_deepcopy_of_a_problem_keeps_its_cached_operator_independent():
    p = _problem()
    x = torch.randn(2, 36, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ref = p.hessian(x)  # caches the fused Hessian (a SparseOperator, CSR)
    _model()(p)
    q = copy.deepcopy(p)
    assert torch.equal(q.hessian(x), ref)
    dense = torch.as_tensor(p.hessian_scipy(0).toarray())
    torch.testing.assert_close(q.hessian(x), x @ dense.T, rtol=1e-13, atol=1e-13)
    q._store["fused-hessian"].matrix.values().mul_(2.0)
    assert torch.equal(p.hessian(x), ref)


# ------------------------------------------------------------------- 3. AMG preconditioner
def _amg_cases():
    a = diffusion2d(8, seed=0)
    return a, [
        amg(a),
        amg(a, coarse_solver="splu", max_coarse=20),
        amg(a, coarse_solver=("lu", {}), max_coarse=20),
        LearnedPreconditioner("amg", seed=0).build(a),
    ]


def test_amg_preconditioner_pickles_bit_for_bit():
    a, cases = _amg_cases()
    b = torch.randn(3, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for m in cases:
        ref = m(b)
        # the original's own PyAMG cycle, applied directly (numpy)
        direct = np.stack([m.ml.aspreconditioner(cycle="V")(v) for v in b.numpy()])
        assert np.array_equal(ref.numpy(), direct)
        again = pickle.loads(pickle.dumps(m))
        assert torch.equal(again(b), ref)
        assert again.ml is not m.ml
        assert type(again.ml.coarse_solver).name() == type(m.ml.coarse_solver).name()


def test_amg_deepcopy_runs_its_own_hierarchy():
    a = diffusion2d(8, seed=0)
    m = amg(a)
    b = torch.randn(2, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = m(b)
    c = copy.deepcopy(m)
    assert torch.equal(c(b), ref)
    c.ml.levels[0].A = c.ml.levels[0].A * 2.0  # edit the copy's hierarchy only
    fresh = AMGPreconditioner(c.ml, 64)  # a cycle built on the edited hierarchy
    assert torch.equal(c(b), fresh(b))
    assert not torch.equal(c(b), ref)
    assert torch.equal(m(b), ref)


def test_amg_coarse_solver_that_does_not_match_is_refused():
    m = amg(diffusion2d(6, seed=0))  # PyAMG's default coarse solver: pinv
    with pytest.raises(ValueError, match=r"Expected 'coarse_solver' to be the one ml was built"):
        AMGPreconditioner(m.ml, 36, coarse_solver="splu")


# ------------------------------------------------- 4. no compressed tensor in pickled state
class _Recorder(ForkingPickler):
    """torch.multiprocessing's pickler, noting every compressed tensor it is handed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[torch.Tensor] = []

    def reducer_override(self, obj):
        if isinstance(obj, torch.Tensor) and obj.layout in COMPRESSED:
            self.seen.append(obj)
        return NotImplemented


def _round_trip(obj):
    buf = io.BytesIO()
    rec = _Recorder(buf, pickle.HIGHEST_PROTOCOL)
    rec.dump(obj)
    return rec.seen, pickle.loads(buf.getvalue())


def test_pickled_operators_hold_no_compressed_tensor():
    mat = sp.random(6, 5, density=0.5, random_state=0, format="csr")
    op = SparseOperator(mat)
    x = torch.randn(2, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    yy = torch.randn(2, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    op.adjoint(yy)  # forms the transpose buffer too
    seen, again = _round_trip(op)
    assert seen == []
    assert again.matrix.layout == torch.sparse_csr
    assert torch.equal(again(x), op(x)) and torch.equal(again.adjoint(yy), op.adjoint(yy))
    torch.testing.assert_close(again(x), x @ torch.as_tensor(mat.toarray()).T, rtol=0, atol=1e-15)
    radon = Radon(12, 8, method="matrix")
    img = torch.rand(2, 12, 12, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    seen, again = _round_trip(radon)
    assert seen == []
    assert torch.equal(again(img), radon(img))


def test_pickled_problem_cache_holds_no_compressed_tensor():
    p = _problem()
    x = torch.randn(2, 36, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    p.hessian(x)
    models = [_model(), _model("window", controller_sample=8)]
    with torch.no_grad():
        refs = [m(p).x for m in models]
    seen, q = _round_trip(p)
    assert seen == []
    assert torch.equal(q.hessian(x), p.hessian(x))
    with torch.no_grad():
        for m, ref in zip(models, refs, strict=True):
            assert torch.equal(m(q).x, ref)
    assert sorted(_csr_entries(q)) == sorted(_csr_entries(p))


_WORKER_SCRIPT = textwrap.dedent(
    """
    import scipy.sparse as sp, torch
    from unrollsci.operators import Radon, SparseOperator

    class DS(torch.utils.data.Dataset):
        def __init__(self, items): self.items = items
        def __len__(self): return len(self.items)
        def __getitem__(self, i): return self.items[i]

    if __name__ == "__main__":
        ops = [SparseOperator(sp.random(6, 5, density=0.5, random_state=0, format="csr")),
               Radon(8, 6, method="matrix")]
        dl = torch.utils.data.DataLoader(DS(ops), batch_size=1, collate_fn=lambda b: b[0],
                                         num_workers=1, multiprocessing_context="fork")
        got = list(dl)
        x = torch.rand(1, 5, dtype=torch.float64)
        img = torch.rand(1, 8, 8)
        assert torch.equal(got[0](x), ops[0](x)) and torch.equal(got[1](img), ops[1](img))
        print("ok")
    """
)


class _Items(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _first(batch):
    return batch[0]


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_operators_and_problem_come_back_from_a_dataloader_worker():
    p = _problem()
    x = torch.randn(2, 36, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    model = _model()
    with torch.no_grad():
        ref = model(p).x
    p.hessian(x)
    op = SparseOperator(sp.random(6, 5, density=0.5, random_state=0, format="csr"))
    loader = torch.utils.data.DataLoader(
        _Items([p, op]),
        batch_size=1,
        collate_fn=_first,
        num_workers=1,
        multiprocessing_context="fork",
    )
    q, again = list(loader)
    assert sorted(_csr_entries(q)) == sorted(_csr_entries(p))
    with torch.no_grad():
        assert torch.equal(model(q).x, ref)
    assert torch.equal(q.hessian(x), p.hessian(x))
    v = torch.rand(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    assert torch.equal(again(v), op(v))


@pytest.mark.slow  # a fresh process (torch's import alone takes seconds)
@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_dataloader_worker_prints_no_sparse_notice(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    assert "parse" not in out.stderr, out.stderr  # "Sparse CSR ... beta", "Sparse invariant"
