"""``group_layout`` input checks and device (audit round "dec16", a label, not a date).

Bad labels reached ``torch.bincount`` / ``max`` and gave torch's internal errors
(``"bincount_cpu" not implemented for 'Float'``, ``bincount only supports 1-d non-negative
integral inputs``, ``max(): Expected reduction dim``); and the layout tensors were made on
the CPU whatever the labels' device (``torch.arange(n)`` met CUDA labels). The layout is
checked against a plain-Python construction.
"""

from __future__ import annotations

import pytest
import torch

from unrollsci.unrolled import group_layout


@pytest.mark.parametrize(
    ("labels", "exc", "match"),
    [
        (torch.tensor([0.0, 1.0, 1.0]), TypeError, "integer labels"),
        (torch.tensor([True, False]), TypeError, "integer labels"),
        (torch.tensor([0, -1, 1]), ValueError, ">= 0"),
        (torch.tensor([[0, 1], [1, 0]]), ValueError, "1-D tensor"),
        (torch.tensor([], dtype=torch.int64), ValueError, "at least one"),
        ([0, 1], TypeError, "torch.Tensor"),
        (torch.tensor([0, 2]), ValueError, "label 1 has no entry"),
    ],
)
def test_bad_labels_are_clear_errors(labels, exc, match):
    with pytest.raises(exc, match=match):
        group_layout(labels)


@pytest.mark.parametrize("labels", [[0, 0, 1, 2, 2, 2], [2, 0, 1, 0, 2], [0], [1, 0, 1, 1]])
def test_layout_matches_a_plain_construction(labels):
    t = torch.tensor(labels)
    index, position = group_layout(t)
    n, count = len(labels), max(labels) + 1
    members = [[i for i in range(n) if labels[i] == g] for g in range(count)]
    s = max(len(m) for m in members)
    want = [m + [n] * (s - len(m)) for m in members]
    assert index.tolist() == want
    assert position.tolist() == [labels[i] * s + members[labels[i]].index(i) for i in range(n)]
    assert index.device == t.device and position.device == t.device
    assert index.dtype == position.dtype == torch.int64
