"""Learned preconditioner: resume, constructor and ``val_matrices`` checks (audit round
"dec16", a label, not a date).

* ``resume=`` compared only the class name, so a checkpoint of a ``kind="factor"`` run
  continued as ``kind="inverse"``, ``"block"``, ``base="mic"`` or ``ordering="rcm"``
  (identical state-dict keys). The stored config is now compared with the model's
  (reference: the two models' ``get_config()``, key by key), for the unrolled models too.
* ``val_matrices`` given as one matrix raised numpy's / torch's "truth value ...
  ambiguous", and a bad entry was reported as ``matrices[k]``.
* The constructor accepted ``max_n <= 0``, ``max_n < min_n`` and orderings no build can
  use (reference: :func:`candidate_orderings` refuses the same forms).
* A learned factor built with ``ordering=`` had no ``ordering`` attribute where the natural
  order was chosen (reference: :func:`select_ordering`'s choice, as ``ic0`` reports it).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import nn

from unrollsci.operators import MatrixOperator
from unrollsci.precond import (
    LearnedPreconditioner,
    candidate_orderings,
    diffusion2d,
    fit_preconditioner,
    ic0,
    select_ordering,
)
from unrollsci.train import fit, load_checkpoint, save_checkpoint
from unrollsci.unrolled import LISTA, UnrolledAnalysisFISTA, UnrolledFISTA

_KW = dict(steps=2, n_rhs=2, lr=5e-2, seed=0, progress=False)


def _mats():
    return [diffusion2d(4, seed=s) for s in range(2)]


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------- 1. resume's config


@pytest.mark.parametrize(
    "other",
    [
        dict(kind="inverse"),
        dict(kind="block", block_size=4),
        dict(kind="factor", base="mic"),
        dict(kind="factor", ordering="rcm"),
        dict(kind="factor", max_n=100),
    ],
)
def test_resume_refuses_another_configuration_of_the_same_keys(tmp_path, other):
    path = tmp_path / "factor.pt"
    fit_preconditioner(
        LearnedPreconditioner("factor", hidden=4, seed=0), _mats(), epochs=1, checkpoint=path, **_KW
    )
    stored = load_checkpoint(path).get_config()
    other = dict(other)
    model = LearnedPreconditioner(other.pop("kind"), hidden=4, seed=0, **other)
    assert model.state_dict().keys() == load_checkpoint(path).state_dict().keys()
    differing = [k for k, v in model.get_config().items() if stored[k] != v]
    assert differing
    before = _state(model)
    with pytest.raises(ValueError, match="another configuration") as info:
        fit_preconditioner(model, _mats(), epochs=2, resume=path, **_KW)
    for key in differing:
        assert f"{key}={model.get_config()[key]!r} (checkpoint: {stored[key]!r})" in str(info.value)
    assert _same_state(before, model.state_dict())  # a refused resume leaves the model


def test_resume_with_the_same_configuration_continues_the_run(tmp_path):
    """An ordering given as lists matches the arrays the file stores; the resumed run
    ends where the uninterrupted one does."""
    perm = np.arange(16)[::-1].copy()

    def model(perms):
        return LearnedPreconditioner("factor", hidden=4, seed=0, ordering={"rev": perms})

    full = model(perm)
    h_full = fit_preconditioner(full, _mats(), epochs=3, **_KW)
    path = tmp_path / "part.pt"
    fit_preconditioner(model(perm), _mats(), epochs=1, checkpoint=path, **_KW)
    resumed = model(perm.tolist())
    h = fit_preconditioner(resumed, _mats(), epochs=3, resume=path, **_KW)
    assert h.train_loss == h_full.train_loss
    assert _same_state(full.state_dict(), resumed.state_dict())
    with pytest.raises(ValueError, match=r"ordering=\{'rev': <int64 array of shape \(16,\)>\}"):
        fit_preconditioner(model(np.arange(16)), _mats(), epochs=3, resume=path, **_KW)


def _lista_data():
    g = torch.Generator().manual_seed(1)
    y = torch.randn(12, 6, generator=g, dtype=torch.float64)
    x = torch.randn(12, 10, generator=g, dtype=torch.float64)
    return y, x


def _loss(model, batch):
    return (model(batch[0]) - batch[1]).pow(2).mean()


def _matrix():
    return torch.randn(6, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_unrolled_resume_compares_the_config_but_not_learned_operator_values(tmp_path):
    """UnrolledFISTA on a learned operator (its matrix a parameter, changed by training):
    the same configuration resumes to the uninterrupted run; another lam or
    learn_momentum is refused."""

    def make(**kw):
        return UnrolledFISTA(MatrixOperator(nn.Parameter(_matrix())), 3, **kw)

    full = make()
    fit(full, _loss, _lista_data(), epochs=3, progress=False)
    assert not torch.equal(full.operator.matrix, _matrix())  # training changed it
    path = tmp_path / "fista.pt"
    fit(make(), _loss, _lista_data(), epochs=1, checkpoint=path, progress=False)
    resumed = make()
    fit(resumed, _loss, _lista_data(), epochs=3, resume=path, progress=False)
    assert _same_state(full.state_dict(), resumed.state_dict())
    refused = [
        (dict(lam=0.3), "lam=0.3 (checkpoint: 0.1)"),
        (dict(learn_momentum=False), "learn_momentum=False (checkpoint: True)"),
    ]
    for kw, shown in refused:
        with pytest.raises(ValueError, match="do not fit this UnrolledFISTA") as info:
            fit(make(**kw), _loss, _lista_data(), epochs=3, resume=path, progress=False)
        assert shown in str(info.value)
    # another start of the learned operator: its values are weights (the file's are loaded)
    other = MatrixOperator(nn.Parameter(_matrix().flip(1).contiguous()))
    fit(UnrolledFISTA(other, 3), _loss, _lista_data(), epochs=2, resume=path, progress=False)


def test_unrolled_resume_refuses_another_fixed_operator(tmp_path):
    path = tmp_path / "lista.pt"
    fit(LISTA(MatrixOperator(_matrix()), 2), _loss, _lista_data(), epochs=1, checkpoint=path,
        progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="operator=MatrixOperator.*other values"):
        fit(LISTA(MatrixOperator(2 * _matrix()), 2), _loss, _lista_data(), epochs=2,
            resume=path, progress=False)  # fmt: skip


def test_the_seed_of_the_initial_filters_may_change_on_resume(tmp_path):
    """UnrolledAnalysisFISTA's seed only draws initial weights, which the resume replaces."""
    from unrollsci.operators import Convolution

    blur = torch.ones(3, 3, dtype=torch.float64) / 9

    def make(seed):
        return UnrolledAnalysisFISTA(Convolution(blur, (6, 6)), 2, channels=5, seed=seed)

    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 6, 6, generator=g, dtype=torch.float64)
    y = make(0).operator(x)
    full = make(0)
    fit(full, _loss, (y, x), epochs=2, progress=False)
    path = tmp_path / "a.pt"
    fit(make(0), _loss, (y, x), epochs=1, checkpoint=path, progress=False)
    resumed = make(5)
    fit(resumed, _loss, (y, x), epochs=2, resume=path, progress=False)
    assert _same_state(full.state_dict(), resumed.state_dict())


