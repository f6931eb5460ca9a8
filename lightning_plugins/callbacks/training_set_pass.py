"""One pass of a function over the whole training set, each value placed at its sample's index."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from lightning_plugins.distributed import all_gather, gather_sizes, get_rank, get_world_size
from lightning_plugins.sampling import find_steerable_sampler

__all__ = ["steerable_train_loader", "training_set_pass", "warn_if_first_epoch_unsteered"]


def _loaders(obj: Any) -> Iterator[Any]:
    if isinstance(obj, Mapping):
        for value in obj.values():
            yield from _loaders(value)
    elif isinstance(obj, list | tuple):
        for value in obj:
            yield from _loaders(value)
    elif hasattr(obj, "iterables") and not hasattr(obj, "dataset"):
        yield from _loaders(obj.iterables)
    elif obj is not None:
        yield obj


def steerable_train_loader(trainer: pl.Trainer) -> DataLoader:
    """The training DataLoader whose sampler a callback steers.

    Looks through ``trainer.train_dataloader`` (a loader, or a list or dict of them) with
    :func:`~lightning_plugins.sampling.find_steerable_sampler`; its error names what was
    found when no loader holds a steerable sampler.
    """
    find_steerable_sampler(trainer.train_dataloader)  # one clear error for none or several
    for loader in _loaders(trainer.train_dataloader):
        try:
            find_steerable_sampler(loader)
        except ValueError:
            continue
        return loader
    raise AssertionError("unreachable: find_steerable_sampler found a sampler")


def warn_if_first_epoch_unsteered(trainer: pl.Trainer, what: str) -> None:
    """Warn when ``what`` cannot steer the first epoch of this fit (workers prefetch it).

    With ``num_workers > 0`` Lightning starts the first epoch's iterator, and with it the
    workers' prefetching, before any training hook, so a change made in
    ``on_train_epoch_start`` applies from the next epoch on.
    """
    if trainer.current_epoch == 0 and trainer.global_step == 0:
        workers = getattr(steerable_train_loader(trainer), "num_workers", 0)
        if workers:
            rank_zero_warn(
                f"{what} steers the sampler from epoch 1 on: with num_workers={workers} the "
                "first epoch is drawn before any training hook runs. Use num_workers=0 to "
                "steer epoch 0 as well."
            )


def training_set_pass(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    fn: Callable[[dict[str, Any]], torch.Tensor],
    *,
    grad: bool = False,
) -> torch.Tensor:
    """``fn`` over every training sample once, gathered to ``[N, ...]`` on every rank.

    The training set is that of the loader holding the steerable sampler (see
    :func:`steerable_train_loader`), read in order with its collate function and batch
    size. Under DDP each rank reads every ``world_size``-th sample (padded with the first
    samples, as ``DistributedSampler`` pads, so all ranks run the same number of batches)
    and the values are all-gathered, so all ranks hold the same tensor. Each batch goes
    through the precision plugin and ``strategy.batch_to_device``; the module is in eval
    mode and, unless ``grad``, under ``torch.no_grad``, and back in its former mode
    afterwards. Batches
    must carry ``index`` (the dataset index, contract 1): row ``i`` of the result is the
    value of dataset sample ``i``.

    This pass runs the module outside Lightning's loops, as a scoring pass must: Lightning
    has no loop that evaluates the training set in the middle of ``fit``.

    Raises:
        ValueError: for a batch without ``index``, a value of another length than the
            batch, or samples that no rank scored.
    """
    loader = steerable_train_loader(trainer)
    dataset = loader.dataset
    num_samples = len(dataset)
    batch_size = getattr(find_steerable_sampler(loader), "batch_size", None) or 64
    world_size, rank = get_world_size(), get_rank()
    # every rank reads the same number of batches (the module may gather across ranks):
    # the last samples are padded with the first ones, which are then scored twice
    padded = -(-num_samples // world_size) * world_size
    order = [i % num_samples for i in range(rank, padded, world_size)]
    padding = torch.tensor([i >= num_samples for i in range(rank, padded, world_size)])
    pass_loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=order,
        collate_fn=loader.collate_fn,
        num_workers=getattr(loader, "num_workers", 0),
    )
    values, indices = [], []
    was_training = pl_module.training
    pl_module.eval()
    try:
        with torch.set_grad_enabled(grad), trainer.precision_plugin.forward_context():
            for batch in pass_loader:
                batch = trainer.precision_plugin.convert_input(batch)
                batch = trainer.strategy.batch_to_device(batch)
                if not isinstance(batch, Mapping) or "index" not in batch:
                    found = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
                    raise ValueError(
                        "A pass over the training set needs `batch['index']` (the dataset "
                        f"index of each sample), got a batch with {found}."
                    )
                value = fn(batch).detach()
                index = batch["index"].reshape(-1)
                if value.shape[:1] != index.shape:
                    raise ValueError(
                        f"A per-sample value must have one row per sample: got shape "
                        f"{tuple(value.shape)} for a batch of {index.numel()}."
                    )
                values.append(value.float())
                indices.append(index.long())
    finally:
        pl_module.train(was_training)
    device = pl_module.device
    local = torch.cat(values) if values else torch.zeros(0, device=device)
    local_index = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long, device=device)
    local, local_index = local[~padding.to(local.device)], local_index[~padding.to(local.device)]
    if world_size > 1:
        sizes = gather_sizes(local_index.numel(), device=local_index.device)
        local = all_gather(local.to(device).contiguous(), sizes)
        local_index = all_gather(local_index.to(device).contiguous(), sizes)
    out = torch.full((num_samples, *local.shape[1:]), float("nan"), device=local.device)
    seen = torch.zeros(num_samples, dtype=torch.bool, device=local.device)
    out[local_index] = local
    seen[local_index] = True
    if not bool(seen.all()):
        missing = (~seen).nonzero().flatten()
        raise ValueError(
            f"The pass over the training set scored {int(seen.sum())} of {num_samples} samples; "
            f"missing e.g. index {int(missing[0])}: does `batch['index']` hold dataset indices?"
        )
    return out.cpu()
