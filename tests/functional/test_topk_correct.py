"""topk_correct against a Python reference."""

from __future__ import annotations

import pytest
import torch

from lightning_plugins.functional import topk_correct


def reference_topk_correct(logits, target, top_k):
    out = []
    for row, t in zip(logits.tolist(), target.tolist(), strict=True):
        order = sorted(range(len(row)), key=lambda c: -row[c])
        position = order.index(t)
        out.append([position < k for k in top_k])
    return out


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("top_k", [(1,), (1, 5), (5, 1, 3), (10,)])
def test_matches_reference(seed, top_k):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(40, 10, generator=g, dtype=torch.float64)  # no ties
    target = torch.randint(0, 10, (40,), generator=g)
    out = topk_correct(logits, target, top_k)
    assert out.dtype == torch.bool and out.shape == (40, len(top_k))
    assert out.tolist() == reference_topk_correct(logits, target, top_k)


def test_handmade():
    logits = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.1, 0.4], [0.3, 0.2, 0.1]])
    out = topk_correct(logits, torch.tensor([1, 1, 2]), top_k=(1, 2, 3))
    assert out.tolist() == [[True, True, True], [False, False, True], [False, False, True]]


@pytest.mark.parametrize(
    ("logits", "target", "top_k", "match"),
    [
        (torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), (4,), "top_k"),
        (torch.zeros(4), torch.zeros(4, dtype=torch.long), (1,), "logits"),
        (torch.zeros(4, 3), torch.zeros(3, dtype=torch.long), (1,), "target"),
    ],
)
def test_bad_arguments_raise(logits, target, top_k, match):
    with pytest.raises(ValueError, match=match):
        topk_correct(logits, target, top_k)
