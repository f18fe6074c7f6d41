"""Proximal operators against their closed forms and definitions."""

from __future__ import annotations

import pytest
import torch

from unrollsci.prox import (
    Prox,
    group_soft_threshold,
    make_prox,
    nonnegative_soft_threshold,
    project_box,
    project_nonnegative,
    project_support,
    soft_threshold,
)


def test_soft_threshold_is_prox_of_l1(device):
    # prox_{t|.|}(v) = argmin_x 0.5 (x - v)^2 + t|x|: check against a brute-force grid.
    v = torch.linspace(-3, 3, 61, dtype=torch.float64, device=device)
    t = 0.7
    grid = torch.linspace(-4, 4, 80001, dtype=torch.float64, device=device)
    obj = 0.5 * (grid[None] - v[:, None]) ** 2 + t * grid.abs()[None]
    brute = grid[obj.argmin(dim=1)]
    torch.testing.assert_close(soft_threshold(v, t), brute, atol=2e-4, rtol=0)


def test_group_soft_threshold_matches_formula(device):
    x = torch.randn(4, 12, dtype=torch.float64, device=device)
    out = group_soft_threshold(x, 0.8, group_size=3)
    g = x.reshape(4, 4, 3)
    n = g.norm(dim=-1, keepdim=True)
    expected = (g * torch.clamp(1 - 0.8 / n, min=0)).reshape(4, 12)
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="group_size"):
        group_soft_threshold(x, 0.1, group_size=5)


def test_group_soft_threshold_zero_group_no_nan(device):
    x = torch.zeros(1, 4, dtype=torch.float64, device=device, requires_grad=True)
    out = group_soft_threshold(x, 0.5, group_size=2)
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and (out == 0).all()


def test_projections(device):
    x = torch.tensor([[-2.0, 0.5, 3.0]], device=device)
    assert project_box(x, -1.0, 1.0).tolist() == [[-1.0, 0.5, 1.0]]
    assert project_nonnegative(x).tolist() == [[0.0, 0.5, 3.0]]
    mask = torch.tensor([True, False, True], device=device)
    assert project_support(x, mask).tolist() == [[-2.0, 0.0, 3.0]]
    with pytest.raises(ValueError, match="lower <= upper"):
        project_box(x, 1.0, -1.0)


# ----------------------------------------------------------------- pluggable prox (issue 20)
def _group_reference(v, t, labels):
    """Block soft threshold group by group, in a Python loop (independent of the code)."""
    out = torch.zeros_like(v)
    for g in labels.unique():
        idx = torch.nonzero(labels == g).reshape(-1)
        vg = v[..., idx]
        nrm = vg.norm(dim=-1, keepdim=True)
        scale = torch.where(nrm > t, 1 - t / nrm.clamp_min(1e-300), torch.zeros_like(nrm))
        out[..., idx] = vg * scale
    return out


def test_group_soft_threshold_uneven_groups(device):
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([2, 0, 0, 1, 2, 2, 0, 3, 3, 3, 3, 1], device=device)
    v = torch.randn(5, 12, generator=g, dtype=torch.float64).to(device)
    out = group_soft_threshold(v, 0.9, groups=labels)
    torch.testing.assert_close(out, _group_reference(v, 0.9, labels))
    # one threshold per batch entry, shape (batch, 1)
    t = torch.linspace(0.1, 3.0, 5, dtype=torch.float64, device=device)[:, None]
    ref = torch.stack([_group_reference(v[i], float(t[i]), labels) for i in range(5)])
    torch.testing.assert_close(group_soft_threshold(v, t, groups=labels), ref)
    # consecutive labels: the same as group_size
    cons = torch.arange(12, device=device) // 3
    torch.testing.assert_close(
        group_soft_threshold(v, t, groups=cons), group_soft_threshold(v, t, group_size=3)
    )


def test_group_prox_satisfies_optimality(device):
    """x = prox(v) iff v - x in t d(sum ||x_g||): v_g - x_g = t x_g / ||x_g|| where x_g != 0,
    ||v_g|| <= t where x_g = 0 (the subdifferential of the group norm)."""
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 6, (30,), generator=g).to(device)
    labels[:6] = torch.arange(6)
    v = 2 * torch.randn(30, generator=g, dtype=torch.float64).to(device)
    t = 1.5
    x = group_soft_threshold(v, t, groups=labels)
    for lab in range(6):
        idx = labels == lab
        xg, vg = x[idx], v[idx]
        if xg.norm() > 0:
            torch.testing.assert_close(vg - xg, t * xg / xg.norm())
        else:
            assert vg.norm() <= t


