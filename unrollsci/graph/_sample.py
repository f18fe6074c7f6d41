"""The node sample a cheap controller passes messages on (built once per graph, shared by
the problems on it), and the per-node features of the local node head (once per problem)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from .._compat import quiet_csr
from ._controller import StepController
from ._problem import GraphInverseProblem

__all__ = ["ControllerSample", "controller_sample", "local_features", "per_graph"]


@contextlib.contextmanager
def _constant() -> Iterator[None]:
    """Where the cached graph constants are built: outside ``torch.inference_mode()`` (no
    inference tensors in a cache) and without torch's once-per-process notice that sparse
    CSR tensors are "in beta" (the mean adjacency is one; the notice is nothing a user can
    act on)."""
    with torch.inference_mode(False), quiet_csr():
        yield


@dataclass
class ControllerSample:
    """Where the controller runs when it pools over a node sample.

    Attributes:
        nodes: ``(m,)`` sorted indices of the sample's ``hops``-hop neighbourhood.
        pool: ``(s,)`` positions (in ``nodes``) of the sampled nodes.
        block_index: ``(m,)`` block of each node of ``nodes``.
        hop_rows: per hop ``(keep, M)``, for ``StepController(hop_rows=...)``: hop ``j``
            needs new embeddings only within ``hops - j`` hops of the sample (rows
            ``keep`` of the previous hop's nodes, ``M`` their rows of the mean
            aggregation matrix), and the last hop only on the sample itself.
        adj: the mean aggregation matrix restricted to ``nodes`` (``m x m`` sparse CSR;
            built on first use).

    The tensors are constants shared by every problem on the graph: they are built
    outside ``torch.inference_mode()`` (a sample first used under it still serves
    later autograd calls).
    """

    nodes: torch.Tensor
    pool: torch.Tensor
    block_index: torch.Tensor
    hop_rows: list[tuple[torch.Tensor, torch.Tensor]]
    edge_index: torch.Tensor
    edge_weight: torch.Tensor
    num_nodes: int

    @cached_property
    def adj(self) -> torch.Tensor:
        with _constant():
            return StepController.mean_adjacency(
                self.edge_index, self.edge_weight, self.num_nodes, nodes=self.nodes
            )


def _draw(
    block_index: torch.Tensor, num_blocks: int, size: int, seed: int, full_up_to: int = 0
) -> torch.Tensor:
    """Bool mask of ``min(size, block size)`` nodes per block, uniformly without
    replacement; every node of a block of at most ``full_up_to`` nodes.

    Each block (graph) is drawn as if it were alone: a random permutation of its nodes
    from a generator seeded with ``seed`` (the same nodes on every device), so a graph's
    sample, and the model's output on it, do not depend on the other graphs of a batch
    or on its position there. ``block_index`` is sorted (blocks are contiguous)."""
    bi = block_index.cpu()
    chosen = torch.zeros(bi.numel(), dtype=torch.bool)
    gen = torch.Generator()
    start = 0
    for count in torch.bincount(bi, minlength=num_blocks).tolist():
        if count <= max(size, full_up_to):  # the whole block
            chosen[start : start + count] = True
        else:
            gen.manual_seed(seed)
            chosen[start + torch.randperm(count, generator=gen)[:size]] = True
        start += count
    return chosen.to(block_index.device)


def controller_sample(
    p: GraphInverseProblem,
    size: int,
    seed: int,
    hops: int,
    dtype: torch.dtype,
    *,
    full_up_to: int = 0,
) -> ControllerSample:
    """The sample of ``size`` nodes per graph (seeded; every node of a graph of at most
    ``full_up_to`` nodes) and its ``hops``-hop neighbourhood, cached on ``p``.

    After ``hops`` rounds of message passing a node's embedding depends only on the
    features within ``hops`` hops, so message passing on the neighbourhood (with the
    whole graph's degree normalization) gives the sampled nodes exactly the embeddings
    they have in the whole graph; nodes at the border get wrong ones but are not pooled.
    """

    def build() -> ControllerSample:
        chosen = _draw(p.block_index, p.num_blocks, size, seed, full_up_to)
        src, dst = p.edge_index[0], p.edge_index[1]
        within = [chosen]  # within[r]: the nodes at most r hops from the sample
        for _ in range(hops):  # add the message sources of every node inside
            grow = torch.zeros_like(within[-1])
            grow[src[within[-1][dst]]] = True
            within.append(within[-1] | grow)
        sets = [torch.nonzero(w).reshape(-1) for w in within]
        nodes = sets[-1]
        pool = torch.nonzero(chosen[nodes]).reshape(-1)
        weight = p.edge_weight.to(dtype)
        hop_rows = []
        for r in range(hops, 0, -1):  # hop hops - r + 1: from sets[r] to sets[r - 1]
            keep = torch.searchsorted(sets[r], sets[r - 1])
            m = StepController.mean_adjacency(
                p.edge_index, weight, p.num_nodes, nodes=sets[r], targets=sets[r - 1]
            )
            hop_rows.append((keep, m))
        return ControllerSample(
            nodes, pool, p.block_index[nodes], hop_rows, p.edge_index, weight, p.num_nodes
        )

    key = f"controller-sample-{size}-{seed}-{hops}-{dtype}-{full_up_to}"
    return per_graph(p, key, build)


def per_graph(p: GraphInverseProblem, key: str, build: Any) -> Any:
    """``build()`` cached on ``p`` under ``key`` and shared by every problem on the same
    graph, blocks and device (the graph certificate cache): for what depends on the graph
    only (the controller's node sample, its mean adjacency). The value is shared: read it,
    never change it in place. It is built outside ``torch.inference_mode()`` (no
    inference tensors in the cache: a first use under it leaves later autograd calls,
    on any problem of the graph, working)."""
    import hashlib

    import numpy as np

    from . import _graphcert
    from ._spectral import graph_digest

    def constant() -> Any:
        with _constant():
            return build()

    def shared() -> Any:
        blocks = np.ascontiguousarray(p.block_ptr, dtype=np.int64).tobytes()
        what = f"{key}-{p.device}-{hashlib.sha256(blocks).hexdigest()}"
        return _graphcert.cached_for_graph(p.lap_scipy, what, constant, graph_digest(p))

    return p.cached(key, shared)


def local_features(
    p: GraphInverseProblem, obs: torch.Tensor, rows: torch.Tensor, lip: torch.Tensor
) -> torch.Tensor:
    """The :data:`~unrollsci.graph.LOCAL_FEATURES` ``(batch or 1, n, 4)``: observed,
    ``log1p(degree)``, ``R_i / Lip`` and the (weighted) observed share of the neighbours."""

    def share() -> torch.Tensor:  # a constant of the problem: no inference tensor cached
        with torch.inference_mode(False):
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