# ------------------------------------------------------------------- 2. val_matrices


@pytest.mark.parametrize(
    "val, shown",
    [
        (diffusion2d(4, seed=9), "csr_matrix"),
        (np.array(_mats() + [diffusion2d(4, seed=9)], dtype=object), "ndarray"),
        (torch.from_numpy(diffusion2d(4, seed=9).toarray()).to_sparse(), "Tensor"),
    ],
)
def test_val_matrices_not_a_list_is_a_type_error_before_any_system(monkeypatch, val, shown):
    built = []
    prepare = LearnedPreconditioner.prepare
    monkeypatch.setattr(
        LearnedPreconditioner, "prepare", lambda self, a: built.append(1) or prepare(self, a)
    )
    with pytest.raises(TypeError, match=f"Expected 'val_matrices' to be .* \\(got {shown}\\)"):
        fit_preconditioner(LearnedPreconditioner(hidden=4), _mats(), val_matrices=val, **_KW)
    assert built == []


def test_bad_validation_matrices_are_named_as_such():
    bad = sp.csr_matrix(np.array([[2.0, 1.0], [0.0, 2.0]]))
    model = LearnedPreconditioner(hidden=4, max_n=20)
    with pytest.raises(ValueError, match=r"'val_matrices\[1\]' to be symmetric"):
        fit_preconditioner(model, _mats(), val_matrices=[_mats()[0], bad], **_KW)
    big = diffusion2d(5, seed=0)  # n = 25 > max_n
    with pytest.raises(ValueError, match=r"n <= 20 \(got n=25 for val_matrices\[1\]\)"):
        fit_preconditioner(model, _mats(), val_matrices=[_mats()[0], big], **_KW)
    with pytest.raises(ValueError, match=r"n <= 20 \(got n=25 for matrices\[1\]\)"):
        fit_preconditioner(model, [_mats()[0], big], **_KW)
    blocks = LearnedPreconditioner("block", hidden=4, block_size=9)
    with pytest.raises(ValueError, match=r"block_size 9, n=4 for val_matrices\[0\]"):
        fit_preconditioner(blocks, _mats(), val_matrices=[diffusion2d(2, seed=0)], **_KW)
    # an empty list is no validation, as before
    with pytest.raises(ValueError, match="pass val_matrices"):
        fit_preconditioner(model, _mats(), val_matrices=[], restarts=2, **_KW)
    assert not hasattr(fit_preconditioner(model, _mats(), val_matrices=[], **_KW), "initial_val")


