"""The committed transferable window_jacobi checkpoint (issue 23) reproduces its rows."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

from unrollsci.bench._graph_train import load_models
from unrollsci.bench.graph_seeds import small_test_problems

ROOT = Path(__file__).resolve().parents[2]
FOLDER = ROOT / "benchmarks" / "checkpoints" / "graph_transfer"
RESULTS = ROOT / "benchmarks" / "results" / "graph_seeds.json"


def test_committed_transfer_checkpoint_reproduces_its_rows():
    """Loading the checkpoint (weights_only) and running it on the Minnesota and sensor 1000
    test problems gives the errors and learned-window shares that graph_seeds.json records
    for the model chosen on the validation set, and the checkpoint is that model."""
    data = json.loads(RESULTS.read_text())
    chosen = data["selection"]["chosen"]
    assert data["selection"]["scores"][chosen]["eligible"]
    path = FOLDER / "graph_window_jacobi.pt"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == data["sha256"][chosen]
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["extra"]["config"]["seed"] == int(chosen.rsplit("_s", 1)[1])
    model = load_models(FOLDER, ("window_jacobi",))[0]["window_jacobi"]
    assert next(model.parameters()).dtype == torch.float64
    problems = small_test_problems()
    if problems[0][0] != "Minnesota":
        pytest.skip("pygsp missing: the Minnesota row cannot be rebuilt")
    with torch.no_grad():
        for name, p in problems:
            out = model(p)
            err = float(p.relative_error(out.x).mean())
            learned = float(torch.stack(out.certified).double().mean())
            assert err == pytest.approx(data["test"][chosen][name]["err"], rel=1e-9)
            assert learned == data["test"][chosen][name]["learned"]
