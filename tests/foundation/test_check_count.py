"""The one integer-argument check, :func:`unrollsci._validation.check_count`, and the public
entry points that use it: a bool, a float (``2.0`` included) or a string count raises
``TypeError`` everywhere, a count out of range ``ValueError``, and numpy integers pass."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from unrollsci import graph, imaging, precond, prox, solvers, train, unrolled
from unrollsci.operators import Convolution, MatrixOperator, check_adjoint
from unrollsci.train._distributed import spawn

F64 = torch.float64


def _check_count():
    from unrollsci._validation import check_count

    return check_count


# ------------------------------------------------------------------ the function itself
@pytest.mark.parametrize(
    "value", [True, False, np.bool_(True), 2.0, 2.5, float("nan"), np.float64(3.0), "3", b"3"]
)
def test_non_integers_are_type_errors(value):
    check_count = _check_count()
    with pytest.raises(TypeError, match=r"Expected 'n' to be an integer \(got ") as info:
        check_count("n", value)
    # the message says what came: its type and its repr
    assert type(value).__name__ in str(info.value) and repr(value)[:20] in str(info.value)


@pytest.mark.parametrize("value", [torch.tensor(3), torch.tensor([3]), torch.arange(4)])
def test_tensors_are_type_errors(value):
    with pytest.raises(TypeError, match="'n' to be an integer"):
        _check_count()("n", value)


def test_long_reprs_are_shortened():
    with pytest.raises(TypeError) as info:
        _check_count()("n", torch.arange(1000.0))
    assert len(str(info.value)) < 150


@pytest.mark.parametrize("kind", [int, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint64])
def test_python_and_numpy_integers_pass_as_python_ints(kind):
    out = _check_count()("n", kind(7), 1, high=9)
    assert out == 7 and type(out) is int


def test_none_passes_only_when_optional():
    check_count = _check_count()
    assert check_count("n", None, optional=True) is None
    with pytest.raises(TypeError, match=r"'n' to be an integer \(got NoneType None\)"):
        check_count("n", None)
    with pytest.raises(TypeError, match=r"'n' to be an integer or None \(got float 2.5\)"):
        check_count("n", 2.5, optional=True)
    assert check_count("n", 3, optional=True) == 3


@pytest.mark.parametrize(("low", "high"), [(1, None), (0, None), (-2, 3), (2, 2), (None, 4)])
def test_bounds_agree_with_the_inclusive_range(low, high):
    check_count = _check_count()
    for v in range(-5, 9):
        inside = (low is None or v >= low) and (high is None or v <= high)
        if inside:
            assert check_count("n", v, low, high=high) == v
        else:
            with pytest.raises(ValueError, match=rf"'n'.*\(got {v}\)"):
                check_count("n", v, low, high=high)


def test_bound_messages():
    check_count = _check_count()
    with pytest.raises(ValueError, match=r"^Expected 'k' >= 1 \(got 0\)\.$"):
        check_count("k", 0)
    with pytest.raises(ValueError, match=r"^Expected 1 <= 'k' <= 4 \(got 5\)\.$"):
        check_count("k", 5, high=4)
    with pytest.raises(ValueError, match=r"^Expected 'k' <= 4 \(got 5\)\.$"):
        check_count("k", 5, None, high=4)
    assert check_count("k", -(10**30), None) == -(10**30)  # no bound: any integer


def test_exported():
    import unrollsci._validation as v

    assert "check_count" in v.__all__


# -------------------------------------------------------------- the public entry points
OP = MatrixOperator(torch.randn(6, 8, dtype=F64, generator=torch.Generator().manual_seed(0)))
BLUR = Convolution(torch.ones(3, 3, dtype=F64) / 9, (8, 8))
RADON = imaging.Radon(8, 6)
ADJ = sp.csr_matrix(sp.diags([1.0, 1.0], [-1, 1], shape=(6, 6)))
SPD = precond.diffusion2d(3)
Y8 = torch.ones(2, 8, dtype=F64)


def _active_layers(v):
    m = unrolled.LISTA(OP, 2)
    m.active_layers = v


def _warm_start(v):
    model = unrolled.UnrolledAnalysisFISTA(BLUR, 1)
    x = torch.rand(2, 8, 8, dtype=F64)
    model.warm_start(BLUR(x), x, batch_size=v)


class _Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(3))

    def forward(self, x):
        return x * self.w


def _fit(**kw):
    train.fit(_Toy(), lambda m, b: (m(b) - b).pow(2).mean(), torch.ones(4, 3), **kw)


def _fit_layerwise(**kw):
    def draw(g, batch=4):
        x = torch.randn(batch, 8, generator=g, dtype=F64)
        return OP(x), x

    train.fit_layerwise(unrolled.LISTA(OP, 2), draw, draw(torch.Generator()), **kw)


def _solve_charges(**kw):
    pytest.importorskip("ase")
    from unrollsci.chem import solve_charges

    pos = torch.tensor([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0]], dtype=torch.float64)
    return solve_charges(pos, ["O", "H"], cutoff=None, **kw)


def _unrolled_pcg(v):
    a = torch.eye(3, dtype=F64)
    precond.unrolled_pcg(lambda x: x @ a, torch.ones(1, 3, dtype=F64), lambda r: r, v)


def _lp(name, kind="block"):
    return lambda v: precond.LearnedPreconditioner(kind, **{name: v})


def _fit_preconditioner(name):
    return lambda v: precond.fit_preconditioner(
        precond.LearnedPreconditioner("factor", hidden=2, layers=0), [SPD], **{name: v}
    )


# (id, call with the count, the argument's name, a value below the bound or None)
ENTRIES = [
    ("LISTA.num_layers", lambda v: unrolled.LISTA(OP, v), "num_layers", 0),
    ("active_layers", _active_layers, "active_layers", 0),
    (
        "ADMMNet.cg_steps",
        lambda v: unrolled.ADMMNet(OP, 2, x_update="cg", cg_steps=v),
        "cg_steps",
        0,
    ),
    ("BlockLISTA.group_size", lambda v: unrolled.BlockLISTA(OP, 2, group_size=v), "group_size", 0),
    *[
        (
            f"UnrolledAnalysisFISTA.{name}",
            lambda v, name=name: unrolled.UnrolledAnalysisFISTA(BLUR, **{"num_layers": 1, name: v}),
            name,
            low - 1,
        )
        for name, low in (
            ("num_layers", 1),
            ("channels", 4),
            ("filter_size", 2),
            ("precond_size", 1),
            ("seed", 0),
        )
    ],
    ("warm_start.batch_size", _warm_start, "batch_size", 0),
    (
        "group_soft_threshold",
        lambda v: prox.group_soft_threshold(Y8, 0.1, group_size=v),
        "group_size",
        0,
    ),
    ("Prox.group_size", lambda v: prox.Prox("group", group_size=v), "group_size", 0),
    ("smooth_signal.num", lambda v: graph.smooth_signal(ADJ, v), "num", 0),
    ("inpainting_problem.num", lambda v: graph.inpainting_problem(ADJ, v), "num", 0),
    ("UnrolledGraphGD.num_layers", lambda v: graph.UnrolledGraphGD(v), "num_layers", 0),
    *[
        (
            f"UnrolledGraphGD.{name}",
            lambda v, name=name, extra=extra: graph.UnrolledGraphGD(3, **extra, **{name: v}),
            name,
            below,
        )
        for name, extra, below in (
            ("controller_every", {}, 0),
            ("controller_sample", {}, 0),
            ("controller_seed", {"controller_sample": 4}, None),
            ("controller_full_up_to", {"controller_sample": 4}, -1),
        )
    ],
    ("chebyshev_roots", solvers.chebyshev_roots, "num", 0),
    ("ista.max_iter", lambda v: solvers.ista(OP, Y8[:, :6], 0.1, max_iter=v), "max_iter", -1),
    (
        "cg.max_iter",
        lambda v: solvers.cg(torch.eye(3, dtype=F64), torch.ones(3, dtype=F64), max_iter=v),
        "max_iter",
        -1,
    ),
    (
        "FanBeam.n_detectors",
        lambda v: imaging.FanBeam(
            8, 4, source_distance=16.0, detector_distance=32.0, detector_spacing=2.0, n_detectors=v
        ),
        "n_detectors",
        0,
    ),
    ("LinearOperator.norm", lambda v: OP.norm(max_iter=v, recompute=True), "max_iter", 0),
    ("Radon.image_size", lambda v: imaging.Radon(v, 4), "image_size", 1),
    ("check_adjoint.batch", lambda v: check_adjoint(OP, batch=v), "batch", 0),
    (
        "profiled_ellipse_image.power",
        lambda v: imaging.profiled_ellipse_image(torch.zeros(1, 1, 6), 8, power=v),
        "power",
        -1,
    ),
    (
        "tv_reconstruction.max_iter",
        lambda v: imaging.tv_reconstruction(RADON(torch.zeros(1, 8, 8)), RADON, 0.1, max_iter=v),
        "max_iter",
        0,
    ),
    ("shepp_logan.size", imaging.shepp_logan, "size", 1),
    ("shepp_logan.supersample", lambda v: imaging.shepp_logan(8, supersample=v), "supersample", 0),
    ("disk_mask.size", imaging.disk_mask, "size", 0),
    ("random_ellipses.n", lambda v: imaging.random_ellipses(v, 8), "n", 0),
    (
        "random_ellipses.n_ellipses",
        lambda v: imaging.random_ellipses(1, 8, n_ellipses=v),
        "n_ellipses",
        -1,
    ),
    *[
        (
            f"LipschitzRefiner.{name}",
            lambda v, name=name: imaging.LipschitzRefiner(**{"image_size": 8, name: v}),
            name,
            low - 1,
        )
        for name, low in (("image_size", 1), ("channels", 2), ("depth", 2), ("kernel_size", 1))
    ],
    ("ramp_filter", imaging.ramp_filter, "n_detectors", 0),
    (
        "empirical_lipschitz.steps",
        lambda v: imaging.empirical_lipschitz(torch.nn.Identity(), torch.ones(1, 6, 8), steps=v),
        "steps",
        0,
    ),
    *[
        (
            f"UnrolledCT.{name}",
            lambda v, name=name: imaging.UnrolledCT(
                RADON, **{"n_layers": 1, "channels": 2, name: v}
            ),
            name,
            low - 1,
        )
        for name, low in (
            ("n_layers", 1),
            ("channels", 1),
            ("depth", 2),
            ("kernel_size", 1),
            ("memory", 0),
        )
    ],
    *[
        (
            f"ConvexRidgeCT.{name}",
            lambda v, name=name: imaging.ConvexRidgeCT(RADON, **{name: v}),
            name,
            0,
        )
        for name in ("n_layers", "filters", "kernel_size", "n_clips")
    ],
    (
        "conv_operator_norm.image_size",
        lambda v: imaging.conv_operator_norm(torch.zeros(1, 1, 3, 3), v),
        "image_size",
        0,
    ),
    *[
        (f"fit.{name}", lambda v, name=name: _fit(**{name: v}), name, low - 1)
        for name, low in (
            ("epochs", 1),
            ("stage_epochs", 1),
            ("batch_size", 1),
            ("steps_per_epoch", 1),
            ("patience", 1),
            ("checkpoint_every", 1),
            ("seed", 0),
        )
    ],
    *[
        (f"fit_layerwise.{name}", lambda v, name=name: _fit_layerwise(**{name: v}), name, low - 1)
        for name, low in (
            ("val_every", 1),
            ("patience", 1),
            ("max_steps", 1),
            ("start_layer", 1),
            ("freeze_below", 0),
        )
    ],
    ("spawn.nprocs", lambda v: spawn(print, v), "nprocs", 0),
    ("unrolled_pcg.steps", _unrolled_pcg, "steps", -1),
    ("chebyshev.degree", lambda v: precond.chebyshev(SPD, degree=v), "degree", -1),
    ("amg.seed", lambda v: precond.amg(SPD, seed=v), "seed", None),
    ("dropped_fill.sample", lambda v: precond.dropped_fill(SPD, sample=v), "sample", 0),
    ("grid_orderings.nx", precond.grid_orderings, "nx", 0),
    ("grid_orderings.ny", lambda v: precond.grid_orderings(3, v), "ny", 0),
    *[
        (f"LearnedPreconditioner.{name}", _lp(name, kind), name, below)
        for name, kind, below in (
            ("hidden", "block", 0),
            ("layers", "block", -1),
            ("block_size", "block", 0),
            ("min_n", "block", 0),
            ("max_n", "block", None),
            ("degree", "poly", 0),
            ("sweeps", "amg", 0),
        )
    ],
    *[
        (
            f"make_batches.{name}",
            lambda v, name=name: precond.make_batches(
                precond.LearnedPreconditioner("factor", hidden=2, layers=0), [SPD], **{name: v}
            ),
            name,
            0,
        )
        for name in ("n_rhs", "max_steps")
    ],
    *[
        (f"fit_preconditioner.{name}", _fit_preconditioner(name), name, 0)
        for name in ("restarts", "epochs", "n_rhs", "steps")
    ],
    *[
        (f"{fam.__name__}.n", fam, "n", 1)
        for fam in (precond.diffusion2d, precond.anisotropic2d, precond.graph_laplacian)
    ],
    *[
        (f"solve_charges.{name}", lambda v, name=name: _solve_charges(**{name: v}), name, -1)
        for name in ("iterations", "max_iter")
    ],
]

CASES = [
    pytest.param(call, name, value, exc, id=f"{key}={value!r}")
    for key, call, name, below in ENTRIES
    for value, exc in ((2.5, TypeError), (True, TypeError), (below, ValueError))
    if value is not None
]


@pytest.mark.parametrize(("call", "name", "value", "exc"), CASES)
def test_public_counts(call, name, value, exc):
    """A float or a bool count is a ``TypeError``, a count below its bound a ``ValueError``,
    each naming the argument."""
    with pytest.raises(exc, match=name) as info:
        call(value)
    if exc is TypeError:
        assert f"'{name}' to be an integer" in str(info.value)


def test_above_the_layer_count_is_a_value_error():
    m = unrolled.LISTA(OP, 2)
    with pytest.raises(ValueError, match=r"1 <= 'active_layers' <= 2 \(got 3\)"):
        m.active_layers = 3
    m.active_layers = np.int64(1)
    assert m.active_layers == 1 and type(m.active_layers) is int
    # fit's seed leaves room for the validation stream's seed + 10007
    with pytest.raises(ValueError, match=r"0 <= 'seed' <= 9223372036854765800"):
        _fit(seed=2**63 - 10_007)


def test_numpy_integers_are_accepted_where_python_ints_are():
    """Sites that refused a numpy integer before give the result of the Python int."""
    n = np.int64
    torch.testing.assert_close(imaging.ramp_filter(n(16)), imaging.ramp_filter(16))
    assert OP.norm(max_iter=n(200), recompute=True) == OP.norm(max_iter=200, recompute=True)
    a = unrolled.LISTA(OP, n(3))
    assert a.num_layers == 3 and type(a.num_layers) is int
    torch.testing.assert_close(
        prox.Prox("group", group_size=n(2))(Y8, 0.5), prox.Prox("group", group_size=2)(Y8, 0.5)
    )
    ct = imaging.UnrolledCT(RADON, n_layers=n(1), channels=n(2), memory=n(1))
    cfg = ct.get_config()
    assert type(cfg["memory"]) is int and type(cfg["n_layers"]) is int
    assert type(imaging.ConvexRidgeCT(RADON, n_layers=n(2)).get_config()["n_layers"]) is int
    g = graph.UnrolledGraphGD(n(3), controller_sample=n(4), controller_seed=n(1))
    assert (g.num_layers, g.controller_sample, g.controller_seed) == (3, 4, 1)
    assert type(g.controller_sample) is int
    x = torch.rand(2, 8, 8, dtype=F64)
    m1 = unrolled.UnrolledAnalysisFISTA(BLUR, n(1), channels=n(4))
    m2 = unrolled.UnrolledAnalysisFISTA(BLUR, 1, channels=4)
    assert m1.warm_start(BLUR(x), x, batch_size=n(1)) == m2.warm_start(BLUR(x), x, batch_size=1)
