"""The controller's input features of :class:`~unrollsci.graph.UnrolledGraphGD`."""

from __future__ import annotations

import torch

from ..solvers._common import pow2_above
from ._problem import GraphInverseProblem
from ._sqrt import sqrt0

__all__ = ["step_features"]


def pow2_unit(v: torch.Tensor) -> torch.Tensor:
    """Per signal (row of ``v``), the power of two just above its largest magnitude (1 for
    a zero signal), detached (:func:`~unrollsci.solvers._common.pow2_above`): dividing by it
    is exact, so products of the scaled signal keep their bits at ordinary scales and
    neither overflow (float32 data of 1e20) nor lose digits to subnormals (1e-20; float64
    below 1e-150)."""
    return pow2_above(v.detach().abs().amax(-1, keepdim=True))


def step_features(
    p: GraphInverseProblem,
    x: torch.Tensor,
    g: torch.Tensor,
    hg: torch.Tensor,
    g0n: torch.Tensor,
    lip: torch.Tensor,
    lo: torch.Tensor,
    rows: torch.Tensor,
    obs: torch.Tensor,
    logdeg: torch.Tensor,
    k: int,
    num_layers: int,
    nodes: torch.Tensor | None = None,
    *,
    detach: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs of :class:`~unrollsci.graph.UnrolledGraphGD`'s controller at layer ``k``:
    node features (of ``nodes`` only, if given) and graph features (detached with
    ``detach``)."""
    tiny = torch.finfo(x.dtype).tiny
    bi = p.block_index
    if p.num_blocks == 1:  # one pass per reduction, no temporaries

        def dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return torch.linalg.vecdot(u, v)[:, None]

        cnt = x.new_full((1, 1), float(max(x.shape[-1], 1)))
    else:

        def dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return p.segment_sum(u * v)

        cnt = p.segment_sum(torch.ones_like(x[:1])).clamp(min=1)

    def rms(v: torch.Tensor) -> torch.Tensor:
        """The rms of ``v`` (scaled by :func:`pow2_unit`) per block; 1 where ``v`` is 0 (it
        normalizes a zero vector to 0, and no other: an absolute clamp at 1e-30 left
        signals below it unnormalized)."""
        r = sqrt0(dot(v, v) / cnt)  # sqrt0: no NaN gradient at v = 0
        return torch.where(r > 0, r, torch.ones_like(r))

    su, sh, sx = pow2_unit(g), pow2_unit(hg), pow2_unit(x)
    g, hg, x = g / su, hg / sh, x / sx  # normalized below: the units cancel
    gs, hs, xs = rms(g), rms(hg), rms(x)
    gg = dot(g, g)
    ray = dot(g, hg) / gg.clamp(min=tiny) * (sh / su)
    if nodes is not None:  # per-node features on the sample's neighbourhood only
        x, g, hg = x[:, nodes], g[:, nodes], hg[:, nodes]
        obs, logdeg, rows, bi = obs[:, nodes], logdeg[:, nodes], rows[:, nodes], bi[nodes]
    gn, hn, xn = g / gs[:, bi], hg / hs[:, bi], x / xs[:, bi]
    node = torch.stack(
        [
            gn * gn,
            gn * hn,
            hn * hn,
            xn * gn,
            obs.expand_as(x),
            logdeg.expand_as(x),
            rows / lip[:, bi],
        ],
        dim=-1,
    )
    gnorm = sqrt0(gg) * su
    glob = torch.stack(
        [
            torch.log((ray / lip).clamp(min=1e-12)),
            torch.log((lo / lip).clamp(min=1e-12)),
            torch.full_like(lip, k / max(num_layers, 1)),
            torch.log((gnorm / g0n.clamp(min=tiny)).clamp(min=1e-30)),
        ],
        dim=-1,
    )
    if detach:
        node, glob = node.detach(), glob.detach()
    return node, glob
