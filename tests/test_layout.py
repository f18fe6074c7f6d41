"""Layout: no module of ``unrollsci`` (bench included) is longer than 500 lines; the modules
split to get there keep every name importable from where it was."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import unrollsci

MAX_LINES = 500
ROOT = Path(unrollsci.__file__).resolve().parent


def test_no_module_over_500_lines():
    sizes = {
        str(p.relative_to(ROOT.parent)): len(p.read_text().splitlines())
        for p in sorted(ROOT.rglob("*.py"))
    }
    assert "unrollsci/bench/precond.py" in sizes and "unrollsci/train/_fit.py" in sizes
    too_long = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not too_long, f"modules over {MAX_LINES} lines in unrollsci: {too_long}"


# names importable from each split module before its split (benchmarks/ and tests use some)
SPLIT = {
    "unrollsci.train": [
        "fit",
        "History",
        "iterate_batches",
        "save_checkpoint",
        "load_checkpoint",
        "register_checkpoint_class",
        "registered_checkpoint_classes",
        "Batch",
        "LossFn",
        "_USER",
        "_BUILTIN",
        "_OBJECT",
        "_NDARRAY",
        "_FORMAT",
        "_FORMAT_V1",
        "_encode",
        "_decode",
        "_lookup",
        "_name_of",
        "_build_object",
        "_read_payload",
        "_check_loss",
    ],
    "unrollsci.operators._base": [
        "LinearOperator",
        "ComposedOperator",
        "SumOperator",
        "ScaledOperator",
        "AdjointOperator",
        "check_adjoint",
        "check_real",
        "check_dtype_supported",
        "tensor_key",
        "_common_dtypes",
    ],
    "unrollsci.bench.precond": [
        "main",
        "build_parser",
        "summarize",
        "reference_check",
        "time_methods",
        "AUTO_ORDERINGS",
        "TEST_SEED0",
        "VAL_SEED0",
        "USER",
        "_ordering",
        "_methods",
        "_systems",
        "_train",
        "_tune_chebyshev",
    ],
    "unrollsci.bench.lista": [
        "main",
        "make_problem",
        "sample",
        "oracle_nmse_db",
        "kkt_stage_lam",
        "MODELS",
        "CLASSICAL",
        "_train",
        "_classical",
        "_full_config",
        "_quick_config",
    ],
}


@pytest.mark.parametrize("module", sorted(SPLIT))
def test_split_modules_keep_their_names(module):
    mod = importlib.import_module(module)
    missing = [name for name in SPLIT[module] if not hasattr(mod, name)]
    assert not missing, f"{module} lost {missing}"