# ---------------------------------------------------------------- 3. constructor


@pytest.mark.parametrize(
    "min_n, max_n", [(2, -3), (2, 0), (1, 0), (10, 5), (3, 2), (2, 2), (5, 5), (1, 1), (2, None)]
)
def test_size_range_must_hold_a_matrix(min_n, max_n):
    holds = max_n is None or any(min_n <= n <= max_n for n in range(1, 50))
    if holds:
        model = LearnedPreconditioner(min_n=min_n, max_n=max_n)
        assert (model.min_n, model.max_n) == (min_n, max_n)
        return
    with pytest.raises(ValueError, match="'max_n'") as info:
        LearnedPreconditioner(min_n=min_n, max_n=max_n)
    assert f"got {max_n}" in str(info.value) or f"max_n={max_n}" in str(info.value)


@pytest.mark.parametrize(
    "ordering",
    [
        "gird",
        "",
        3,
        2.5,
        {},
        [],
        (),
        np.arange(16),
        "grid",
        "rcm",
        {"a": np.arange(16)},
        [np.arange(16)],
        (list(range(16)),),
    ],  # fmt: skip
)
def test_ordering_form_checked_at_construction_as_candidate_orderings_does(ordering):
    a = diffusion2d(4, seed=0)
    try:
        candidate_orderings(a, ordering)
        expected = None
    except (TypeError, ValueError) as exc:
        expected = type(exc)
    if expected is None:
        model = LearnedPreconditioner("factor", ordering=ordering)
        assert model.build(a) is not None
        return
    with pytest.raises(expected, match="ordering"):
        LearnedPreconditioner("factor", ordering=ordering)


def test_valid_options_still_round_trip_through_a_checkpoint(tmp_path):
    model = LearnedPreconditioner("factor", min_n=16, max_n=16, ordering={"a": np.arange(16)})
    save_checkpoint(model, tmp_path / "m.pt")
    back = load_checkpoint(tmp_path / "m.pt")
    assert (back.min_n, back.max_n) == (16, 16)
    assert np.array_equal(back.ordering["a"], np.arange(16))


# ------------------------------------------------------------ 4. the ordering attribute


@pytest.mark.parametrize("kind", ["factor", "inverse", "block"])
@pytest.mark.parametrize("ordering", ["grid", "rcm", None])
@pytest.mark.parametrize("shuffle", [False, True])
def test_learned_preconditioner_reports_the_chosen_ordering(kind, ordering, shuffle):
    a = diffusion2d(6, seed=9)
    if shuffle and ordering != "grid":  # a scrambled numbering: another order is chosen
        p = np.random.default_rng(0).permutation(36)
        a = a[p][:, p].tocsr()
    model = LearnedPreconditioner(
        kind, ordering=ordering, **({"block_size": 6} if kind == "block" else {})
    )
    m = model.build(a)
    if ordering is None:
        assert m.ordering is None and ic0(a).ordering is None
        return
    chosen, _ = select_ordering(a, candidate_orderings(a, ordering))
    assert m.ordering == chosen == ic0(a, ordering=ordering).ordering
    assert m.ordering == "natural" or shuffle
