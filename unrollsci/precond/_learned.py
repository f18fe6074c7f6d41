"""The learned preconditioner: a GNN over the matrix graph predicts a sparse factor."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..operators import LinearOperator
from ._amg import (
    ProlongationHead,
    TwoLevelCycle,
    amg_setup,
    prolongation_matrix,
    prolongation_values,
    pyamg_preconditioner,
)
from ._amg_rs import rs_setup
from ._factors import BlockPreconditioner, FactorPreconditioner, InverseFactorPreconditioner
from ._graph import _EDGE_FLIP, MatrixGraph, NodeGraph, _build_graph, _split_edges
from ._layers import _make_layer, _mlp, _mlp_t
from ._learned_args import _BASES, _KINDS, check_options  # noqa: F401 (_model imports them)
from ._ordering import PermutedPreconditioner, reorder
from ._poly import ChebyshevPreconditioner, SymmetricMatvec, abs_entries, gershgorin_scaled
from ._sparse import check_spd_input

__all__ = ["LearnedPreconditioner"]


class LearnedPreconditioner(nn.Module):
    """A preconditioner whose factor values come from a GNN over the matrix graph.

    ``kind``:

    * ``"factor"``: ``M^{-1} = L L^T ~ A``, ``L`` lower-triangular on ``tril(A)``'s
      pattern (IC(0)-like, same nonzeros), applied by two sparse triangular solves;
    * ``"inverse"``: ``M = G G^T ~ A^{-1}``, ``G`` lower-triangular on ``tril(A)``'s
      pattern, applied by two sparse mat-vecs (no triangular solve);
    * ``"block"``: block-diagonal, ``M^{-1} = blockdiag(L_b L_b^T)`` with ``L_b`` on
      the in-block lower pattern of ``A``, applied by batched dense triangular solves;
    * ``"poly"``: ``M = D p(D A D) D``, a learned polynomial (``degree`` mat-vecs with
      ``A``, no factor; see :meth:`poly_operator`): ``D`` is Jacobi's scaling times a
      GNN correction in ``[1/e, e]`` and ``p`` a positive combination of Chebyshev
      approximate inverses on a learned interval below a Gershgorin bound. It starts as
      the classical :func:`chebyshev` preconditioner of that degree and ``ratio``;
    * ``"amg"``: learned algebraic multigrid (after Luz et al., ICML 2020): the GNN
      predicts one weight per stored entry of ``A`` and the finest prolongation is
      ``P = T - D^{-1} (W o A) T`` on smoothed aggregation's pattern (``T``: PyAMG's
      aggregation); untrained, it is PyAMG's SA prolongation. Training runs a
      differentiable two-level cycle (symmetric Gauss-Seidel, exact Galerkin coarse solve);
      :meth:`build` hands the learned level to PyAMG, which builds the coarser levels
      (smoothed aggregation of ``P^T A P``) and runs the V-cycle (see
      :mod:`unrollsci.precond._amg`). SPD for any weights (symmetric smoothing, ``P`` and
      ``P^T``). ``coarsening="rs"``: the same on Ruge-Stuben's splitting, the GNN
      rescaling PyAMG's classical interpolation (Luz et al.'s setting).

    ``M`` is SPD by construction, for any weights: the factor's diagonal is positive and
    each row's off-diagonal entries are capped relative to it, which also keeps the factor
    well conditioned (the argument: ``docs/precond.md``, "Why it is SPD"). The GNN works on
    the Jacobi-scaled matrix and predicts corrections to a ``base`` factor (``"ic0"``:
    IC(0) of the scaled matrix; ``"mic"``: relaxed modified IC of ``A`` (:func:`mic0`),
    rescaled; ``"ssor"``: its lower part with unit diagonal, i.e. symmetric Gauss-Seidel;
    ``"identity"``). Its output layers start at zero, so an untrained model is the base.
    One model serves matrices of any size (``min_n <= n <= max_n``).

    Args:
        kind: ``"factor"``, ``"inverse"``, ``"block"``, ``"poly"`` or ``"amg"``.
        hidden: GNN width.
        layers: message-passing layers. With ``0``, each factor entry comes from an MLP
            on its own matrix entry, base value and the two rows' node features, and
            the edge layers are folded into one affine map (cheaper; how it compares
            with one layer on each base: ``docs/precond.md``, "The network").
        base: base factor. Defaults: ``"ssor"`` for factor (no IC(0) needed at setup,
            so the learned factor is cheaper to build than IC(0); trained, it matches the
            ``"ic0"`` base in the benchmark), ``"ic0"`` for block, ``"identity"`` for inverse.
            ``"mic"`` (factor or block) gives the fewest iterations on every benchmark
            family (its setup includes the factorization, on the CPU).
        block_size: ``kind="block"`` only: the block size.
        min_n, max_n: matrix sizes the model accepts.
        degree, ratio: ``kind="poly"`` only: the polynomial degree and the initial lower
            end of its interval relative to the Gershgorin bound.
        scaling: ``kind="poly"`` only: learn a per-node correction of Jacobi's scaling
            with the GNN (True), or learn only the polynomial, shared by the family
            (False: no network at setup, which then costs what :func:`chebyshev` costs).
            Like ``coarsening`` and ``sweeps`` (``kind="amg"`` only), an option of one
            kind given another kind refuses a value other than its default
            (``ValueError``): it would have no effect there.
        ordering: None (``A`` as numbered) or candidate orderings (``"grid"``,
            ``"rcm"``, ``{name: perm}``, a callable, see
            :func:`~unrollsci.precond.candidate_orderings`). At setup the candidate whose
            IC(0) drops the least positive fill is chosen
            (:func:`~unrollsci.precond.select_ordering`), the factor is learned
            for ``P A P^T`` and applied through a
            :class:`~unrollsci.precond.PermutedPreconditioner` (same nonzeros). Not for
            ``kind="poly"`` (a polynomial in ``A`` does not depend on the ordering).
            Stored in the checkpoint config, which holds plain data only: a named
            ordering or ``{name: perm}`` is saved by :func:`~unrollsci.train.save_checkpoint`;
            a callable is refused there (``TypeError``; a checkpoint stores no code), so
            pass the permutations it returns instead.
        seed: seed of the initial weights (None: torch's global generator). Training
            from different initial weights lands in different minima; see
            ``restarts`` in :func:`fit_preconditioner`.
        coarsening: ``kind="amg"`` only: ``"sa"`` (smoothed aggregation's pattern, the
            weights ``W`` of ``P = T - D^{-1} (W o A) T``) or ``"rs"`` (Ruge-Stuben's C/F
            splitting; the GNN rescales PyAMG's classical interpolation on the
            direct-interpolation pattern by factors in ``[1/e, e]``, C rows fixed; see
            :mod:`unrollsci.precond._amg_rs`), or ``"rs-direct"`` (the same, the factors on
            PyAMG's direct interpolation: a cheaper set-up). The levels below the learned one are
            PyAMG's of the same kind. With ``layers=0`` the set-up reads no matrix graph
            (node features and per-entry features come from the AMG set-up), which makes
            it as cheap as PyAMG's own.
        sweeps: ``kind="amg"`` only: symmetric Gauss-Seidel sweeps before and after the
            coarse correction on the learned (finest) level, in training and in
            :meth:`build` (the coarser levels: one, PyAMG's default). Any count keeps the
            cycle SPD. A smoother setting, not learned: a classical hierarchy with the
            same sweeps gains the same iterations from it.

    Example:
        >>> from unrollsci.precond import LearnedPreconditioner, diffusion2d
        >>> from unrollsci.solvers import cg
        >>> import torch
        >>> A = diffusion2d(8, seed=0)
        >>> M = LearnedPreconditioner("factor").build(A)
        >>> cg(A, torch.ones(64, dtype=torch.float64), M=M, tol=1e-8).converged
        True
        >>> dense = M(torch.eye(64, dtype=torch.float64))  # SPD, whatever the weights
        >>> bool(torch.linalg.eigvalsh((dense + dense.T) / 2).min() > 0)
        True
    """

    def __init__(
        self,
        kind: str = "factor",
        *,
        hidden: int = 8,
        layers: int = 1,
        base: str | None = None,
        block_size: int = 16,
        min_n: int = 2,
        max_n: int | None = None,
        seed: int | None = None,
        degree: int = 8,
        ratio: float = 0.01,
        scaling: bool = True,
        ordering: Any = None,
        coarsening: str = "sa",
        sweeps: int = 1,
    ) -> None:
        super().__init__()
        base = check_options(
            kind,
            base,
            hidden=hidden,
            layers=layers,
            block_size=block_size,
            min_n=min_n,
            max_n=max_n,
            degree=degree,
            ratio=ratio,
            scaling=scaling,
            ordering=ordering,
            coarsening=coarsening,
            sweeps=sweeps,
        )
        self.kind, self.base, self.block_size = kind, base, int(block_size)
        self.hidden, self.layers = int(hidden), int(layers)
        self.min_n, self.max_n = int(min_n), (None if max_n is None else int(max_n))
        self.theta = 0.995
        # With a seed, the weights drawn here are replaced below; drawing them must not
        # advance the global generator.
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            self.node_enc = _mlp(5, hidden, hidden)
            self.edge_enc = nn.Linear(4, hidden)
            self.convs = nn.ModuleList([_make_layer(hidden) for _ in range(layers)])
            # Off-diagonal head: silu(W_f e_ij + W_b e_ji + P h_i + Q h_j) -> 1 (an MLP on the
            # concatenation, written without materializing it).
            self.off_fwd = nn.Linear(hidden, hidden)
            self.off_bwd = nn.Linear(hidden, hidden, bias=False)
            self.off_row = nn.Linear(hidden, hidden, bias=False)
            self.off_col = nn.Linear(hidden, hidden, bias=False)
            self.off_head = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 1))
            self.diag_head = _mlp(hidden, hidden, 1)
            if kind == "amg":
                self.amg_head = ProlongationHead(hidden)
        self.degree, self.ratio, self.scaling = int(degree), float(ratio), bool(scaling)
        self.ordering = ordering
        self.coarsening = coarsening
        self.sweeps = int(sweeps)
        if kind == "poly":
            # Weights of the Chebyshev iterates y_0..y_degree (softmax) and the interval's
            # lower end relative to the Gershgorin bound (sigmoid); at the start the
            # model is the classical Chebyshev preconditioner up to 5e-5 weights.
            self.poly_logits = nn.Parameter(torch.zeros(self.degree + 1))
            self.poly_ratio = nn.Parameter(torch.zeros(()))
        self._zero_heads()
        if seed is not None:
            self.reset_parameters(seed)

    def _zero_heads(self) -> None:
        for head in (self.off_head, self.diag_head):
            nn.init.zeros_(head[-1].weight)
            nn.init.zeros_(head[-1].bias)
        if self.kind == "amg":
            self.amg_head.zero_output()
        if self.kind == "poly":
            with torch.no_grad():
                self.poly_logits.fill_(-10.0)
                self.poly_logits[-1] = 0.0
                self.poly_ratio.fill_(float(np.log(self.ratio / (1 - self.ratio))))

    def reset_parameters(self, seed: int | None = None) -> None:
        """Fresh random weights (torch's default initialization). With ``seed``: drawn on
        the CPU from the CPU generator seeded with ``seed`` (then copied to the weights'
        device: the same weights on every device), no global generator touched (CPU or
        accelerator). The output layers start at zero again: the model is its base factor."""
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.random.default_generator.manual_seed(int(seed))
            for mod in self.modules():
                if not isinstance(mod, nn.Linear):
                    continue
                dev = mod.weight.device
                if seed is None or dev.type == "cpu":
                    mod.reset_parameters()
                else:  # the same (CPU) draws on every device
                    mod.to("cpu").reset_parameters()
                    mod.to(dev)
        self._zero_heads()

    def get_config(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "hidden": self.hidden,
            "layers": self.layers,
            "base": self.base,
            "block_size": self.block_size,
            "min_n": self.min_n,
            "max_n": self.max_n,
            "degree": self.degree,
            "ratio": self.ratio,
            "scaling": self.scaling,
            "ordering": self.ordering,
            "coarsening": self.coarsening,
            "sweeps": self.sweeps,
        }

    def _check_size(self, a: Any, name: str | None = None) -> Any:
        """Refuse a matrix outside ``min_n <= n <= max_n`` (or smaller than a block);
        ``name`` (e.g. ``"val_matrices[1]"``) is named in the message."""
        n = a.shape[0]
        of = "" if name is None else f" for {name}"
        if n < self.min_n or (self.max_n is not None and n > self.max_n):
            hi = "inf" if self.max_n is None else self.max_n
            raise ValueError(
                f"This model supports matrices of size {self.min_n} <= n <= {hi} (got n={n}{of})."
            )
        if self.kind == "block" and self.block_size > n:
            raise ValueError(
                f"Expected block_size <= n for kind='block' (got block_size "
                f"{self.block_size}, n={n}{of})."
            )
        return a

    def prepare(self, A: Any) -> MatrixGraph:  # noqa: N803
        """Validate ``A`` and build its :class:`MatrixGraph` (the non-learned part of setup)."""
        a = self._check_size(check_spd_input(A))
        dev = next(self.parameters()).device
        if self.kind == "amg":
            if self.coarsening == "sa":
                setup = amg_setup(a)
            else:
                setup = rs_setup(a, direct=self.coarsening == "rs-direct")
            setup = setup if dev.type == "cpu" else setup.to(dev)
            # message passing needs the edges ("poly": no factor pattern, same features);
            # without it the node features (computed by the setup) are all the GNN reads
            g: Any = _build_graph(a, "poly", "identity", None).to(dev) if self.convs else None
            g = g if g is not None else NodeGraph(a.shape[0], setup.x)
            g.cache["amg"] = setup
            return g
        a, perm, name = reorder(a, self.ordering)
        g = _build_graph(a, self.kind, self.base, self.block_size)
        g.ordering = name
        if perm is not None:  # a checked permutation (reorder)
            g.perm = torch.from_numpy(perm)
            g.iperm = torch.argsort(g.perm)
        return g.to(dev)

    def _node_states(self, g: MatrixGraph) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Node states after the message passing, and the edge states (None without
        message-passing layers, where the edge states are ``edge_enc(full_edge_attr)``)."""
        p = next(self.parameters())
        h = self.node_enc(g.x.to(p.dtype))
        if not self.convs:
            return h, None
        e = self.edge_enc(g.full_edge_attr().to(p.dtype))
        for conv in self.convs:
            h, e = conv(h, g.edge_index(), e)
        return h, e

    def factor_values(self, g: MatrixGraph) -> torch.Tensor:
        """Unscaled factor values ``(nnz,)`` (float64) on ``g.pattern``; differentiable."""
        p = next(self.parameters())
        ri, ci = g.ri, g.ci
        # Feature-major layout: node states (hidden, n), edge pre-activations (hidden, E/2).
        # With a small hidden width, the products (small inner dimension) and the gathers
        # run faster on the CPU this way round than as (E/2, hidden).
        if self.convs:
            h, e = self._node_states(g)
            ht = h.T
        else:
            ht, e = _mlp_t(self.node_enc, g.x.T.to(p.dtype)), None
        # pre_ij = P h_i + Q h_j + (edge terms): the node terms are gathered into the
        # buffer and the edge terms accumulated into it in place (autograd saves none of
        # these intermediates).
        pre = (self.off_row.weight @ ht).index_select(1, ri)
        pre = pre.add_((self.off_col.weight @ ht).index_select(1, ci))
        if e is not None:
            ef, eb = _split_edges(g, e)
            pre = pre.addmm_(self.off_fwd.weight, ef.T).addmm_(self.off_bwd.weight, eb.T)
            pre = pre.add_(self.off_fwd.bias[:, None])
        else:
            # No message passing: the edge states are edge_enc(edge_attr), so
            # off_fwd(e_ij) + off_bwd(e_ji) is affine in the raw features; and the reverse
            # edge's features are the forward ones with the two antisymmetric columns
            # negated (_EDGE_FLIP), so one (4, E/2) product with the folded weight suffices.
            enc_w, enc_b = self.edge_enc.weight, self.edge_enc.bias
            aft = g.edge_attr.T.to(p.dtype)
            aft = aft if g.aligned else aft.index_select(1, g.low_fwd)
            flip = torch.tensor(_EDGE_FLIP, dtype=p.dtype, device=p.device)
            wt = self.off_fwd.weight @ enc_w + (self.off_bwd.weight @ enc_w) * flip
            bias = self.off_fwd(enc_b) + self.off_bwd.weight @ enc_b
            pre = pre.addmm_(wt, aft).add_(bias[:, None])
        off_lin = self.off_head[1]
        off = torch.addmm(off_lin.bias[:, None], off_lin.weight, self.off_head[0](pre))
        # the bounds below hold for any real head outputs: a NaN (an overflow inside the
        # network at huge but finite weights) reads as 0, an infinite off-diagonal as a
        # large finite one (inf * 0 in the row scaling would give NaN)
        off = torch.nan_to_num(off.squeeze(0).to(torch.float64), nan=0.0).clamp(-1e150, 1e150)
        dg = torch.nan_to_num(_mlp_t(self.diag_head, ht).squeeze(0).to(torch.float64), nan=0.0)
        c = g.consts
        dvals = c["bdiag"] * torch.exp(2.0 * torch.tanh(dg))
        dr = dvals.index_select(0, ri)
        # Off-diagonals relative to their row's diagonal, L = D_L (I + W); row i of W is
        # scaled into sum_j |W_ij| <= cap_i = max(theta, base row ratio). Where cap < 1,
        # ||(I + W)^{-1}||_inf <= 1 / (1 - cap): L stays well conditioned for any weights.
        w = (c["bstrict"] + off) / dr
        rows = torch.zeros_like(dvals).index_add(0, ri, w.abs())
        cap = c["ratio"].clamp(min=self.theta)
        shrink = (cap / torch.maximum(rows, cap)).index_select(0, ri)
        # Unscaled L for S = D^-1/2 A D^-1/2 times the row scale sqrt(d_i) (inverse: over).
        inv = self.kind == "inverse"
        rs, ds = (c["row_scale_strict"], g.dsqrt.to(torch.float64))
        vals = torch.zeros(g.pattern.nnz, dtype=torch.float64, device=dvals.device)
        vals = vals.index_copy(
            0, c["sidx"], (w * shrink * dr) / rs if inv else w * shrink * dr * rs
        )
        return vals.index_copy(0, g.pattern.diag, dvals / ds if inv else dvals * ds)

    def prolongation_values(self, g: MatrixGraph) -> torch.Tensor:
        """``kind="amg"``: the values of the finest prolongation ``P = T - D^{-1}(W o A) T``
        on smoothed aggregation's pattern (``W`` from the GNN; see
        :mod:`unrollsci.precond._amg`), float64, differentiable."""
        h, _ = self._node_states(g)
        setup = g.cache["amg"]
        setup.maps().smoother_factor(setup.e_row.device)  # built outside inference mode
        return prolongation_values(setup, self.amg_head(h, setup))

    def poly_operator(self, g: MatrixGraph) -> ChebyshevPreconditioner:
        """``kind="poly"``: ``M = D p(D A D) D`` with ``D = diag(A)^{-1/2} exp(tanh(g_i))``
        (``g`` from the GNN's node head; ``g = 0`` with ``scaling=False``) and ``p`` a
        learned positive combination of the Chebyshev approximate inverses of degrees
        ``0..degree`` on ``[lo, hi]``, ``hi`` the Gershgorin bound of ``D A D`` and
        ``lo / hi`` learned: SPD for any weights (see :class:`ChebyshevPreconditioner`);
        ``degree`` mat-vecs, no factor."""
        p = next(self.parameters())
        dsqrt = g.dsqrt.to(device=p.device, dtype=torch.float64)
        if not self.scaling:
            return self._poly(g.matrix, 1.0 / dsqrt, g.cache)
        h, _ = self._node_states(g)
        raw = torch.nan_to_num(self.diag_head(h).squeeze(-1).to(torch.float64), nan=0.0)
        corr = torch.exp(torch.tanh(raw))
        return self._poly(g.matrix, corr / dsqrt, g.cache)

    def _poly(self, a: Any, scale: torch.Tensor, cache: dict) -> ChebyshevPreconditioner:
        if "op" not in cache:  # constants of the matrix: no inference tensors cached
            with torch.inference_mode(False):
                cache["op"] = SymmetricMatvec(a)
                cache["abs"] = abs_entries(a, scale.device)
        hi = gershgorin_scaled(cache["abs"], scale) * (1.0 + 1e-12)
        # lo / hi below 1 for any weight: sigmoid rounds to 1 from about 36.7, and lo = hi
        # (a zero-width interval) made every entry of M NaN
        # NaN or infinite parameters (a diverged training run, a hand-edited checkpoint) give
        # the interval of a zero logit and finite weights: M stays SPD, as for any real weights
        # (softmax of an infinite logit is NaN; a NaN ratio made every entry of M NaN)
        raw = torch.nan_to_num(self.poly_ratio.to(torch.float64), nan=0.0)
        ratio = torch.sigmoid(raw).clamp(max=1.0 - 1e-9)
        lo = hi * ratio
        logits = torch.nan_to_num(self.poly_logits.to(torch.float64), nan=0.0)
        weights = torch.softmax(logits.clamp(-1e4, 1e4), 0)
        return ChebyshevPreconditioner(cache["op"], scale, self.degree, lo, hi, weights)

    def from_graph(self, g: MatrixGraph) -> LinearOperator:
        """The preconditioner for a prepared matrix (differentiable in the weights)."""
        if self.kind == "poly":
            return self.poly_operator(g)
        if self.kind == "amg":
            return TwoLevelCycle(g.cache["amg"], self.prolongation_values(g), self.sweeps)
        vals = self.factor_values(g)
        if self.kind == "factor":
            m: LinearOperator = FactorPreconditioner(g.pattern, vals)
        elif self.kind == "inverse":
            m = InverseFactorPreconditioner(g.pattern, vals)
        else:
            m = BlockPreconditioner(g.pattern, vals, self.block_size)
        # the chosen ordering's name, as ic0 / mic0 set it ("natural" where that order
        # was chosen; None without ordering=)
        m.ordering = getattr(g, "ordering", None)
        if g.perm is None:
            return m
        return PermutedPreconditioner(m, g.perm, g.ordering, inverse=g.iperm)

    def build(self, A: Any) -> LinearOperator:  # noqa: N803
        """Preconditioner ``M ~ A^{-1}`` for a scipy or torch sparse SPD matrix ``A``.

        Usable as ``unrollsci.solvers.cg(A, b, M=M)``. Built without gradients.

        Raises:
            ValueError: non-square, non-symmetric, NaN/Inf, zero or negative diagonal,
                or a size outside ``[min_n, max_n]``.
        """
        if self.kind == "poly" and not self.scaling:
            # No per-matrix network: the setup of the classical chebyshev() (the diagonal,
            # a Gershgorin bound), not the matrix graph.
            a = self._check_size(check_spd_input(A))
            p = next(self.parameters())
            scale = torch.from_numpy(1.0 / np.sqrt(a.diagonal())).to(p.device)
            with torch.no_grad():
                return self._poly(a, scale, {})
        g = self.prepare(A)
        with torch.no_grad():
            if self.kind == "amg":
                setup = g.cache["amg"]
                h, _ = self._node_states(g)
                p = prolongation_matrix(setup, self.amg_head(h, setup))
                return pyamg_preconditioner(setup, p, sweeps=self.sweeps)
            return self.from_graph(g)

    def forward(self, A: Any) -> LinearOperator:  # noqa: N803
        return self.build(A)
