"""Estimate a Skill-It skills graph: short runs on one skill, the loss drop on every skill."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Subset

from lightning_plugins.callbacks.held_out import check_mixture_data
from lightning_plugins.callbacks.sample_protocols import PerSampleLoss, require_protocol
from lightning_plugins.functional._checks import check_int
from lightning_plugins.sampling import find_mixture_sampler

__all__ = ["estimate_skills_graph"]


@torch.no_grad()
def _mean_losses(
    module: pl.LightningModule,
    loaders: Mapping[str, Iterable[Any]],
    names: list[str],
    batches: int | None,
) -> torch.Tensor:
    was_training = module.training
    module.eval()
    means = []
    for name in names:
        total, count = 0.0, 0
        for batch in itertools.islice(loaders[name], batches):
            losses = module.per_sample_loss(batch)
            total, count = total + float(losses.double().sum()), count + losses.numel()
        if not count:
            raise ValueError(f"The held-out loader of skill {name!r} yielded no batch.")
        means.append(total / count)
    module.train(was_training)
    return torch.tensor(means, dtype=torch.float64)


def estimate_skills_graph(
    make_module: Callable[[], pl.LightningModule],
    datamodule: Any,
    steps: int = 50,
    eval_batches: int | None = None,
    seed: int = 0,
    path: str | os.PathLike[str] | None = None,
    **trainer_kwargs: Any,
) -> torch.Tensor:
    """The skills graph ``A`` of Skill-It (Chen et al. 2023), estimated from short runs.

    For every skill (source) ``i`` of the mixture: a fresh module from ``make_module()``
    (seeded with ``seed``) is trained for ``steps`` optimizer steps on skill ``i``'s
    training samples only, and ``A[i, j]`` is the relative drop of skill ``j``'s held-out
    loss, ``(L_j before - L_j after) / L_j before``, clipped at 0 (a skill that hurts
    another gets no edge). Losses are the module's ``per_sample_loss`` over the first
    ``eval_batches`` batches of each held-out loader, on the CPU. ``datamodule`` provides
    the :class:`~lightning_plugins.callbacks.MixtureData` protocol and a train loader
    whose batch sampler is a :class:`~lightning_plugins.sampling.MixtureSampler`
    (:class:`~lightning_plugins.datamodules.MixtureDataModule` does). With ``path``
    (``.pt`` or ``.npy``) the graph is saved there, for ``SkillIt(graph=path)``.

    Args:
        make_module: builds a fresh, untrained module (with ``per_sample_loss``).
        datamodule: the mixture.
        steps: optimizer steps on each skill, at least 1.
        eval_batches: held-out batches per skill, ``None`` for all.
        seed: seed of every short run.
        path: where to save the graph, or ``None``.
        **trainer_kwargs: passed to each short run's ``Trainer`` (e.g. ``accelerator``).

    Returns:
        ``[k, k]`` float64, non-negative.

    Raises:
        TypeError: for a datamodule without the mixture protocol or a module without
            ``per_sample_loss``.
        ValueError: for ``steps`` below 1 or a ``path`` of another suffix.
    """
    steps = check_int(steps, "steps", low=1)
    eval_batches = check_int(eval_batches, "eval_batches", low=1, optional=True)
    if path is not None and Path(path).suffix not in (".pt", ".npy"):
        raise ValueError(f"`path` must end in .pt or .npy, got {str(path)!r}.")
    check_mixture_data(datamodule, "estimate_skills_graph")
    if hasattr(datamodule, "setup"):
        datamodule.setup("fit")
    names = [str(name) for name in datamodule.source_names]
    loaders = datamodule.eval_dataloaders()
    train_loader = datamodule.train_dataloader()
    sizes = find_mixture_sampler(train_loader).source_sizes
    offsets = [0, *itertools.accumulate(sizes)]
    graph = torch.zeros(len(names), len(names), dtype=torch.float64)
    for i in range(len(names)):
        pl.seed_everything(seed, verbose=False)
        module = make_module()
        require_protocol(module, PerSampleLoss, "estimate_skills_graph")
        before = _mean_losses(module, loaders, names, eval_batches)
        skill = Subset(train_loader.dataset, range(offsets[i], offsets[i + 1]))
        generator = torch.Generator().manual_seed(seed)
        batch_size = find_mixture_sampler(train_loader).batch_size
        loader = DataLoader(
            skill,
            batch_size=batch_size,
            shuffle=True,
            generator=generator,
            collate_fn=train_loader.collate_fn,
        )
        options = {
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            **trainer_kwargs,
            "max_steps": steps,
            "max_epochs": -1,
        }
        pl.Trainer(**options).fit(module, train_dataloaders=loader)
        after = _mean_losses(module.cpu(), loaders, names, eval_batches)
        graph[i] = ((before - after) / before.clamp_min(1e-12)).clamp_min(0.0)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".npy":
            import numpy as np

            np.save(path, graph.numpy())
        else:
            torch.save({"graph": graph, "sources": names}, path)
    return graph
