"""global_weighted_mean: a hand sum on one process; one process on the concatenated batch
under 2-process DDP (unequal local batches)."""

import pytest
import torch
import torch.distributed as dist

from lightning_plugins.distributed import global_sum, global_weighted_mean
from tests.helpers import run_ddp

SIZES = (3, 5)


def global_rows() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(sum(SIZES), generator=generator)
    weights = torch.rand(sum(SIZES), generator=generator)
    weights[1] = 0.0  # a dropped sample
    return values, weights


def test_weighted_mean_is_hand_sum():
    values, weights = global_rows()
    expected = sum(w * v for w, v in zip(weights.tolist(), values.tolist(), strict=True)) / sum(
        weights.tolist()
    )
    assert global_weighted_mean(values, weights).item() == pytest.approx(expected, rel=1e-6)
    ones = torch.ones_like(values)
    torch.testing.assert_close(global_weighted_mean(values, ones), values.mean())


def test_weights_get_no_gradient():
    values = torch.tensor([1.0, 3.0], requires_grad=True)
    weights = torch.tensor([1.0, 3.0], requires_grad=True)
    global_weighted_mean(values, weights).backward()
    torch.testing.assert_close(values.grad, torch.tensor([0.25, 0.75]))
    assert weights.grad is None


def test_global_sum_without_group_is_a_detached_copy():
    value = torch.tensor(2.0, requires_grad=True)
    total = global_sum(value)
    assert total.item() == 2.0 and not total.requires_grad


def _weighted(rank: int, world_size: int) -> dict:
    values, weights = global_rows()
    start = sum(SIZES[:rank])
    local = values[start : start + SIZES[rank]].clone().requires_grad_(True)
    share = global_weighted_mean(local, weights[start : start + SIZES[rank]])
    share.backward()
    total = share.detach().clone()
    dist.all_reduce(total)
    return {"loss": total / world_size, "grad": local.grad / world_size, "start": start}


@pytest.mark.ddp
def test_ddp_weighted_mean_equals_one_process_on_the_global_batch():
    values, weights = global_rows()
    values.requires_grad_(True)
    loss = (weights * values).sum() / weights.sum()
    loss.backward()
    for rank, result in enumerate(run_ddp(_weighted)):
        torch.testing.assert_close(result["loss"], loss.detach())
        start = result["start"]
        torch.testing.assert_close(result["grad"], values.grad[start : start + SIZES[rank]])
