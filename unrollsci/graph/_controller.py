"""The GNN step-size controller and the window certificate."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .._compat import message_passing, quiet_csr
from ..solvers._chebyshev import chebyshev_roots

MessagePassing = message_passing()

__all__ = [
    "StepController",
    "certify_window",
    "NODE_FEATURES",
    "GLOBAL_FEATURES",
    "LOCAL_FEATURES",
    "NODE_HEADS",
]

#: Per-node input features (all sign- and scale-invariant; see ``UnrolledGraphGD``).
NODE_FEATURES = ("g^2", "g*Hg", "(Hg)^2", "x*g", "observed", "log1p(degree)", "R_i/Lip")
#: Per-graph input features.
GLOBAL_FEATURES = ("log(rayleigh/Lip)", "log(lambda_lo/Lip)", "layer/K", "log(|g|/|g0|)")
#: Per-node features of the ``node_head="local"`` head (static: computed once per forward).
LOCAL_FEATURES = ("observed", "log1p(degree)", "R_i/Lip", "observed share of neighbours")
#: The per-node heads: ``"mp"`` (on the message-passing embedding of every node) and
#: ``"local"`` (an affine function of :data:`LOCAL_FEATURES` whose coefficients the
#: graph-level embedding sets: no message passing over every node).
NODE_HEADS = ("mp", "local")


class StepController(MessagePassing):
    """A small message-passing network that proposes step sizes from the solver state.

    Each hop is ``h_i <- h_i + relu(W_s h_i + W_n sum_j (w_ij / d_i) h_j)`` (a
    degree-normalized weighted mean over neighbours), followed by a mean pool
    over the nodes of each graph. Three heads read the result:

    * ``scalar``: one logit per graph (one step per layer);
    * ``node``: one logit per node (a diagonal step);
    * ``window``: ``window`` logits per graph (the steps of a window of layers).

    With ``node_head="local"`` the per-node logit is instead ``c_0 + sum_f c_f phi_if``
    with ``phi_i`` the :data:`LOCAL_FEATURES` of node ``i`` and the coefficients ``c``
    read from the pooled graph embedding: its cost is a few vector operations over
    the nodes, so the message passing can run on a node sample only (see
    ``UnrolledGraphGD(controller_sample=...)``).

    The controller outputs logits only; :class:`UnrolledGraphGD` maps them into the
    certified ranges, so no weight value can break the convergence guarantee.

    Node features are ``(batch, n, len(NODE_FEATURES))`` and graph features
    ``(batch, num_blocks, len(GLOBAL_FEATURES))``; ``node_dim=-2`` lets a batch of
    signals on one graph share the message passing.

    Args:
        hidden: width of the node embeddings.
        hops: number of message-passing rounds.
        window: number of steps the window head proposes.
        init_scale: scale of the heads' initial weights (small: start near the
            head biases, which encode a 1/Lip step and Chebyshev window roots).
        node_head: ``"mp"`` (default) or ``"local"`` (the per-node head above).

    Example:
        >>> import torch
        >>> ctrl = StepController(hidden=8, hops=1, window=3)
        >>> ei = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
        >>> out = ctrl(torch.randn(2, 3, 7), torch.randn(2, 1, 4), ei, torch.ones(4),
        ...            torch.zeros(3, dtype=torch.long), 1)
        >>> out["scalar"].shape, out["node"].shape, out["window"].shape
        (torch.Size([2, 1]), torch.Size([2, 3]), torch.Size([2, 1, 3]))
    """

    def __init__(
        self,
        hidden: int = 32,
        hops: int = 2,
        window: int = 5,
        *,
        init_scale: float = 0.1,
        node_head: str = "mp",
    ) -> None:
        super().__init__(aggr="add", node_dim=-2)
        if hidden < 1 or hops < 0 or window < 1:
            raise ValueError(
                f"Expected hidden >= 1, hops >= 0, window >= 1 (got {hidden}, {hops}, {window})."
            )
        if node_head not in NODE_HEADS:
            raise ValueError(f"Expected node_head in {NODE_HEADS} (got {node_head!r}).")
        self.hidden, self.hops, self.window = int(hidden), int(hops), int(window)
        self.node_head = node_head
        self.init_scale = float(init_scale)
        nf, gf = len(NODE_FEATURES), len(GLOBAL_FEATURES)
        self.lin_in = nn.Linear(nf + gf, hidden)
        self.lin_self = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(hops))
        self.lin_nbr = nn.ModuleList(nn.Linear(hidden, hidden, bias=False) for _ in range(hops))
        self.glob = nn.Sequential(
            nn.Linear(hidden + gf, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head_scalar = nn.Linear(hidden, 1)
        if node_head == "mp":
            self.head_node: nn.Module = nn.Sequential(
                nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
            )
        else:  # coefficients of an affine function of the local features
            self.head_node = nn.Linear(hidden, 1 + len(LOCAL_FEATURES))
        self.head_window = nn.Linear(hidden, window)
        self.reset_heads()

    def reset_heads(self) -> None:
        """Small head weights; biases at a 1/Lip step and at Chebyshev roots."""
        with torch.no_grad():
            last = self.head_node[-1] if self.node_head == "mp" else self.head_node
            for head in (self.head_scalar, last, self.head_window):
                head.weight.mul_(self.init_scale)
                head.bias.zero_()
            # Chebyshev roots on [lo, hi] as fractions t_k in (0, 1): logit(t_k).
            w = self.window
            t = chebyshev_roots(w, dtype=torch.float64)
            t = t.clamp(1e-3, 1 - 1e-3)
            self.head_window.bias.copy_(torch.log(t / (1 - t)).to(self.head_window.bias.dtype))

    def get_config(self) -> dict[str, Any]:
        return {
            "hidden": self.hidden,
            "hops": self.hops,
            "window": self.window,
            "init_scale": self.init_scale,
            "node_head": self.node_head,
        }

    @staticmethod
    def mean_adjacency(
        edge_index: torch.Tensor,
        edge_weight: torch.Tensor,
        n: int,
        nodes: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The aggregation matrix ``M[i, j] = w_ji / d_i`` (``d_i`` the weighted in-degree)
        as a sparse CSR tensor, rows = message targets.

        ``nodes`` (sorted node indices): the submatrix ``M[nodes][:, nodes]`` (``d_i``
        still the degree in the whole graph), for message passing on a node subset;
        ``targets`` (sorted, a subset of ``nodes``): the rows ``M[targets][:, nodes]``
        only, for a hop that needs the new embeddings of ``targets`` only.

        ``forward`` builds it from ``edge_index`` when it is not given; callers that run
        the controller many times on one graph (every layer of an unrolled solver) build it
        once and pass it as ``adj``: one sparse-dense product per hop then replaces the
        gather / scatter of ``E x hidden`` messages.
        """
        src, dst = edge_index[0], edge_index[1]
        deg = edge_weight.new_zeros(n).index_add(0, dst, edge_weight)
        norm = edge_weight / deg.clamp(min=torch.finfo(edge_weight.dtype).tiny)[dst]
        m = r = n
        if nodes is not None:
            pos = torch.full((n,), -1, dtype=torch.long, device=dst.device)
            pos[nodes] = torch.arange(nodes.numel(), device=dst.device)
            pos_r = pos
            if targets is not None:
                pos_r = torch.full((n,), -1, dtype=torch.long, device=dst.device)
                pos_r[targets] = torch.arange(targets.numel(), device=dst.device)
            keep = (pos_r[dst] >= 0) & (pos[src] >= 0)
            src, dst, norm = pos[src[keep]], pos_r[dst[keep]], norm[keep]
            m = r = nodes.numel()
            if targets is not None:
                r = targets.numel()
        coo = torch.sparse_coo_tensor(
            torch.stack([dst, src]), norm, (r, m), check_invariants=False
        ).coalesce()
        with quiet_csr():
            return coo.to_sparse_csr()

    def forward(
        self,
        node_feat: torch.Tensor,
        graph_feat: torch.Tensor,
        edge_index: torch.Tensor,
        edge_weight: torch.Tensor,
        block_index: torch.Tensor,
        num_blocks: int,
        adj: torch.Tensor | None = None,
        node_head: bool = True,
        *,
        pool_index: torch.Tensor | None = None,
        local_feat: torch.Tensor | None = None,
        local_block_index: torch.Tensor | None = None,
        hop_rows: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Logits for every head.

        Args:
            node_feat: ``(batch, n, F_node)``.
            graph_feat: ``(batch, num_blocks, F_graph)``.
            edge_index: ``(2, E)`` (both directions); edge_weight: ``(E,)`` >= 0.
            block_index: ``(n,)`` block of each node.
            num_blocks: number of blocks (graphs).
            adj: optional :meth:`mean_adjacency` of ``(edge_index, edge_weight)``,
                precomputed (the result is the same; only faster).
            node_head: False skips the per-node head (its entry is then absent), for
                callers that read only the per-graph heads.
            pool_index: pool over these nodes only (default: all); with ``node_feat``
                given on the ``hops``-hop neighbourhood of them (and ``adj`` the
                :meth:`mean_adjacency` of that node set) the graph heads equal those of
                the whole graph pooled over the same nodes.
            local_feat: ``node_head="local"``: ``(batch or 1, n_out, len(LOCAL_FEATURES))``,
                the nodes the per-node head is evaluated on, with ``local_block_index``
                (default ``block_index``).
            hop_rows: per hop ``(keep, m)``: the hop computes the new embeddings of the
                rows ``keep`` of the current ones only, aggregating with ``m`` (rows
                ``keep``, columns the current rows); the graph heads then pool over the
                rows left after the last hop (``pool_index`` must be None). For a node
                sample, whose pooled nodes need fewer and fewer neighbours hop by hop
                (:class:`~unrollsci.graph._sample.ControllerSample`).

        Returns:
            dict with ``scalar: (batch, num_blocks)``, ``node: (batch, n)`` (``n_out``
            for the local head), ``window: (batch, num_blocks, window)``, and ``graph``:
            the pooled graph embedding ``(batch, num_blocks, hidden)``.
        """
        n = node_feat.shape[-2]
        if adj is None and hop_rows is None:
            adj = self.mean_adjacency(edge_index, edge_weight.to(node_feat.dtype), n)
        h = torch.relu(self.lin_in(torch.cat([node_feat, graph_feat[:, block_index]], -1)))
        bp = block_index
        if hop_rows is not None:
            if pool_index is not None or len(hop_rows) != self.hops:
                raise ValueError(
                    f"Expected {self.hops} hop_rows and no pool_index (got {len(hop_rows)})."
                )
            if node_head and self.node_head == "mp":
                raise ValueError("hop_rows drops nodes: the 'mp' node head needs every node.")
            for (keep, m), lin_s, lin_n in zip(hop_rows, self.lin_self, self.lin_nbr, strict=True):
                agg = self.message_and_aggregate(m, h)
                h = h[:, keep]
                h = h + torch.relu(lin_s(h) + lin_n(agg))
                bp = bp[keep]
        else:
            for lin_s, lin_n in zip(self.lin_self, self.lin_nbr, strict=True):
                # a sparse adjacency makes PyG call message_and_aggregate (fused, as GCNConv)
                agg = self.propagate(adj, x=h)
                h = h + torch.relu(lin_s(h) + lin_n(agg))
        hp = h
        if pool_index is not None:
            hp, bp = h[:, pool_index], block_index[pool_index]
        count = (
            node_feat.new_zeros(num_blocks)
            .index_add(0, bp, node_feat.new_ones(bp.shape[0]))
            .clamp(min=1)
        )
        pooled = (
            h.new_zeros(h.shape[0], num_blocks, h.shape[-1]).index_add(1, bp, hp) / count[:, None]
        )
        gl = self.glob(torch.cat([pooled, graph_feat], -1))
        out = {
            "scalar": self.head_scalar(gl).squeeze(-1),
            "window": self.head_window(gl),
            "graph": gl,
        }
        if node_head and self.node_head == "local":
            if local_feat is None:
                raise ValueError("Expected 'local_feat' for node_head='local'.")
            lbi = block_index if local_block_index is None else local_block_index
            out["node"] = self.local_node_logits(gl, local_feat, lbi)
        elif node_head:
            out["node"] = self.head_node(torch.cat([h, gl[:, block_index]], -1)).squeeze(-1)
        return out

    def local_node_logits(
        self, graph_emb: torch.Tensor, local_feat: torch.Tensor, block_index: torch.Tensor
    ) -> torch.Tensor:
        """``node_head="local"``: the per-node logits ``c_0 + sum_f c_f phi_if``,
        ``(batch, n)``, from the graph embedding ``(batch, num_blocks, hidden)`` and the
        local features ``(batch or 1, n, len(LOCAL_FEATURES))``."""
        if self.node_head != "local":
            raise ValueError("local_node_logits needs StepController(node_head='local').")
        coef = self.head_node(graph_emb)  # (batch, blocks, 1 + F)
        if coef.shape[1] == 1:  # one block: broadcast instead of a gather over the nodes
            c = coef
        else:
            c = coef[:, block_index]
        return c[..., 0] + (c[..., 1:] * local_feat).sum(-1)

    def message_and_aggregate(self, adj_t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # x: (batch, n, hidden) -> (n, batch * hidden) for one sparse-dense product
        b, n, c = x.shape
        flat = x.transpose(0, 1).reshape(n, b * c)
        rows = adj_t.shape[0]  # fewer than n for a hop of ``hop_rows``
        return torch.sparse.mm(adj_t, flat).reshape(rows, b, c).transpose(0, 1)


def certify_window(
    steps: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, *, grid: int | None = None
) -> torch.Tensor:
    """Certified bound on ``max |p(lam)|`` over ``[lo, hi]`` for ``p(lam) = prod_k (1 - s_k lam)``.

    The polynomial is evaluated on ``N + 1`` equispaced points (spacing ``h = (hi -
    lo) / N``), so every point of the interval is within ``h / 2`` of a grid point.
    Markov's inequality for a polynomial of degree ``w`` on an interval of length
    ``hi - lo``, ``max |p'| <= 2 w^2 / (hi - lo) * max |p|``, then gives

        max |p| <= M_grid + (h / 2) * 2 w^2 / (hi - lo) * max |p|
        =>  max |p| <= M_grid / (1 - w^2 / N)      (for N > w^2).

    ``N = max(1024, 256 w^2)`` by default (the bound is then within 0.4% of the grid
    maximum). Computed in float64 without gradients.

    Args:
        steps: ``(..., w)`` step sizes of the window.
        lo, hi: ``(...)`` interval ``0 <= lo < hi`` containing the spectrum of ``H``.
        grid: ``N`` (must exceed ``w^2``).

    Returns:
        ``(...)`` certified upper bounds on ``max_{lam in [lo, hi]} |p(lam)|``.
    """
    w = steps.shape[-1]
    n = grid if grid is not None else max(1024, 256 * w * w)
    if n <= w * w:
        raise ValueError(f"Expected grid > w^2 = {w * w} (got {n}).")
    with torch.no_grad():
        s = steps.detach().double()
        a, b = lo.detach().double(), hi.detach().double()
        t = torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64, device=s.device)
        lam = a[..., None] + (b - a)[..., None] * t  # (..., N+1)
        p = torch.ones_like(lam)
        for k in range(w):
            p = p * (1.0 - s[..., k, None] * lam)
        m = p.abs().amax(-1)
        return m / (1.0 - w * w / n)
