"""Full-state gather and scatter of an average kept as per-rank shards (FSDP, model parallel).

Under a sharded strategy every rank averages only its own shards of the parameters. A
checkpoint or an export needs the full average; these helpers assemble it on rank 0's CPU
and send a full average back into every rank's shards when a run resumes. An average of
``DTensor`` shards (``fully_shard``, ``ModelParallelStrategy``) is gathered tensor by
tensor (:func:`gather_dtensors`, :func:`scatter_dtensors`), in the average's own dtype;
one of FSDP1's flat-parameter views through the model's full-state-dict machinery
(``torch.distributed.checkpoint.state_dict``) with the average swapped into the model
(:func:`gather_full`, :func:`scatter_full`). Every rank must call them (collectives).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager

import torch
from torch import nn

__all__ = [
    "full_state_dict",
    "gather_dtensors",
    "gather_full",
    "is_dtensor",
    "local_part",
    "scatter_dtensors",
    "scatter_full",
]


def is_dtensor(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a ``DTensor`` (a parameter sharded by ``fully_shard`` or TP)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch without distributed support
        return False
    return isinstance(tensor, DTensor)


def local_part(tensor: torch.Tensor) -> torch.Tensor:
    """A rank's own part of a tensor: the local shard of a ``DTensor``, else the tensor."""
    return tensor.to_local() if is_dtensor(tensor) else tensor


def full_state_dict(
    model: nn.Module, averaged: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext
) -> dict[str, torch.Tensor]:
    """The model's full state dict on rank 0's CPU (empty on other ranks).

    Taken within ``averaged()``, a context within which ``model``'s shards hold the average.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    with averaged():
        return get_model_state_dict(model, options=options)


def gather_dtensors(
    keys: Iterable[str], tensors: Iterable[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The full tensors of ``DTensor`` shards (others as they are) on rank 0's CPU, by key."""
    import torch.distributed as dist

    on_rank_zero = dist.get_rank() == 0
    full = {}
    for key, tensor in zip(keys, tensors, strict=True):
        value = tensor.full_tensor() if is_dtensor(tensor) else tensor
        if on_rank_zero:
            full[key] = value.detach().cpu().clone()
    return full


@torch.no_grad()
def scatter_dtensors(
    keys: Iterable[str], tensors: Iterable[torch.Tensor], full: dict[str, torch.Tensor]
) -> None:
    """Write full tensors (rank 0's are used for ``DTensor`` shards) into ``tensors``."""
    from torch.distributed.tensor import distribute_tensor

    for key, tensor in zip(keys, tensors, strict=True):
        if not is_dtensor(tensor):
            tensor.copy_(full[key])
            continue
        value = full.get(key)
        if value is None:  # only rank 0's is read
            value = torch.empty(tensor.shape, dtype=tensor.dtype)
        value = value.to(device=tensor.device, dtype=tensor.dtype)
        tensor.copy_(
            distribute_tensor(value, tensor.device_mesh, tensor.placements, src_data_rank=0)
        )


def gather_full(
    model: nn.Module, keys: Iterable[str], averaged: Callable[[], AbstractContextManager[None]]
) -> dict[str, torch.Tensor]:
    """The full average of ``keys`` on rank 0's CPU (empty on other ranks)."""
    wanted = set(keys)
    return {k: v for k, v in full_state_dict(model, averaged).items() if k in wanted}


def scatter_full(
    model: nn.Module,
    average: dict[str, torch.Tensor],
    averaged: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
) -> None:
    """Load a full average (rank 0's is used) into every rank's shards of it.

    Within ``averaged()`` the model's shards are the average's storage, so loading a full
    state dict into the model there writes the average.
    """
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        set_model_state_dict,
    )

    with averaged():
        # a complete state dict on rank 0, sent to the shards of every rank
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(model, options=options)
        if dist.get_rank() == 0:
            state.update(average)
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_model_state_dict(model, state, options=options)
