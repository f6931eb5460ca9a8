"""Process-group helpers that work with and without ``torch.distributed``.

Every function here degrades to the single-process answer when no process group is
initialised, so losses and metrics built on them run unchanged on one CPU.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = [
    "all_gather",
    "all_gather_with_grad",
    "gather_sizes",
    "get_rank",
    "get_world_size",
    "global_mean",
    "global_sum",
    "global_weighted_mean",
    "is_distributed",
    "neighbour_exchange",
]


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


def gather_sizes(local_size: int, device: torch.device | None = None) -> list[int]:
    """The local batch size of every rank (``[local_size]`` without a process group).

    Example:
        >>> gather_sizes(5)
        [5]
    """
    if not is_distributed():
        return [local_size]
    sizes = torch.empty(dist.get_world_size(), dtype=torch.long, device=device)
    _gather_into(sizes, torch.tensor([local_size], dtype=torch.long, device=device))
    return sizes.tolist()


def _gather_into(out: torch.Tensor, tensor: torch.Tensor) -> None:
    # newer torch renames ``all_gather_into_tensor`` to ``all_gather_single``
    gather_into = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather_into(out, tensor.contiguous())


def _gather_uneven(tensor: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Concatenate rows from every rank, padding to the largest size for the collective."""
    largest = max(sizes)
    padded = tensor
    if tensor.shape[0] < largest:
        padding = tensor.new_zeros((largest - tensor.shape[0], *tensor.shape[1:]))
        padded = torch.cat([tensor, padding])
    out = tensor.new_empty((len(sizes) * largest, *tensor.shape[1:]))
    _gather_into(out, padded)
    if all(size == largest for size in sizes):
        return out
    return torch.cat([out[r * largest : r * largest + size] for r, size in enumerate(sizes)])


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums each rank's gradient and returns the local slice."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, sizes: list[int]) -> torch.Tensor:  # type: ignore[override]
        rank = dist.get_rank()
        ctx.start, ctx.stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
        return _gather_uneven(tensor, sizes)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        # a copy: all_reduce works in place, and autograd may hand the same gradient tensor
        # to other consumers of the gathered output (e.g. both inputs of an addition)
        grad = grad_output.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start : ctx.stop], None


