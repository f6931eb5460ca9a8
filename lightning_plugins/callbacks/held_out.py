"""Held-out batches through a module outside Lightning's loops: mean losses and gradients."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import lightning.pytorch as pl
import torch

from lightning_plugins.distributed import get_rank, get_world_size, global_sum

__all__ = ["MixtureData", "check_mixture_data", "held_out_gradient", "held_out_loss"]


@runtime_checkable
class MixtureData(Protocol):
    """What the mixing callbacks read from the datamodule (a documented protocol).

    ``source_names`` (one name per source, in the sampler's order), ``eval_dataloaders()``
    (a held-out loader per source, by name) and ``target_dataloader()`` (the target
    examples of gradient alignment, or ``None``).
    :class:`~lightning_plugins.datamodules.MixtureDataModule` provides them; a datamodule
    of one's own that does works the same.
    """

    source_names: Sequence[str]

    def eval_dataloaders(self) -> Mapping[str, Iterable[Any]]:
        """A held-out dataloader per source."""
        ...

    def target_dataloader(self) -> Iterable[Any] | None:
        """The target examples, or ``None``."""
        ...


def check_mixture_data(datamodule: Any, needed_by: str, target: bool = False) -> Any:
    """``datamodule``, checked to provide the :class:`MixtureData` protocol.

    Raises:
        TypeError: naming what the datamodule lacks.
    """
    wanted = ["source_names", "eval_dataloaders"] + (["target_dataloader"] if target else [])
    missing = [name for name in wanted if not hasattr(datamodule, name)]
    if datamodule is None or missing:
        found = "no datamodule" if datamodule is None else type(datamodule).__name__
        raise TypeError(
            f"{needed_by} reads the mixture's sources from the datamodule ({', '.join(wanted)}; "
            f"e.g. lightning_plugins.datamodules.MixtureDataModule), but {found} lacks "
            f"{', '.join(missing) or 'them'}."
        )
    return datamodule


def _shard(loader: Iterable[Any], max_batches: int | None) -> Iterator[Any]:
    """This rank's share of the first ``max_batches`` batches, equal on every rank."""
    batches = loader if max_batches is None else itertools.islice(loader, max_batches)
    world, rank = get_world_size(), get_rank()
    if world == 1:
        yield from batches
        return
    batches = list(batches)
    if len(batches) < world:  # too few to share: every rank reads all of them
        yield from batches
        return
    yield from batches[rank : len(batches) - len(batches) % world : world]


def _device_batches(
    trainer: pl.Trainer, loader: Iterable[Any], max_batches: int | None
) -> Iterator[Any]:
    for batch in _shard(loader, max_batches):
        batch = trainer.precision_plugin.convert_input(batch)
        yield trainer.strategy.batch_to_device(batch)


def held_out_loss(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    loader: Iterable[Any],
    max_batches: int | None = None,
) -> float:
    """The mean ``per_sample_loss`` over held-out batches, the same on every rank.

    The batches are shared among the ranks and the sums all-reduced; the module is in eval
    mode, under ``torch.no_grad`` and the precision plugin's forward context.
    """
    device = pl_module.device
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    was_training = pl_module.training
    pl_module.eval()
    try:
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            for batch in _device_batches(trainer, loader, max_batches):
                losses = pl_module.per_sample_loss(batch)
                total += losses.double().sum()
                count += losses.numel()
    finally:
        pl_module.train(was_training)
    total, count = global_sum(total), global_sum(count)
    if float(count) == 0:
        raise ValueError("A held-out loader yielded no batch: each source needs held-out data.")
    return float(total / count)


def held_out_gradient(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    loader: Iterable[Any],
    max_batches: int | None = None,
) -> torch.Tensor:
    """The gradient of the mean held-out ``per_sample_loss``, flattened, averaged over ranks.

    Over the module's trainable parameters, through ``torch.autograd.grad`` (the
    parameters' ``.grad`` is left alone), with the module in eval mode.
    """
    params = [p for p in pl_module.parameters() if p.requires_grad]
    sums = [torch.zeros_like(p) for p in params]
    count = torch.zeros((), dtype=torch.float64, device=pl_module.device)
    was_training = pl_module.training
    pl_module.eval()
    try:
        with torch.enable_grad(), trainer.precision_plugin.forward_context():
            for batch in _device_batches(trainer, loader, max_batches):
                losses = pl_module.per_sample_loss(batch)
                grads = torch.autograd.grad(losses.sum(), params, allow_unused=True)
                for total, grad in zip(sums, grads, strict=True):
                    if grad is not None:
                        total += grad
                count += losses.numel()
    finally:
        pl_module.train(was_training)
    flat = torch.cat([g.reshape(-1).float() for g in sums])
    count = global_sum(count)
    if float(count) == 0:
        raise ValueError("A held-out loader yielded no batch: each source needs held-out data.")
    return global_sum(flat) / float(count)
