"""first_occurrence against a Python reference."""

from __future__ import annotations

import pytest
import torch

from lightning_plugins.functional import first_occurrence


def reference_first_occurrence(values):
    seen, keep = set(), []
    for position, value in enumerate(values):
        if value not in seen:
            seen.add(value)
            keep.append(position)
    return keep


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("high", [3, 20, 1000])
def test_matches_reference(seed, high):
    g = torch.Generator().manual_seed(seed)
    index = torch.randint(-5, high, (60,), generator=g)
    out = first_occurrence(index)
    assert out.dtype == torch.long
    assert out.tolist() == reference_first_occurrence(index.tolist())


def test_handmade():
    assert first_occurrence(torch.tensor([5, 3, 5, 7, 3])).tolist() == [0, 1, 3]
    assert first_occurrence(torch.tensor([9, 9, 9])).tolist() == [0]
    assert first_occurrence(torch.tensor([4, 2, 0])).tolist() == [0, 1, 2]
    # padding from a distributed sampler: the last samples repeat the first ones
    assert first_occurrence(torch.tensor([0, 2, 4, 1, 3, 0])).tolist() == [0, 1, 2, 3, 4]


def test_int32_and_empty():
    assert first_occurrence(torch.tensor([1, 1, 2], dtype=torch.int32)).tolist() == [0, 2]
    empty = first_occurrence(torch.zeros(0, dtype=torch.long))
    assert empty.shape == (0,) and empty.dtype == torch.long