def test_group_prox_gradient_finite_at_zero_group(device):
    labels = torch.tensor([0, 0, 1, 1], device=device)
    x = torch.tensor([0.0, 0.0, 1.0, 2.0], dtype=torch.float64, device=device, requires_grad=True)
    group_soft_threshold(x, 0.5, groups=labels).sum().backward()
    assert torch.isfinite(x.grad).all()
    torch.autograd.gradcheck(
        lambda z: group_soft_threshold(z, 0.5, groups=labels),
        (torch.tensor([0.3, -0.2, 1.0, 2.0], dtype=torch.float64, device=device).requires_grad_(),),
    )


def _brute_prox(v, penalty, lo=-4.0, hi=4.0):
    grid = torch.linspace(lo, hi, 80001, dtype=torch.float64)
    obj = 0.5 * (grid[None] - v[:, None]) ** 2 + penalty(grid)[None]
    return grid[obj.argmin(dim=1)]


def test_nonneg_and_box_prox_are_argmins():
    v = torch.linspace(-3, 3, 61, dtype=torch.float64)
    t = 0.7
    nonneg = make_prox("nonneg")
    inf = torch.tensor(float("inf"), dtype=torch.float64)
    brute = _brute_prox(v, lambda u: torch.where(u < 0, inf, t * u.abs()))
    torch.testing.assert_close(nonneg(v, t), brute, atol=2e-4, rtol=0)
    torch.testing.assert_close(nonneg(v, t), nonnegative_soft_threshold(v, t))
    box = make_prox({"kind": "box", "lower": -0.5, "upper": 1.2})
    brute = _brute_prox(v, lambda u: torch.where((u < -0.5) | (u > 1.2), inf, t * u.abs()))
    torch.testing.assert_close(box(v, t), brute, atol=2e-4, rtol=0)
    # a box that excludes 0
    box = make_prox({"kind": "box", "lower": 0.4})
    brute = _brute_prox(v, lambda u: torch.where(u < 0.4, inf, t * u.abs()))
    torch.testing.assert_close(box(v, t), brute, atol=2e-4, rtol=0)


def test_make_prox_specs_and_config_round_trip():
    v = torch.randn(3, 10, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2, 0])
    specs = [
        None,
        "soft",
        "nonneg",
        {"kind": "group", "group_size": 5},
        {"kind": "group", "groups": labels},
        {"kind": "box", "lower": 0.0, "upper": 1.0},
        {"kind": "box", "upper": 1.0},
    ]
    for spec in specs:
        p = make_prox(spec, 10)
        again = make_prox(p.config(), 10)
        torch.testing.assert_close(again(v, 0.3), p(v, 0.3))
        assert make_prox(p) is p
    assert make_prox(None).config() == "soft"
    torch.testing.assert_close(make_prox(None)(v, 0.3), soft_threshold(v, 0.3))

    def mine(x, t):
        return x * 0.5

    p = make_prox(mine)
    assert p.kind == "callable" and p.config() is mine
    torch.testing.assert_close(p(v, 1.0), v * 0.5)
    with pytest.raises(TypeError, match="no known regularizer"):
        p.penalty(v)


def test_prox_penalty():
    x = torch.tensor([[3.0, 4.0, -1.0, 0.0]], dtype=torch.float64)
    assert float(make_prox({"kind": "group", "group_size": 2}).penalty(x)) == 6.0
    assert float(make_prox("soft").penalty(x)) == 8.0
    assert float(make_prox("nonneg").penalty(x)) == float("inf")
    assert float(make_prox({"kind": "box", "lower": -1.0, "upper": 4.0}).penalty(x)) == 8.0


@pytest.mark.parametrize(
    ("spec", "n", "exc", "match"),
    [
        ("hard", None, ValueError, "Expected prox kind"),
        ("group", None, ValueError, "needs options"),
        ("box", None, ValueError, "needs options"),
        (3.0, None, TypeError, "Expected 'prox'"),
        ({"kind": "lasso"}, None, ValueError, "'kind' in"),
        ({"kind": "group"}, None, ValueError, "exactly one of"),
        ({"kind": "group", "group_size": 3}, 10, ValueError, "dividing the signal length 10"),
        ({"kind": "group", "group_size": 0}, None, ValueError, "'group_size' >= 1"),
        ({"kind": "group", "group_size": 2.0}, None, TypeError, "'group_size' to be an int"),
        ({"kind": "group", "groups": torch.zeros(4)}, None, TypeError, "integer labels"),
        ({"kind": "group", "groups": torch.zeros(4, dtype=torch.long)}, 5, ValueError, r"\(5,\)"),
        ({"kind": "group", "groups": torch.tensor([0, -1])}, None, ValueError, ">= 0"),
        ({"kind": "group", "groups": [0, 1]}, None, TypeError, "torch.Tensor"),
        ({"kind": "box", "lower": 1.0, "upper": 0.0}, None, ValueError, "lower <= upper"),
        ({"kind": "box"}, None, ValueError, "'lower' and/or 'upper'"),
        ({"kind": "soft", "group_size": 2}, None, ValueError, "options of kind='group'"),
        ({"kind": "soft", "lower": 0.0}, None, ValueError, "options of kind='box'"),
        ({"kind": "soft", "colour": 1}, None, ValueError, "Unknown option"),
    ],
)
def test_make_prox_bad_input(spec, n, exc, match):
    with pytest.raises(exc, match=match):
        make_prox(spec, n)


