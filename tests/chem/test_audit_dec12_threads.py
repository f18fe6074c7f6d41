"""The neighbour search follows torch's thread count (vesin started a thread per core)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

vesin = pytest.importorskip("vesin")


def test_vesin_search_uses_torch_thread_count(monkeypatch):
    import inspect

    from unrollsci.chem import _geometry

    if "n_threads" not in inspect.signature(vesin.NeighborList.__init__).parameters:
        pytest.skip("this vesin has no n_threads")
    _geometry._vesin_threads(vesin)  # the capability, read from the real class
    seen = []
    real = vesin.NeighborList

    class Spy(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            seen.append(kwargs.get("n_threads"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(vesin, "NeighborList", Spy)
    rng = np.random.default_rng(0)
    positions = rng.uniform(0.0, 6.0, (20, 3))
    cell = 6.0 * np.eye(3)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            i, j, s = _geometry.half_pairs(positions, cell, np.ones(3, bool), 3.0)
            assert seen[-1] == threads and i.size > 0
    finally:
        torch.set_num_threads(before)
