"""Audit (Dec 11, API): LearnedPreconditioner's kind-specific options (``block_size``:
"block"; ``degree``, ``ratio``, ``scaling``: "poly") given another kind were accepted and
ignored (the same M as the default), while ``coarsening=`` and ``sweeps=`` were refused."""

from __future__ import annotations

import pytest
import torch

from unrollsci.precond import LearnedPreconditioner, diffusion2d
from unrollsci.train import load_checkpoint, save_checkpoint

KINDS = ("factor", "inverse", "block", "poly", "amg")
# option -> (its kind, a value other than the default)
OPTIONS = {
    "block_size": ("block", 4),
    "degree": ("poly", 3),
    "ratio": ("poly", 0.5),
    "scaling": ("poly", False),
}
CASES = [(k, o) for o, (owner, _) in OPTIONS.items() for k in KINDS if k != owner]


@pytest.mark.parametrize(("kind", "option"), CASES, ids=[f"{k}-{o}" for k, o in CASES])
def test_option_of_another_kind_is_refused(kind, option):
    owner, value = OPTIONS[option]
    with pytest.raises(ValueError, match=f"{option}=.*kind='{owner}'.*kind='{kind}'"):
        LearnedPreconditioner(kind, **{option: value})


@pytest.mark.parametrize("kind", KINDS)
def test_defaults_written_out_are_accepted_for_every_kind(kind):
    LearnedPreconditioner(kind, block_size=16, degree=8, ratio=0.01, scaling=True)


def test_options_act_in_their_own_kind():
    """In its own kind the option changes M (M applied to I, compared densely)."""
    a = diffusion2d(6, seed=0)
    eye = torch.eye(a.shape[0], dtype=torch.float64)

    def dense(kind, **kw):
        return LearnedPreconditioner(kind, seed=0, **kw).build(a)(eye)

    assert not torch.allclose(dense("block"), dense("block", block_size=4))
    for kw in ({"degree": 3}, {"ratio": 0.5}):  # (scaling: untrained, exp(tanh(0)) = 1)
        assert not torch.allclose(dense("poly", **kw), dense("poly"))


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_of_every_kind_loads(tmp_path, kind):
    """Saved configs hold every option (at its default outside its kind): they rebuild."""
    own = {k: v for k, (owner, v) in OPTIONS.items() if owner == kind}
    model = LearnedPreconditioner(kind, hidden=4, seed=0, **own)
    save_checkpoint(model, tmp_path / f"{kind}.pt")
    again = load_checkpoint(tmp_path / f"{kind}.pt", expected=LearnedPreconditioner)
    assert again.get_config() == model.get_config()