def test_group_soft_threshold_bad_groups():
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match="not both"):
        group_soft_threshold(x, 0.1, group_size=2, groups=torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        group_soft_threshold(x, 0.1, groups=torch.tensor([0, 1]))


# ---------------------------------------------------------------- audit (December 7)


@pytest.mark.parametrize("scale", [1e-165, 1e155])
def test_group_prox_and_penalty_are_scale_free(scale):
    """Block soft thresholding is homogeneous: prox(s x, s t) = s prox(x, t). The group
    norms were formed from squares, which underflowed (the prox returned 0 at 1e-165) or
    overflowed; the labelled path also floored every norm at sqrt(tiny)."""
    x = torch.tensor([[3.0, 4.0, 0.0, 1e-3]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    want = group_soft_threshold(x, 1.0, group_size=2)
    for kw in ({"group_size": 2}, {"groups": labels}):
        got = group_soft_threshold(x * scale, scale, **kw) / scale
        assert torch.allclose(got, want, rtol=1e-14, atol=0)
        p = Prox("group", **kw)
        assert float(p.penalty(x * scale) / scale) == pytest.approx(5.0 + 1e-3, rel=1e-14)
    # float32 at an ordinary small size (squares below float32's smallest normal)
    x32 = torch.tensor([[3.0, 4.0]]) * 1e-20
    got = group_soft_threshold(x32, 1e-20, groups=torch.tensor([0, 0])) / x32
    assert torch.allclose(got, torch.full_like(got, 0.8), rtol=1e-6)


def test_group_prox_gradient_is_finite_at_zero_groups():
    x = torch.tensor([[0.0, 0.0, 3.0, 4.0, 1e-200, 0.0]], dtype=torch.float64, requires_grad=True)
    for kw in ({"group_size": 2}, {"groups": torch.tensor([0, 0, 1, 1, 2, 2])}):
        out = group_soft_threshold(x, 0.5, **kw)
        (g,) = torch.autograd.grad(out.sum(), x)
        assert torch.isfinite(g).all()
    v = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    for kw in ({"group_size": 3}, {"groups": torch.tensor([2, 0, 2, 0, 5, 5])}):
        assert torch.autograd.gradcheck(lambda t, kw=kw: group_soft_threshold(t, 0.3, **kw), (v,))


def test_group_labels_are_copied_and_gaps_closed():
    labels = torch.tensor([0, 0, 1, 1])
    p = Prox("group", groups=labels)
    x = torch.tensor([[3.0, 4.0, 0.3, 0.4]])
    before = p(x, 1.0)
    labels[:] = torch.tensor([0, 1, 0, 1])  # the caller edits its tensor afterwards
    assert torch.equal(p(x, 1.0), before)
    # labels with gaps (here up to 10^9 on a 4-entry axis): the groups they mean, no
    # allocation per label value
    far = torch.tensor([7, 7, 10**9, 10**9])
    assert torch.equal(group_soft_threshold(x, 1.0, groups=far), before)
    assert torch.equal(Prox("group", groups=far)(x, 1.0), before)
    assert float(Prox("group", groups=far).penalty(x)) == pytest.approx(5.5)


@pytest.mark.parametrize(
    ("call", "err", "match"),
    [
        (lambda: group_soft_threshold(torch.ones(1, 4), 1.0, group_size=2.5), TypeError, "int"),
        (lambda: group_soft_threshold(torch.ones(1, 4), 1.0, group_size=True), TypeError, "int"),
        (lambda: group_soft_threshold(torch.ones(1, 4), -1.0, group_size=2), ValueError, ">= 0"),
        (
            lambda: group_soft_threshold(torch.ones(1, 4, dtype=torch.int64), 1.0),
            TypeError,
            "float",
        ),
        (lambda: group_soft_threshold(torch.tensor(1.0), 1.0), ValueError, "0-d"),
    ],
)
def test_group_prox_bad_input(call, err, match):
    with pytest.raises(err, match=match):
        call()
