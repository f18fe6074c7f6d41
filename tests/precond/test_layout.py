"""Layout of unrollsci.precond: small modules, a picklable GNN layer, the old names kept."""

import copy
import importlib
import pickle
import subprocess
import sys
from pathlib import Path

import torch

import unrollsci.precond as precond
from unrollsci.precond import LearnedPreconditioner, diffusion2d
from unrollsci.train import load_checkpoint

# state_dict() keys of LearnedPreconditioner("factor", layers=1) before the model module was
# split (the layer was then a class made inside a factory function): checkpoints hold these.
KEYS_FACTOR = [
    "node_enc.0.weight",
    "node_enc.0.bias",
    "node_enc.2.weight",
    "node_enc.2.bias",
    "edge_enc.weight",
    "edge_enc.bias",
    "convs.0.src.weight",
    "convs.0.src.bias",
    "convs.0.dst.weight",
    "convs.0.edge.weight",
    "convs.0.upd.weight",
    "convs.0.upd.bias",
    "off_fwd.weight",
    "off_fwd.bias",
    "off_bwd.weight",
    "off_row.weight",
    "off_col.weight",
    "off_head.1.weight",
    "off_head.1.bias",
    "diag_head.0.weight",
    "diag_head.0.bias",
    "diag_head.2.weight",
    "diag_head.2.bias",
]

# Names importable from the two modules that were split (benchmarks, tests and format-1
# checkpoints use them).
OLD_MODEL_NAMES = [
    "BlockPreconditioner",
    "ChebyshevPreconditioner",
    "FactorPreconditioner",
    "InverseFactorPreconditioner",
    "LearnedPreconditioner",
    "LinearOperator",
    "LowerPattern",
    "MatrixGraph",
    "PermutedPreconditioner",
    "SparseOperator",
    "SymmetricMatvec",
    "SystemBatch",
    "_BASES",
    "_EDGE_FLIP",
    "_KINDS",
    "_build_graph",
    "_make_layer",
    "_mlp",
    "_mlp_t",
    "_split_edges",
    "_steps_to_tol",
    "abs_entries",
    "check_spd_input",
    "fit_preconditioner",
    "gershgorin_scaled",
    "ic0_from_pattern",
    "lower_matvec",
    "lower_pattern",
    "make_batches",
    "mic0_from_pattern",
    "pcg_loss",
    "reorder",
    "unrolled_pcg",
]
OLD_CLASSICAL_NAMES = [
    "AMGPreconditioner",
    "BlockPreconditioner",
    "DiagonalPreconditioner",
    "FactorPreconditioner",
    "ICBreakdownError",
    "InverseFactorPreconditioner",
    "LinearOperator",
    "LowerPattern",
    "PermutedPreconditioner",
    "_LowerFactorOperator",
    "_check_omega",
    "_ic0_numeric",
    "_ic0_plan",
    "_levels",
    "_like",
    "_lookup",
    "_mic_numeric",
    "_mic_plan",
    "_wrap",
    "amg",
    "check_device",
    "check_spd_input",
    "ic0",
    "ic0_from_pattern",
    "ic0_values",
    "jacobi",
    "lower_matvec",
    "lower_pattern",
    "mic0",
    "mic0_from_pattern",
    "reorder",
    "tri_solve",
]


def _random_weights(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def test_message_passing_layer_is_a_module_level_class():
    model = LearnedPreconditioner("factor", layers=2, seed=0)
    layer = model.convs[0]
    cls = type(layer)
    assert "<locals>" not in cls.__qualname__
    mod = importlib.import_module(cls.__module__)
    assert getattr(mod, cls.__qualname__) is cls
    assert isinstance(model.convs[1], cls)  # one class for every layer
    # torch_geometric's base class
    from unrollsci._compat import message_passing

    assert isinstance(layer, message_passing())


def test_layer_and_model_pickle_and_copy():
    a = diffusion2d(6, seed=0)
    model = _random_weights(LearnedPreconditioner("factor", layers=1, seed=0))
    layer = model.convs[0]
    again = pickle.loads(pickle.dumps(layer))
    assert type(again) is type(layer)
    g = model.prepare(a)
    h = torch.randn(g.n, model.hidden, generator=torch.Generator().manual_seed(0))
    e = torch.randn(
        g.edge_index().shape[1], model.hidden, generator=torch.Generator().manual_seed(1)
    )
    for got, ref in zip(again(h, g.edge_index(), e), layer(h, g.edge_index(), e), strict=True):
        assert torch.equal(got, ref)
    eye = torch.eye(a.shape[0], dtype=torch.float64)
    ref = model.build(a)(eye)
    for other in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        assert torch.equal(other.build(a)(eye), ref)


def test_state_dict_keys_are_unchanged():
    assert list(LearnedPreconditioner("factor", layers=1).state_dict()) == KEYS_FACTOR
    poly = list(LearnedPreconditioner("poly", layers=1).state_dict())
    assert poly == ["poly_logits", "poly_ratio", *KEYS_FACTOR]


def test_old_module_names_are_still_importable():
    from unrollsci.precond import _classical, _model

    missing = [n for n in OLD_MODEL_NAMES if not hasattr(_model, n)]
    missing += [f"_classical.{n}" for n in OLD_CLASSICAL_NAMES if not hasattr(_classical, n)]
    assert not missing
    assert _model.LearnedPreconditioner is precond.LearnedPreconditioner
    assert _classical.FactorPreconditioner is precond.FactorPreconditioner
    layer = _model._make_layer(4)
    assert isinstance(layer, _model.MatrixConv)


def test_format1_checkpoint_naming_the_old_module_loads(tmp_path):
    # Format-1 files named the class by its defining module, then unrollsci.precond._model.
    a = diffusion2d(6, seed=0)
    model = _random_weights(LearnedPreconditioner("factor", layers=1, seed=0))
    payload = {
        "format": "unrollsci-checkpoint-1",
        "class": "unrollsci.precond._model:LearnedPreconditioner",
        "config": model.get_config(),
        "state_dict": model.state_dict(),
        "extra": {},
    }
    torch.save(payload, tmp_path / "old.pt")
    again = load_checkpoint(tmp_path / "old.pt", expected=LearnedPreconditioner)
    eye = torch.eye(a.shape[0], dtype=torch.float64)
    assert torch.equal(again.build(a)(eye), model.build(a)(eye))


def test_classical_preconditioners_do_not_import_torch_geometric():
    # The GNN layer needs torch_geometric (a slow import): only the learned model loads it.
    code = (
        "import sys; from unrollsci.precond import diffusion2d, ic0, unrolled_pcg; "
        "ic0(diffusion2d(4)); assert 'torch_geometric' not in sys.modules; "
        "from unrollsci.precond import LearnedPreconditioner; "
        "assert 'torch_geometric' in sys.modules"
    )
    root = Path(precond.__file__).parents[2]  # this checkout, not an installed copy
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=root
    )
    assert out.returncode == 0, out.stderr
