"""LiNeS (Wang et al., ICLR 2025): layer-increasing scaling of a fine-tuning update.

The task vector of a parameter is ``tau = theta - theta_0``, the fine-tuned weights less
the pretrained ones. LiNeS keeps ``theta_0 + lambda_l * tau`` with a scale that grows
linearly with the depth of the parameter's block ``l`` (1-based, of ``L``):
``lambda_l = alpha + beta * (l - 1) / (L - 1)`` (``lambda = alpha`` for ``L = 1``), so
shallow layers, which hold general features, keep little of the update and the last block
``alpha + beta``. Parameters outside the blocks (embeddings, final norms, heads) get
``alpha``. Single task: ``alpha`` is swept with ``beta = 1 - alpha`` (the last block keeps
its whole update). Model merging: ``alpha`` is :func:`merging_alpha`, ``beta`` given.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lightning_plugins.functional._checks import check_float, check_int

__all__ = ["lines_factors", "lines_scale", "merging_alpha", "scale_update_"]


def lines_scale(num_blocks: int, alpha: float, beta: float) -> torch.Tensor:
    """The LiNeS scale ``lambda_l = alpha + beta * (l - 1) / (L - 1)`` of each of ``L`` blocks.

    Args:
        num_blocks: ``L``, the number of blocks (at least 1).
        alpha: the scale of the first block (and of parameters outside the blocks).
        beta: what the last block adds to ``alpha``.

    Returns:
        ``float64`` tensor ``[L]``, block ``l`` (0-based here) at index ``l``.

    Raises:
        TypeError: for arguments of the wrong type.
        ValueError: for ``num_blocks < 1``, or ``alpha`` and ``beta`` that give some block
            a negative scale (naming the block).

    Example:
        >>> lines_scale(5, alpha=0.2, beta=0.8)
        tensor([0.2000, 0.4000, 0.6000, 0.8000, 1.0000], dtype=torch.float64)
        >>> lines_scale(1, alpha=0.5, beta=0.5)
        tensor([0.5000], dtype=torch.float64)
        >>> lines_scale(3, alpha=0.5, beta=-1.0)
        Traceback (most recent call last):
        ...
        ValueError: `alpha`=0.5 and `beta`=-1.0 give block 3 of 3 (0-based 2) the negative LiNeS scale -0.5; every block needs alpha + beta * (l - 1) / (L - 1) >= 0.
    """  # noqa: E501
    num_blocks = check_int(num_blocks, "num_blocks", low=1)
    alpha = check_float(alpha, "alpha")
    beta = check_float(beta, "beta")
    if num_blocks == 1:
        scales = torch.tensor([alpha], dtype=torch.float64)
    else:
        depth = torch.arange(num_blocks, dtype=torch.float64) / (num_blocks - 1)
        scales = alpha + beta * depth
    negative = (scales < 0).nonzero().flatten()
    if negative.numel():
        block = int(negative[0]) if alpha < 0 else int(negative[-1])
        raise ValueError(
            f"`alpha`={alpha!r} and `beta`={beta!r} give block {block + 1} of {num_blocks} "
            f"(0-based {block}) the negative LiNeS scale {float(scales[block]):.4g}; every "
            "block needs alpha + beta * (l - 1) / (L - 1) >= 0."
        )
    return scales


def lines_factors(
    positions: Sequence[tuple[int, int] | None], alpha: float, beta: float
) -> list[float]:
    """The LiNeS scale of each parameter from its ``(block index, blocks of its stack)``.

    ``positions`` as :func:`~lightning_plugins.models.block_positions` gives them (its
    values, in order); a parameter outside the blocks (``None``) gets ``alpha``. With
    :func:`scale_update_` this applies LiNeS to any weights, outside a fit too.

    Example:
        >>> lines_factors([(0, 3), (2, 3), None, (1, 2)], alpha=0.2, beta=0.8)
        [0.2, 1.0, 0.2, 1.0]
    """
    tables = {
        depth: lines_scale(depth, alpha, beta).tolist()
        for depth in {position[1] for position in positions if position is not None}
    }
    return [alpha if p is None else tables[p[1]][p[0]] for p in positions]


@torch.no_grad()
def scale_update_(
    tensors: Sequence[torch.Tensor],
    references: Sequence[torch.Tensor],
    scales: Sequence[float],
) -> None:
    """Scale each tensor's update in place: ``theta <- theta_0 + scale * (theta - theta_0)``.

    ``references`` (the ``theta_0``) may live on another device (the CPU) and in another
    dtype: each is moved to its tensor one at a time, so no second full copy of the weights
    is made on the tensors' device. Low-precision tensors (``float16``, ``bfloat16``) are
    computed in ``float32`` and rounded once. A scale of 1 leaves the tensor bitwise as it is,
    a scale of 0 makes it the reference exactly.

    Args:
        tensors: the fine-tuned tensors ``theta``, changed in place.
        references: the reference tensors ``theta_0``, one per tensor, same shapes.
        scales: the scale of each tensor's update.

    Raises:
        ValueError: for lists of unequal length or a reference of another shape.

    Example:
        >>> theta = [torch.tensor([3.0, 5.0])]
        >>> scale_update_(theta, [torch.tensor([1.0, 1.0])], [0.5])
        >>> theta[0]
        tensor([2., 3.])
    """
    if not len(tensors) == len(references) == len(scales):
        raise ValueError(
            f"`tensors`, `references` and `scales` must have one entry per tensor, got "
            f"{len(tensors)}, {len(references)} and {len(scales)}."
        )
    for index, (tensor, reference, scale) in enumerate(
        zip(tensors, references, scales, strict=True)
    ):
        if tensor.shape != reference.shape:
            raise ValueError(
                f"`references`[{index}] has shape {tuple(reference.shape)}, its tensor "
                f"{tuple(tensor.shape)}."
            )
        if scale == 1:  # exactly the tensor (the formula would round)
            continue
        if scale == 0:
            tensor.copy_(reference)
            continue
        work = torch.promote_types(tensor.dtype, torch.float32)
        start = reference.to(device=tensor.device, dtype=work)
        tensor.copy_(start + float(scale) * (tensor.to(work) - start))


def merging_alpha(
    task_vectors: Sequence[Sequence[torch.Tensor]],
    merged: Sequence[torch.Tensor],
    num_tasks: int | None = None,
) -> float:
    """LiNeS' ``alpha`` for a merged model: ``(||sum_t tau_t||_1 / ||tau_merged||_1) / T``.

    With it the shallow layers of the merged update are scaled back to the size of the
    average of the ``T`` task vectors. The norms run over all tensors of a vector.

    Args:
        task_vectors: the task vectors, each a list of tensors (one per parameter).
        merged: the merged task vector, a list of tensors in the same order.
        num_tasks: ``T``; ``None``: ``len(task_vectors)``. To save memory, pass the task
            vectors already summed (``[sum_t tau_t]``) with ``num_tasks=T``.

    Raises:
        ValueError: for no task vectors, task vectors with other numbers or shapes of
            tensors than ``merged``, ``num_tasks < 1``, or a merged vector of zero norm.

    Example:
        >>> tau_1, tau_2 = [torch.tensor([1.0, -2.0])], [torch.tensor([3.0, 0.0])]
        >>> merging_alpha([tau_1, tau_2], merged=[tau_1[0] + tau_2[0]])  # sum: alpha = 1 / T
        0.5
        >>> merging_alpha([tau_1, tau_2], merged=[(tau_1[0] + tau_2[0]) / 2])  # mean
        1.0
        >>> merging_alpha([[tau_1[0] + tau_2[0]]], merged=[tau_1[0] + tau_2[0]], num_tasks=2)
        0.5
    """
    if len(task_vectors) == 0:
        raise ValueError("`task_vectors` must hold at least one task vector, got none.")
    num_tasks = check_int(len(task_vectors) if num_tasks is None else num_tasks, "num_tasks", low=1)
    for index, vector in enumerate(task_vectors):
        if len(vector) != len(merged) or any(
            t.shape != m.shape for t, m in zip(vector, merged, strict=True)
        ):
            raise ValueError(
                f"`task_vectors`[{index}] must hold tensors of the shapes of `merged` "
                f"({[tuple(m.shape) for m in merged][:4]}...), got "
                f"{[tuple(t.shape) for t in vector][:4]}."
            )
    total = torch.zeros((), dtype=torch.float64)
    merged_norm = torch.zeros((), dtype=torch.float64)
    for parts in zip(*task_vectors, merged, strict=True):
        *taus, tau_merged = (p.detach().to(torch.float64) for p in parts)
        total += torch.stack(taus).sum(0).abs().sum().cpu()
        merged_norm += tau_merged.abs().sum().cpu()
    if merged_norm == 0:
        raise ValueError(
            "`merged` has zero L1 norm: the merged model does not differ from theta_0."
        )
    return float(total / merged_norm) / num_tasks
