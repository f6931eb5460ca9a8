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
    assert out.dtype == torch.float32 and out.shape == (40, len(top_k))
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
        # impossible targets used to count as misses
        (
            torch.zeros(2, 3),
            torch.tensor([0, 3]),
            (1,),
            r"`target` must hold class ids in \[0, 3\).*got 3",
        ),
        (torch.zeros(2, 3), torch.tensor([-1, 0]), (1,), r"`target` .*got -1"),
    ],
)
def test_bad_arguments_raise(logits, target, top_k, match):
    with pytest.raises(ValueError, match=match):
        topk_correct(logits, target, top_k)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_row_is_nan_never_a_hit(bad):
    # all-NaN scores used to give top-1 0.25 on 4 classes (NaN compares false, topk picks any)
    logits = torch.full((4, 4), bad)
    out = topk_correct(logits, torch.arange(4), top_k=(1, 4))
    assert torch.isnan(out).all()
    assert torch.isnan(out.mean(dim=0)).all()


def test_one_non_finite_score_makes_only_its_row_nan():
    logits = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, float("nan")]])
    out = topk_correct(logits, torch.tensor([0, 1]), top_k=(1,))
    assert out[0].tolist() == [1.0]
    assert torch.isnan(out[1]).all()
