"""Unrolled gradient descent on graph inverse problems with certified learned steps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._validation import (
    DtypeMismatchError,
    check_count,
    check_finite,
    check_model_dtype,
    check_same_device,
    check_tensor,
    model_dtype,
)
from ._controller import StepController
from ._features import big_steps, data_unit, jacobi_scaling, pow2_unit, step_features
from ._problem import GraphInverseProblem
from ._pyg import is_pyg_data, problem_from_data
from ._sample import controller_sample, local_features, per_graph
from ._sqrt import sqrt0
from ._window import window_steps

__all__ = ["UnrolledGraphGD", "GraphGDResult", "MODES"]

MODES = ("scalar", "diagonal", "window", "window_jacobi")


@dataclass
class GraphGDResult:
    """What :class:`UnrolledGraphGD` returns.

    Attributes:
        x: ``(batch, n)`` final estimate.
        iterates: ``num_layers + 1`` tensors ``(batch, n)``, starting with ``x0``.
        steps: one tensor per layer: ``(batch, num_blocks)`` (scalar, window,
            window_jacobi: the step ``s_k`` multiplying ``D^{-1} g``) or ``(batch, n)``
            (diagonal).
        certified: window mode: one ``(batch, num_blocks)`` bool tensor per window
            (False where no learned roots passed the certificate and the pulled or safe
            steps ran instead).
        certificates: window mode: the certified contraction factor of each window
            actually run, ``(batch, num_blocks)``.
        window_starts: layer index at which each window starts.
        backup: window mode: one ``(batch, num_blocks)`` bool tensor per window, True
            where the backup controller's learned roots ran (``certified`` is True there
            too).
        blend: window mode: the fraction ``t`` of the learned roots kept in each
            window (1: learned roots, 0: Chebyshev roots, -1: ``1/Lip`` steps).
        violation: window mode: differentiable penalty, how far the learned roots
            lie outside the certified set (added by :func:`graph_loss`).
        matvecs: products with ``H`` (and its factors) used.
    """

    x: torch.Tensor
    iterates: list[torch.Tensor] = field(default_factory=list)
    steps: list[torch.Tensor] = field(default_factory=list)
    certified: list[torch.Tensor] = field(default_factory=list)
    certificates: list[torch.Tensor] = field(default_factory=list)
    window_starts: list[int] = field(default_factory=list)
    blend: list[torch.Tensor] = field(default_factory=list)
    backup: list[torch.Tensor] = field(default_factory=list)
    matvecs: int = 0
    violation: torch.Tensor | None = None


class UnrolledGraphGD(nn.Module):
    """``num_layers`` gradient steps ``x <- x - step * grad f(x)`` whose steps a GNN chooses.

    The controller (:class:`StepController`) reads the state at each layer and outputs
    logits; this module maps them into ranges where convergence holds for every value of
    the weights (``Lip >= lambda_max(H)``, ``lo <= lambda_min(H)``):

    * ``mode="scalar"``: one step ``s in [2 floor / Lip, 2 (1 - margin) / Lip]`` per layer
      and graph: every layer decreases ``f``, at a linear rate independent of the weights.
    * ``mode="diagonal"``: per-node steps ``0 < d_i <= 2 (1 - margin) / R_i`` (``R_i`` the
      Gershgorin row sum of ``H``): every layer is a strict descent step, linear rate.
    * ``mode="window"``: per window of ``controller.window`` layers, learned roots in
      ``(lo, Lip)`` whose polynomial is certified by :func:`certify_window` to contract
      ``||x - x*||_H`` by ``q <= q_max``, else safe fallback steps (``q < 1``).
    * ``mode="window_jacobi"`` (mask problems): the window mode on the Jacobi-preconditioned
      gradient ``D^{-1} grad f``, ``D = diag(H)``, certified on
      :meth:`GraphInverseProblem.jacobi_interval`.

    The proofs are in docs/graph.md ("Why the guarantees hold").

    Args:
        num_layers: number of layers ``K``.
        controller: a :class:`StepController` (a default one if None).
        mode: ``"scalar"``, ``"diagonal"``, ``"window"`` or ``"window_jacobi"``.
        margin: keeps steps ``<= 2 (1 - margin) / Lip`` (resp. ``/ R_i``).
        floor: keeps steps ``>= 2 floor / Lip`` (resp. ``/ R_i``), for a rate.
        q_max: window modes: certificate threshold (``< 1``; another value than the
            default is refused in the other modes).
        lipschitz_method: passed to ``problem.lipschitz``.
        detach_features: treat the controller's inputs as constants in backprop.
        controller_every: scalar and diagonal modes: run the controller at every
            ``controller_every``-th layer and reuse its step in the layers between (each
            layer's step stays in the certified range, so the guarantees are unchanged;
            diagonal mode then also skips the product ``H g`` that only the features need).
            The window modes run it once per window: a value other than 1 is refused there.
        controller_sample: None (default: the controller passes messages over every
            node) or ``S``: per graph, ``S`` nodes drawn once per problem (seeded by
            ``controller_seed``) are pooled, and the controller runs on their
            ``hops``-hop neighbourhood only, so its cost no longer grows with the graph.
            The pooled embedding is exactly that of the whole graph pooled over the
            sample (equal to the default when ``S`` >= the graph's size). The diagonal
            mode then needs ``StepController(node_head="local")``. The step ranges, and
            so every guarantee, do not depend on it.
        controller_seed: seed of the node sample (only with ``controller_sample``).
        controller_full_up_to: with ``controller_sample``, graphs (blocks) of at most
            this many nodes are pooled over every node, as without a sample (default 0:
            every graph above ``controller_sample`` nodes is sampled). For a controller
            trained without a sample: small graphs, where the sample's neighbourhood is
            most of the graph anyway, keep exactly what it was trained on.
        backup: window modes: a second :class:`StepController` (same ``window`` and
            ``hops``) whose learned roots are tried, on the same features, where the
            controller's own fail the certificate, before the roots pulled towards
            Chebyshev's and the safe steps (``GraphGDResult.backup`` says where they
            ran). A specialist tuned to one family with a controller trained to transfer
            behind it; the certificate decides per graph and signal, so every guarantee
            is unchanged, and the backup runs only in windows where it is needed.

    Example:
        >>> import networkx as nx, torch
        >>> from unrollsci.graph import GraphInverseProblem, StepController, UnrolledGraphGD
        >>> G = nx.grid_2d_graph(5, 5)
        >>> y = torch.randn(2, 25, dtype=torch.float64)
        >>> p = GraphInverseProblem.from_networkx(G, y, mask=torch.rand(25) < 0.5, lam=1.0)
        >>> model = UnrolledGraphGD(10, StepController(hidden=8), mode="scalar").double()
        >>> out = model(p)
        >>> out.x.shape, len(out.iterates)
        (torch.Size([2, 25]), 11)
    """

    def __init__(
        self,
        num_layers: int,
        controller: StepController | None = None,
        mode: str = "scalar",
        *,
        margin: float = 0.02,
        floor: float = 0.05,
        q_max: float = 0.999,
        lipschitz_method: str = "auto",
        detach_features: bool = True,
        controller_every: int = 1,
        controller_sample: int | None = None,
        controller_seed: int = 0,
        controller_full_up_to: int = 0,
        backup: StepController | None = None,
    ) -> None:
        super().__init__()
        num_layers = check_count("num_layers", num_layers)
        if mode not in MODES:
            raise ValueError(f"Expected mode in {MODES} (got {mode!r}).")
        if not 0 < margin < 1 or not 0 < floor < 1 - margin:
            raise ValueError(
                f"Expected 0 < margin < 1 and 0 < floor < 1 - margin (got {margin}, {floor})."
            )
        if not 0 < q_max < 1:
            raise ValueError(f"Expected 0 < q_max < 1 (got {q_max}).")
        if controller is not None and not isinstance(controller, StepController):
            raise TypeError(f"Expected a StepController (got {type(controller).__name__}).")
        self.num_layers = int(num_layers)
        self.controller = controller if controller is not None else StepController()
        self.mode = mode
        self.margin, self.floor, self.q_max = float(margin), float(floor), float(q_max)
        self.lipschitz_method = lipschitz_method
        self.detach_features = bool(detach_features)
        controller_every = check_count("controller_every", controller_every)
        if mode not in ("scalar", "diagonal") and controller_every != 1:
            raise ValueError(
                "Expected controller_every other than 1 only with mode 'scalar' or 'diagonal' "
                f"(got controller_every={controller_every!r} with mode={mode!r}: a window "
                "mode runs the controller once per window)."
            )
        self.controller_every = int(controller_every)
        controller_sample = check_count("controller_sample", controller_sample, optional=True)
        controller_seed = check_count("controller_seed", controller_seed, None)
        if controller_sample is not None and mode == "diagonal":
            if self.controller.node_head != "local":
                raise ValueError(
                    "Expected StepController(node_head='local') for mode='diagonal' with "
                    "controller_sample (the 'mp' node head needs messages over every node)."
                )
        self.controller_sample = controller_sample
        self.controller_seed = int(controller_seed)
        full = check_count("controller_full_up_to", controller_full_up_to, 0)
        self.controller_full_up_to = full
        if controller_sample is None and (self.controller_seed != 0 or full != 0):
            raise ValueError(
                "Expected controller_seed and controller_full_up_to only with "
                f"controller_sample, where they act (got controller_seed={controller_seed!r}, "
                f"controller_full_up_to={full!r} with controller_sample=None)."
            )
        if mode not in ("window", "window_jacobi") and q_max != 0.999:
            raise ValueError(
                f"Expected q_max only with a window mode, where it acts (got q_max={q_max!r} "
                f"with mode={mode!r}; leave it at its default 0.999)."
            )
        if backup is not None:
            if not isinstance(backup, StepController):
                raise TypeError(f"Expected a StepController backup (got {type(backup).__name__}).")
            if mode not in ("window", "window_jacobi"):
                raise ValueError(f"Expected a window mode for a backup controller (got {mode!r}).")
            mine = (self.controller.window, self.controller.hops)
            if (backup.window, backup.hops) != mine:
                raise ValueError(
                    f"Expected a backup with the controller's window and hops {mine} (got "
                    f"{(backup.window, backup.hops)})."
                )
        self.backup = backup

    @property
    def dtype(self) -> torch.dtype | None:
        """The model's dtype: that of its learned parameters (``model.double()`` changes
        it). Inputs must have it (:class:`~unrollsci.DtypeMismatchError` otherwise)."""
        return model_dtype(self)

    def get_config(self) -> dict[str, Any]:
        return {
            "num_layers": self.num_layers,
            "controller": StepController(**self.controller.get_config()),
            "mode": self.mode,
            "margin": self.margin,
            "floor": self.floor,
            "q_max": self.q_max,
            "lipschitz_method": self.lipschitz_method,
            "detach_features": self.detach_features,
            "controller_every": self.controller_every,
            "controller_sample": self.controller_sample,
            "controller_seed": self.controller_seed,
            "controller_full_up_to": self.controller_full_up_to,
            "backup": None if self.backup is None else StepController(**self.backup.get_config()),
        }

    def _squash(self, z: torch.Tensor) -> torch.Tensor:
        # a NaN logit (an overflow inside the controller, at large but finite weights) is
        # read as 0, the middle of the range, so the clamp holds whatever the weights;
        # +-inf saturate in the sigmoid and finite logits are left as they are
        z = torch.nan_to_num(z, nan=0.0)
        return self.floor + (1.0 - self.margin - self.floor) * torch.sigmoid(z)

    def forward(
        self,
        problem: GraphInverseProblem,
        x0: torch.Tensor | None = None,
        *,
        num_layers: int | None = None,
    ) -> GraphGDResult:
        """Run the unrolled solver on ``problem``.

        Args:
            problem: a :class:`GraphInverseProblem` (batch of signals / graphs), or a PyG
                ``Data``/``Batch`` with the observations ``y``, the ``mask`` and ``lam``
                as attributes (converted by :func:`problem_from_data`; bounds stored by
                :class:`CertifiedBounds` are reused, see docs/graph.md "PyG pipelines").
            x0: ``(batch, n)`` start (zeros if None): finite, in the problem's dtype and
                on its device.
            num_layers: run this many layers instead of ``self.num_layers`` (the
                controller is shared by all layers, so the learned rule extends).

        Returns:
            :class:`GraphGDResult`.
        """
        if is_pyg_data(problem):
            problem = problem_from_data(problem)
        if not isinstance(problem, GraphInverseProblem):
            raise TypeError(
                "Expected a GraphInverseProblem or a PyG Data/Batch (got "
                f"{type(problem).__name__})."
            )
        K = self.num_layers if num_layers is None else int(num_layers)  # noqa: N806
        if K < 1:
            raise ValueError(f"Expected num_layers >= 1 (got {K}).")
        p = problem
        check_model_dtype("a problem (its signals 'y')", p.dtype, self, data="y")
        dtype = p.dtype
        if self.backup is not None and model_dtype(self.backup) != self.dtype:
            raise DtypeMismatchError(
                f"Expected the backup controller in the model's dtype {self.dtype} (got "
                f"{model_dtype(self.backup)}); convert the whole model (model.to(dtype)), "
                "which converts both controllers."
            )
        if self.mode == "window_jacobi" and p.kind != "mask":
            raise ValueError(
                "Expected a mask problem for mode='window_jacobi' (diag(H) and the Jacobi "
                f"spectral interval are exact for masks only; got kind {p.kind!r})."
            )
        B, n = p.batch_size, p.num_nodes  # noqa: N806
        b = p.rhs()
        if x0 is not None:
            check_tensor("x0", x0, ndim=(2,))
            if x0.shape != (B, n):
                raise ValueError(f"Expected 'x0' of shape ({B}, {n}) (got {tuple(x0.shape)}).")
            if x0.dtype != dtype:
                raise DtypeMismatchError(
                    f"Expected 'x0' of the problem's dtype {dtype} (got {x0.dtype}); convert "
                    f"it with x0.to({dtype})."
                )
            check_same_device(x0=x0, y=p.y)
            check_finite("x0", x0)
        rows = p.gershgorin_rows()
        unit = data_unit(b, x0, rows)  # None on ordinary data: nothing is rescaled
        if unit is not None:  # the solver is linear in (b, x0), its features scale-free
            b, x0 = b / unit, None if x0 is None else x0 / unit
        if x0 is None:
            x = b.new_zeros(B, n)
            g = -b
            mv = 0
        else:
            x = x0
            g = p.hessian(x) - b
            mv = 1
        jac = self.mode == "window_jacobi"
        if jac:
            # Everything below lives in the Jacobi-scaled metric: the "gradient" is
            # u = D^{-1} g and [lo, lip] is the spectral interval of D^{-1/2} H D^{-1/2}.
            lo, lip = p.jacobi_interval()
            dinv = jacobi_scaling(p.hessian_diagonal())
            rows = dinv(rows)
            g = dinv(g)
        else:
            lip = p.lipschitz(self.lipschitz_method)
            lo = p.lambda_min_bound() if self.mode == "window" else torch.zeros_like(lip)
        lo = torch.minimum(lo, lip)
        obs = p.mask if p.mask is not None and p.kind == "mask" else torch.ones_like(x[:1])
        logdeg = torch.log1p(p.degree)[None]
        su0 = pow2_unit(g)  # exact rescaling: no overflow of g * g (float32 data of 1e20)
        g0n = sqrt0(p.segment_sum((g / su0) ** 2)) * su0
        bi = p.block_index
        # built once per problem, reused by every controller call
        samp = None
        if self.controller_sample is not None:
            samp = controller_sample(
                p,
                self.controller_sample,
                self.controller_seed,
                self.controller.hops,
                dtype,
                full_up_to=self.controller_full_up_to,
            )
            adj = None
        else:
            adj = per_graph(
                p,
                f"mean-adjacency-{dtype}",
                lambda: self.controller.mean_adjacency(
                    p.edge_index, p.edge_weight.to(dtype), p.num_nodes
                ),
            )
        loc = None
        if self.mode == "diagonal" and self.controller.node_head == "local":
            loc = local_features(p, obs.to(dtype), rows, lip)  # static: once per forward

        def per_node(v: torch.Tensor) -> torch.Tensor:
            # (batch, blocks) -> per node; one block broadcasts instead of gathering
            return v if p.num_blocks == 1 else v[:, bi]

        def run(ctrl: StepController, node: torch.Tensor, glob: torch.Tensor) -> dict:
            return ctrl(
                node,
                glob,
                p.edge_index,
                p.edge_weight.to(dtype),
                bi if samp is None else samp.block_index,
                p.num_blocks,
                adj=adj,
                node_head=self.mode == "diagonal",
                local_feat=loc,
                local_block_index=bi,
                hop_rows=None if samp is None else samp.hop_rows,
            )

        def backup_logits(node: torch.Tensor, glob: torch.Tensor) -> Callable | None:
            b = self.backup
            return None if b is None else lambda: run(b, node, glob)["window"]

        # diagonal mode: where 2 / R_i overflows (subnormal R_i: float32, lam 1e-40; d * g
        # gave inf * 0 = NaN), d * g is formed otherwise (big_steps)
        inf_rows = ~torch.isfinite(2.0 / rows) if self.mode == "diagonal" else None
        inf_rows = inf_rows if inf_rows is not None and bool(inf_rows.any()) else None
        res = GraphGDResult(x=x, iterates=[x])
        violation = x.new_zeros(())
        w = self.controller.window
        win_steps: torch.Tensor | None = None
        for k in range(K):
            if self.mode in ("window", "window_jacobi"):
                need_ctrl = k % w == 0
            else:
                need_ctrl = k % self.controller_every == 0
            if need_ctrl or self.mode != "diagonal":  # diagonal: H g feeds the features only
                hg = p.hessian(g)  # (jacobi: H u; the update of g below is then D^{-1} H u)
                mv += 1
            if need_ctrl:
                node, glob = step_features(
                    p, x, g, hg, g0n, lip, lo, rows, obs, logdeg, k, K,
                    nodes=None if samp is None else samp.nodes, detach=self.detach_features,
                )  # fmt: skip
                out = run(self.controller, node, glob)
            if self.mode == "scalar":
                s = (2.0 / lip) * self._squash(out["scalar"])
                sn = per_node(s)
                x = torch.addcmul(x, sn, g, value=-1.0)
                g = torch.addcmul(g, sn, hg, value=-1.0)
                res.steps.append(s)
            elif self.mode == "diagonal":
                if need_ctrl:  # else the step of the last controller call
                    sq = self._squash(out["node"])
                    d = (2.0 / rows) * sq
                u = d * g if inf_rows is None else big_steps(sq, g, rows, inf_rows)
                x = x - u
                g = g - p.hessian(u)
                mv += 1
                res.steps.append(d)
            else:
                if k % w == 0:
                    wk = min(w, K - k)
                    ws = window_steps(
                        out["window"][..., :wk], lo, lip, self.q_max, backup_logits(node, glob)
                    )
                    win_steps, violation = ws.steps, violation + ws.violation
                    res.certified.append(ws.learned)
                    res.certificates.append(ws.q)
                    res.blend.append(ws.t_used)
                    res.backup.append(ws.backup)
                    res.window_starts.append(k)
                assert win_steps is not None
                s = win_steps[..., k % w]
                sn = per_node(s)
                x = torch.addcmul(x, sn, g, value=-1.0)
                g = torch.addcmul(g, sn, dinv(hg) if jac else hg, value=-1.0)
                res.steps.append(s)
            res.iterates.append(x)
        if unit is not None:  # back to the data's scale
            x = x * unit
            res.iterates = [v * unit for v in res.iterates]
        res.x = x
        res.matvecs = mv
        res.violation = violation
        return res
