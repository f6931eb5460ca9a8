"""``lightning_plugins.distributed`` without a process group and under 2-process gloo.

Spawned DDP workers re-import this module: keep its imports light.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed.nn.functional as dist_fn

from lightning_plugins.distributed import (
    all_gather_with_grad,
    get_rank,
    get_world_size,
    is_distributed,
)
from tests.helpers import run_ddp

WORLD_SIZE = 2
SHAPE = (2, 3, 4)  # rows per rank, then trailing dims


def local_rows(rank: int) -> torch.Tensor:
    """Rank-specific rows, so a wrong order or a missing rank shows."""
    return torch.arange(24, dtype=torch.float64).reshape(SHAPE) + 100.0 * (rank + 1)


def output_weights(rank: int, world_size: int) -> torch.Tensor:
    """Rank-specific weights on the gathered output: loss_r = sum(gathered * weights_r)."""
    return torch.linspace(-1.0, 2.0, world_size * 24, dtype=torch.float64).reshape(
        world_size * SHAPE[0], *SHAPE[1:]
    ) * (rank + 1)


def _gather_worker(rank: int, world_size: int) -> dict:
    out = {"rank": get_rank(), "world_size": get_world_size(), "distributed": is_distributed()}

    x = local_rows(rank).requires_grad_()
    gathered = all_gather_with_grad(x)
    (gathered * output_weights(rank, world_size)).sum().backward()
    out["gathered"] = gathered.detach()
    out["grad"] = x.grad

    # torch's own differentiable all_gather, the convention open_clip relies on
    y = local_rows(rank).requires_grad_()
    reference = torch.cat(dist_fn.all_gather(y))
    (reference * output_weights(rank, world_size)).sum().backward()
    out["reference_gathered"] = reference.detach()
    out["reference_grad"] = y.grad

    # a non-contiguous input is gathered by value
    out["transposed"] = all_gather_with_grad(local_rows(rank)[:, :, 0].T)

    # the gathered output shares its gradient with another tensor (both inputs of `+`);
    # the all-reduce in backward must not leak into that tensor's gradient
    z = local_rows(rank).requires_grad_()
    other = torch.zeros(world_size * SHAPE[0], *SHAPE[1:], dtype=torch.float64, requires_grad=True)
    shifted = other * 1.0  # recorded before the gather, so its backward runs after it
    ((all_gather_with_grad(z) + shifted) * output_weights(rank, world_size)).sum().backward()
    out["shared_grad"] = other.grad
    out["shared_input_grad"] = z.grad
    return out


# ---------------------------------------------------------------- without a process group


def test_without_process_group_everything_is_single_process() -> None:
    assert not is_distributed()
    assert get_rank() == 0
    assert get_world_size() == 1


def test_gather_without_process_group_returns_the_input() -> None:
    x = torch.randn(3, 5, requires_grad=True)
    gathered = all_gather_with_grad(x)
    assert gathered is x
    (gathered * 2.0).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 2.0))


# ---------------------------------------------------------------- two processes


@pytest.fixture(scope="module")
def ddp_results() -> list[dict]:
    return run_ddp(_gather_worker, world_size=WORLD_SIZE)


@pytest.mark.ddp
def test_rank_and_world_size(ddp_results) -> None:
    for rank, result in enumerate(ddp_results):
        assert (result["rank"], result["world_size"], result["distributed"]) == (
            rank,
            WORLD_SIZE,
            True,
        )


@pytest.mark.ddp
def test_gather_concatenates_in_rank_order(ddp_results) -> None:
    expected = torch.cat([local_rows(r) for r in range(WORLD_SIZE)])
    for result in ddp_results:
        torch.testing.assert_close(result["gathered"], expected, rtol=0, atol=0)
        torch.testing.assert_close(result["reference_gathered"], expected, rtol=0, atol=0)


@pytest.mark.ddp
def test_gather_of_non_contiguous_input(ddp_results) -> None:
    expected = torch.cat([local_rows(r)[:, :, 0].T for r in range(WORLD_SIZE)])
    for result in ddp_results:
        torch.testing.assert_close(result["transposed"], expected, rtol=0, atol=0)


@pytest.mark.ddp
def test_backward_sums_over_ranks_and_returns_own_rows(ddp_results) -> None:
    """d(sum_r loss_r)/dx_rank: every rank's output gradient, rows of this rank."""
    total_weights = sum(output_weights(r, WORLD_SIZE) for r in range(WORLD_SIZE))
    for rank, result in enumerate(ddp_results):
        rows = slice(rank * SHAPE[0], (rank + 1) * SHAPE[0])
        torch.testing.assert_close(result["grad"], total_weights[rows])
        torch.testing.assert_close(result["grad"], result["reference_grad"])


@pytest.mark.ddp
def test_backward_leaves_shared_gradients_alone(ddp_results) -> None:
    for rank, result in enumerate(ddp_results):
        torch.testing.assert_close(result["shared_grad"], output_weights(rank, WORLD_SIZE))
        torch.testing.assert_close(result["shared_input_grad"], result["grad"])