def all_gather_with_grad(tensor: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, keeping the autograd graph.

    In backward, the gradient with respect to the gathered tensor is summed over ranks
    and each rank receives the rows it contributed: the same convention as
    ``torch.distributed.nn.all_gather`` and open_clip's ``gather_with_grad``. After DDP
    averages parameter gradients over ranks, a loss that is the mean of per-rank local
    losses then has exactly the gradient of the loss over the global batch.

    Ranks may hold different numbers of rows (the last batch of an epoch); pass
    ``sizes`` from :func:`gather_sizes` to save one collective.

    Args:
        tensor: local rows, shape ``[B, ...]``.
        sizes: every rank's ``B``, or ``None`` to exchange them here.

    Returns:
        ``[sum(sizes), ...]``, rank ``r``'s rows after those of ranks ``< r``;
        ``tensor`` itself when no process group is active.

    Example:
        >>> x = torch.ones(2, 3, requires_grad=True)
        >>> all_gather_with_grad(x).shape
        torch.Size([2, 3])
    """
    if not is_distributed():
        return tensor
    if sizes is None:
        sizes = gather_sizes(tensor.shape[0], tensor.device)
    return _AllGatherWithGrad.apply(tensor, sizes)


def all_gather(tensor: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, without gradient to other ranks.

    The local rows of the result are ``tensor`` itself (with its autograd graph); the
    rows of other ranks are constants. This is open_clip's ``gather_with_grad=False``.

    Example:
        >>> all_gather(torch.arange(3)).tolist()
        [0, 1, 2]
    """
    if not is_distributed():
        return tensor
    if sizes is None:
        sizes = gather_sizes(tensor.shape[0], tensor.device)
    with torch.no_grad():
        gathered = _gather_uneven(tensor.detach(), sizes)
    rank = dist.get_rank()
    start = sum(sizes[:rank])
    return torch.cat([gathered[:start], tensor, gathered[start + sizes[rank] :]])


def global_mean(values: torch.Tensor, global_count: int | None = None) -> torch.Tensor:
    """This rank's share of the mean over the global batch.

    Returns ``values.sum() * world_size / global_count``: DDP averages gradients over
    ranks, so the shares add up to the exact mean over all ranks' rows even when local
    batches differ in size. Equals ``values.mean()`` on one process or with equal batches.

    Args:
        values: ``[B]`` per-sample values of this rank.
        global_count: the number of rows over all ranks, or ``None`` to all-reduce it.

    Example:
        >>> global_mean(torch.tensor([1.0, 2.0, 6.0]))
        tensor(3.)
    """
    if not is_distributed():
        return values.mean()
    if global_count is None:
        count = torch.tensor(values.shape[0], device=values.device)
        dist.all_reduce(count)
        global_count = int(count)
    return values.sum() * dist.get_world_size() / global_count


def global_sum(value: torch.Tensor) -> torch.Tensor:
    """The sum of ``value`` over all ranks, detached (a detached copy without a group).

    Example:
        >>> global_sum(torch.tensor(2.5))
        tensor(2.5000)
    """
    total = value.detach().clone()
    if is_distributed():
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def global_weighted_mean(
    values: torch.Tensor, weights: torch.Tensor, global_weight_sum: torch.Tensor | None = None
) -> torch.Tensor:
    """This rank's share of the weighted mean over the global batch.

    Returns ``(weights * values).sum() * world_size / global_weight_sum``: after DDP
    averages gradients over ranks, the shares add up to ``sum(w * l) / sum(w)`` over all
    ranks' rows, the weighted mean of one process on the concatenated batch. The weights
    are constants (no gradient flows into them).

    Args:
        values: ``[B]`` per-sample values of this rank.
        weights: ``[B]`` per-sample weights of this rank.
        global_weight_sum: the sum of the weights over all ranks (see :func:`global_sum`),
            or ``None`` to all-reduce it here.

    Example:
        >>> global_weighted_mean(torch.tensor([1.0, 2.0, 6.0]), torch.tensor([1.0, 1.0, 0.0]))
        tensor(1.5000)
    """
    weights = weights.detach()
    if global_weight_sum is None:
        global_weight_sum = global_sum(weights.sum())
    return (values * weights).sum() * get_world_size() / global_weight_sum


def _exchange(
    sends: tuple[torch.Tensor, ...],
    destinations: tuple[int, ...],
    sources: tuple[int, ...],
    shapes: tuple[torch.Size, ...],
) -> tuple[torch.Tensor, ...]:
    like = sends[0]
    received = tuple(like.new_empty(shape) for shape in shapes)
    ops = [
        dist.P2POp(dist.isend, t.contiguous(), d) for t, d in zip(sends, destinations, strict=True)
    ]
    ops += [dist.P2POp(dist.irecv, t, src) for t, src in zip(received, sources, strict=True)]
    for request in dist.batch_isend_irecv(ops):
        request.wait()
    return received


class _ExchangeWithGrad(torch.autograd.Function):
    """Point-to-point exchange whose backward sends each gradient back to its sender."""

    @staticmethod
    def forward(ctx, plan, *sends):  # type: ignore[override]
        destinations, sources, shapes = plan
        ctx.plan = (sources, destinations, tuple(t.shape for t in sends))
        return _exchange(sends, destinations, sources, shapes)

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[override]
        destinations, sources, shapes = ctx.plan
        return (None, *_exchange(grads, destinations, sources, shapes))


def neighbour_exchange(
    sends: tuple[torch.Tensor, ...],
    destinations: tuple[int, ...],
    sources: tuple[int, ...],
    shapes: tuple[torch.Size, ...],
) -> tuple[torch.Tensor, ...]:
    """Send tensors to ranks and receive tensors from ranks, with gradient.

    ``sends[i]`` goes to ``destinations[i]``; the ``j``-th result, of shape ``shapes[j]``,
    comes from ``sources[j]``. In backward every received tensor's gradient travels back
    to its sender and is added to the gradient of what that rank sent: a ring of these
    moves text features around the ranks for SigLIP while images stay put. All sends and
    receives of one call are issued together (``batch_isend_irecv``).

    Args:
        sends: tensors to send (same dtype and device).
        destinations: the rank of each send.
        sources: the rank of each receive.
        shapes: the shape of each receive.

    Returns:
        The received tensors.

    Example:
        >>> # on every rank of a ring: send right, receive from the left, with gradient
        >>> rank, world = get_rank(), get_world_size()
        >>> if is_distributed():  # a single process has no neighbour
        ...     texts = torch.randn(4, 8, requires_grad=True)
        ...     (left,) = neighbour_exchange(
        ...         (texts,), ((rank + 1) % world,), ((rank - 1) % world,), (texts.shape,)
        ...     )
    """
    return _ExchangeWithGrad.apply((destinations, sources, shapes), *sends)
