"""Audit Dec 13, "no runaway cost": ``inpainting_problem`` scanned every node for every
component of every signal (``labels == c``: num x components x n); now it counts the
observed nodes per component once per signal. The masks and signals for a seed must not
change: the reference below is the previous implementation."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.csgraph as csgraph
import torch

from unrollsci.graph import inpainting_problem, smooth_signal
from unrollsci.graph._laplacian import validate_adjacency


def _old_mask_and_y(adjacency, num, *, observed=0.5, noise=0.1, tau=10.0, seed=0):
    """The previous inpainting_problem up to the observations (mask, y)."""
    adj = validate_adjacency(adjacency)
    n = adj.shape[0]
    rng = np.random.default_rng(seed)
    x = smooth_signal(adj, num, tau=tau, seed=int(rng.integers(2**31)), dtype=torch.float64)
    mask = rng.random((num, n)) < observed
    ncomp, labels = csgraph.connected_components(adj, directed=False)
    for b in range(num):
        for c in range(ncomp):
            nodes = np.nonzero(labels == c)[0]
            if not mask[b, nodes].any():
                mask[b, rng.choice(nodes)] = True
    lo, hi = (noise, noise) if isinstance(noise, (int, float)) else noise
    sig = lo + (hi - lo) * rng.random((num, 1))
    y = (x.numpy() + sig * rng.standard_normal((num, n))) * mask
    return mask, y


def _graphs():
    rng = np.random.default_rng(0)
    out = []
    # disjoint edges (a matching), with isolated nodes at both ends
    r = np.arange(2, 60, 2)
    m = sp.coo_matrix((np.ones(r.size), (r, r + 1)), shape=(64, 64))
    out.append((m + m.T).tocsr())
    # random sparse graph: components of many sizes, unsorted labels
    w = sp.triu(sp.random(120, 120, density=0.012, random_state=rng), 1)
    w.data[:] = 1.0
    out.append((w + w.T).tocsr())
    # a permuted union of paths and a clique
    blocks = [sp.diags([1.0, 1.0], [-1, 1], shape=(k, k)) for k in (5, 1, 9, 3)]
    blocks.append(sp.csr_matrix(np.ones((6, 6)) - np.eye(6)))
    g = sp.block_diag(blocks).tocsr()
    p = rng.permutation(g.shape[0])
    out.append(g[p][:, p].tocsr())
    return out


@pytest.mark.parametrize("adj", _graphs())
@pytest.mark.parametrize(
    ("observed", "seed", "noise"), [(0.5, 0, 0.1), (0.1, 3, (0.05, 0.2)), (0.0, 7, 0.1)]
)
def test_masks_and_signals_unchanged_for_a_seed(adj, observed, seed, noise):
    p = inpainting_problem(adj, 3, observed=observed, seed=seed, noise=noise)
    mask, y = _old_mask_and_y(adj, 3, observed=observed, seed=seed, noise=noise)
    np.testing.assert_array_equal(p.mask.numpy(), mask)
    np.testing.assert_array_equal(p.y.numpy(), y)
    # every component has an observed node in every signal
    _, labels = csgraph.connected_components(adj, directed=False)
    for b in range(3):
        assert set(labels[mask[b]]) == set(labels)


class _CountingLabels(np.ndarray):
    """Component labels that count the elements compared by ``==``."""

    compared = 0

    def __eq__(self, other):  # type: ignore[override]
        _CountingLabels.compared += self.size
        return np.asarray(self) == other


def test_work_is_linear_in_signals_times_nodes(monkeypatch):
    """2,000 nodes in 1,000 components: the previous code compared num x 1,000 x 2,000
    labels; the work now is a few passes over the nodes per signal."""
    real = csgraph.connected_components

    def counting(*args, **kwargs):
        ncomp, labels = real(*args, **kwargs)
        return ncomp, labels.view(_CountingLabels)

    monkeypatch.setattr(csgraph, "connected_components", counting)
    _CountingLabels.compared = 0
    r = np.arange(0, 2000, 2)
    m = sp.coo_matrix((np.ones(r.size), (r, r + 1)), shape=(2000, 2000))
    p = inpainting_problem((m + m.T).tocsr(), 2, seed=1)
    assert p.y.shape == (2, 2000)
    assert _CountingLabels.compared <= 10 * 2 * 2000
