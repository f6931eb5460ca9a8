"""Process-group helpers that work with and without ``torch.distributed``.

Every function here degrades to the single-process answer when no process group is
initialised, so losses and metrics built on them run unchanged on one CPU.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["all_gather_with_grad", "get_rank", "get_world_size", "is_distributed"]


def is_distributed() -> bool:
    """Whether a default process group with more than one process is active.

    Example:
        >>> is_distributed()
        False
    """
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_world_size() -> int:
    """Number of processes in the default group, 1 without one.

    Example:
        >>> get_world_size()
        1
    """
    return dist.get_world_size() if is_distributed() else 1


def get_rank() -> int:
    """Rank of this process in the default group, 0 without one.

    Example:
        >>> get_rank()
        0
    """
    return dist.get_rank() if is_distributed() else 0


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums each rank's gradient and returns the local slice."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world_size = dist.get_world_size()
        ctx.rank = dist.get_rank()
        ctx.local_size = tensor.shape[0]
        out = torch.empty(
            (world_size * tensor.shape[0], *tensor.shape[1:]),
            dtype=tensor.dtype,
            device=tensor.device,
        )
        # newer torch renames ``all_gather_into_tensor`` to ``all_gather_single``
        gather_into = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        gather_into(out, tensor.contiguous())
        return out

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # a copy: all_reduce works in place, and autograd may hand the same gradient tensor
        # to other consumers of the gathered output (e.g. both inputs of an addition)
        grad = grad_output.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.local_size
        return grad[start : start + ctx.local_size]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, keeping the autograd graph.

    In backward, the gradient with respect to the gathered tensor is summed over ranks
    and each rank receives the rows it contributed: the same convention as
    ``torch.distributed.nn.all_gather`` and open_clip's ``gather_with_grad``. After DDP
    averages parameter gradients over ranks, a loss that is the mean of per-rank local
    losses then has exactly the gradient of the loss over the global batch.

    All ranks must pass tensors of equal shape.

    Args:
        tensor: local rows, shape ``[B, ...]``.

    Returns:
        ``[world_size * B, ...]``, rank ``r``'s rows at ``r * B``; ``tensor`` itself
        when no process group is active.

    Example:
        >>> x = torch.ones(2, 3, requires_grad=True)
        >>> all_gather_with_grad(x).shape
        torch.Size([2, 3])
    """
    if not is_distributed():
        return tensor
    return _AllGatherWithGrad.apply(tensor)
