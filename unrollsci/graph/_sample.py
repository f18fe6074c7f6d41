"""The node sample a cheap controller passes messages on (built once per graph, shared by
the problems on it), and the per-node features of the local node head (once per problem)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ._controller import StepController
from ._problem import GraphInverseProblem

__all__ = ["ControllerSample", "controller_sample", "local_features", "per_graph"]


@dataclass
class ControllerSample:
    """Where the controller runs when it pools over a node sample.

    Attributes:
        nodes: ``(m,)`` sorted indices of the sample's ``hops``-hop neighbourhood.
        pool: ``(s,)`` positions (in ``nodes``) of the sampled nodes.
        block_index: ``(m,)`` block of each node of ``nodes``.
        adj: the mean aggregation matrix restricted to ``nodes`` (``m x m`` sparse CSR).
    """

    nodes: torch.Tensor
    pool: torch.Tensor
    block_index: torch.Tensor
    adj: torch.Tensor


def _draw(block_index: torch.Tensor, num_blocks: int, size: int, seed: int) -> torch.Tensor:
    """Bool mask of ``min(size, block size)`` nodes per block, uniformly without
    replacement, from a generator seeded with ``seed`` (the same nodes on every device)."""
    bi = block_index.cpu()
    n = bi.numel()
    gen = torch.Generator().manual_seed(seed)
    if num_blocks == 1:  # one graph: a random permutation (no sort)
        chosen = torch.zeros(n, dtype=torch.bool)
        chosen[torch.randperm(n, generator=gen)[:size]] = True
        return chosen.to(block_index.device)
    keys = torch.rand(n, generator=gen, dtype=torch.float64)
    order = torch.argsort(bi.double() * 2.0 + keys)  # by block, random within a block
    counts = torch.bincount(bi, minlength=num_blocks)
    start = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.long)
    rank[order] = torch.arange(n) - start[bi[order]]
    return (rank < size).to(block_index.device)


def controller_sample(
    p: GraphInverseProblem, size: int, seed: int, hops: int, dtype: torch.dtype
) -> ControllerSample:
    """The sample of ``size`` nodes per graph (seeded) and its ``hops``-hop neighbourhood,
    cached on ``p``.

    After ``hops`` rounds of message passing a node's embedding depends only on the
    features within ``hops`` hops, so message passing on the neighbourhood (with the
    whole graph's degree normalization) gives the sampled nodes exactly the embeddings
    they have in the whole graph; nodes at the border get wrong ones but are not pooled.
    """

    def build() -> ControllerSample:
        chosen = _draw(p.block_index, p.num_blocks, size, seed)
        src, dst = p.edge_index[0], p.edge_index[1]
        inside = chosen.clone()
        for _ in range(hops):  # add the message sources of every node inside
            grow = torch.zeros_like(inside)
            grow[src[inside[dst]]] = True
            inside = inside | grow
        nodes = torch.nonzero(inside).reshape(-1)
        pool = torch.nonzero(chosen[nodes]).reshape(-1)
        adj = StepController.mean_adjacency(
            p.edge_index, p.edge_weight.to(dtype), p.num_nodes, nodes=nodes
        )
        return ControllerSample(nodes, pool, p.block_index[nodes], adj)

    return per_graph(p, f"controller-sample-{size}-{seed}-{hops}-{dtype}", build)


def per_graph(p: GraphInverseProblem, key: str, build: Any) -> Any:
    """``build()`` cached on ``p`` under ``key`` and shared by every problem on the same
    graph, blocks and device (the graph certificate cache): for what depends on the graph
    only (the controller's node sample, its mean adjacency). The value is shared: read it,
    never change it in place."""
    import hashlib

    import numpy as np

    from . import _graphcert
    from ._spectral import graph_digest

    def shared() -> Any:
        blocks = np.ascontiguousarray(p.block_ptr, dtype=np.int64).tobytes()
        what = f"{key}-{p.device}-{hashlib.sha256(blocks).hexdigest()}"
        return _graphcert.cached_for_graph(p.lap_scipy, what, build, graph_digest(p))

    return p.cached(key, shared)


def local_features(
    p: GraphInverseProblem, obs: torch.Tensor, rows: torch.Tensor, lip: torch.Tensor
) -> torch.Tensor:
    """The :data:`~unrollsci.graph.LOCAL_FEATURES` ``(batch or 1, n, 4)``: observed,
    ``log1p(degree)``, ``R_i / Lip`` and the (weighted) observed share of the neighbours."""

    def share() -> torch.Tensor:
        src, dst = p.edge_index[0], p.edge_index[1]
        w = p.edge_weight.to(obs.dtype)
        nb = obs.new_zeros(obs.shape).index_add(-1, dst, obs[..., src] * w)
        return nb / p.degree.to(obs.dtype).clamp(min=torch.finfo(obs.dtype).tiny)

    nbr = p.cached(f"observed-share-{obs.dtype}-{tuple(obs.shape)}", share)
    logdeg = torch.log1p(p.degree.to(obs.dtype))[None]
    r = rows / lip[:, p.block_index]
    batch = max(obs.shape[0], r.shape[0])
    parts = [obs, logdeg, r, nbr]
    return torch.stack([t.expand(batch, -1) for t in parts], -1)
