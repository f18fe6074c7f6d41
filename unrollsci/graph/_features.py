"""The controller's input features of :class:`~unrollsci.graph.UnrolledGraphGD`, and the
exact rescalings its forward uses to keep every product in range."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from ..solvers._common import pow2_above
from ._sqrt import sqrt0

if TYPE_CHECKING:  # _problem imports block_pow2 from here
    from ._problem import GraphInverseProblem

__all__ = ["big_steps", "block_pow2", "data_unit", "jacobi_scaling", "step_features"]


def pow2_unit(v: torch.Tensor) -> torch.Tensor:
    """Per signal (row of ``v``), the power of two just above its largest magnitude (1 for
    a zero signal), detached (:func:`~unrollsci.solvers._common.pow2_above`): dividing by it
    is exact, so products of the scaled signal keep their bits at ordinary scales and
    neither overflow (float32 data of 1e20) nor lose digits to subnormals (1e-20; float64
    below 1e-150)."""
    return pow2_above(v.detach().abs().amax(-1, keepdim=True))


def block_pow2(p: GraphInverseProblem, v: torch.Tensor) -> torch.Tensor:
    """:func:`pow2_unit` per signal and block of ``p`` (the power of two just above the
    block's largest magnitude of ``v: (batch, n)``, 1 for a zero block), broadcastable to
    ``v`` (``(batch, 1)`` for one block, else ``(batch, n)``): each graph of a batch is
    scaled into range on its own, exactly."""
    if p.num_blocks == 1:
        return pow2_unit(v)
    big = v.detach().abs()
    idx = p.block_index.expand_as(big)
    big = big.new_zeros(big.shape[0], p.num_blocks).scatter_reduce(1, idx, big, "amax")
    return pow2_above(big)[:, p.block_index]


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


def data_unit(b: torch.Tensor, x0: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor | None:
    """A power of two per signal to run the solver on ``b / 2^k`` (and ``x0``) where ``H g``
    may overflow (float32 data of 1e30 with ``lam`` 1e10 gave NaN): ``max |b| max_i R_i``
    above the square root of the dtype's largest number (a margin for the iterates'
    growth); None where no signal needs it, so ordinary data run unchanged. Exact: the
    solver is linear in ``(b, x0)``, its features normalized, its steps set by ``H``."""
    big = b.detach().abs().amax(-1, keepdim=True)
    if x0 is not None:
        big = torch.maximum(big, x0.detach().abs().amax(-1, keepdim=True))
    need = big * rows.detach().amax(-1, keepdim=True) > torch.finfo(b.dtype).max ** 0.5
    if not bool(need.any()):
        return None
    return torch.where(need, pow2_above(torch.where(need, big, torch.ones_like(big))), 1.0)


def jacobi_scaling(diag: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> D^{-1} v`` for ``D = diag(H)``: a product with the reciprocal, as always,
    except where it overflows (a subnormal ``H_ii``: float32, ``lam`` 1e-40), which are
    divided by ``H_ii`` instead (``inf * 0`` gave NaN), with finite gradients."""
    dinv = 1.0 / diag
    fin = torch.isfinite(dinv)
    if bool(fin.all()):
        return lambda v: dinv * v
    inv0 = torch.where(fin, dinv, torch.zeros_like(dinv))
    big = torch.where(fin, torch.full_like(diag, float("inf")), diag)
    return lambda v: inv0 * v + v / big


def big_steps(
    sq: torch.Tensor, g: torch.Tensor, rows: torch.Tensor, inf_rows: torch.Tensor
) -> torch.Tensor:
    """``d * g``, ``d = (2 / R) sq`` (diagonal mode) where some ``2 / R_i`` overflow: those
    entries as ``2 sq (g / R)`` (finite: ``|g_i| <= R_i max |x|`` there), the others as
    ``d * g`` (the same bits), with finite gradients."""
    one = torch.ones_like(rows)
    d0 = torch.where(inf_rows, 0.0, (2.0 / torch.where(inf_rows, one, rows)) * sq)
    big = torch.where(inf_rows, rows, torch.full_like(rows, float("inf")))
    return d0 * g + (2.0 * sq) * (g / big)
