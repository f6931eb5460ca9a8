"""OnlineMixing: the part every mixing callback shares (when to update, steering, logging)."""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from lightning_plugins.callbacks.epoch_start import EpochStartSteering
from lightning_plugins.callbacks.held_out import check_mixture_data
from lightning_plugins.callbacks.mixture_weights_plot import plot_mixture_weights
from lightning_plugins.callbacks.sample_protocols import PerSampleLoss, require_protocol
from lightning_plugins.functional._checks import check_bool, check_int
from lightning_plugins.sampling import MixtureSampler, find_mixture_sampler

__all__ = ["OnlineMixing"]


class OnlineMixing(EpochStartSteering, ABC):
    """Steers a :class:`~lightning_plugins.sampling.MixtureSampler`'s weights while training.

    A subclass says how new weights are computed (:meth:`new_weights`); this class says
    when (:meth:`should_update`: at the start of training, then at the first epoch start
    at least ``update_every`` optimizer steps after the last update: the sampler applies
    weights from the next epoch's first batch, so set the datamodule's
    ``steps_per_epoch`` to ``update_every`` to update exactly that often), steers the
    sampler, logs every weight as ``mixing/<source>`` and the update's cost as
    ``mixing/update_seconds``, keeps the history, and when fitting ends writes
    ``<name>_weights.pt`` (``steps``, ``weights``, ``sources``) and, with ``plot``,
    ``<name>_weights.png`` to ``save_dir`` (default: ``trainer.log_dir``).

    Every rank computes the same weights (the statistics are all-reduced), so the ranks'
    samplers agree. The state (weights, history, and the subclass's own) is saved in
    checkpoints.
    """

    name = "mixing"

    def __init__(
        self,
        update_every: int,
        save_dir: str | os.PathLike[str] | None = None,
        plot: bool = True,
    ) -> None:
        self.update_every = check_int(update_every, "update_every", low=1)
        self.save_dir = None if save_dir is None else Path(save_dir)
        self.plot = check_bool(plot, "plot")
        self.weights: torch.Tensor | None = None
        self.steps: list[int] = []
        self.history: list[torch.Tensor] = []
        self.source_names: list[str] = []

    # ------------------------------------------------------------ policy
    def should_update(self, trainer: pl.Trainer) -> bool:
        """Whether to compute new weights at this epoch start."""
        if not self.steps:
            return True
        return trainer.global_step - self.steps[-1] >= self.update_every

    @abstractmethod
    def new_weights(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, weights: torch.Tensor
    ) -> torch.Tensor:
        """The mixture weights from now on, given the current ``weights`` (a subclass's job)."""

    def check_data(self, datamodule: Any, sampler: MixtureSampler) -> None:
        """Check the datamodule's sources once fitting starts (subclasses add checks)."""

    # ------------------------------------------------------------ hooks
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        require_protocol(pl_module, PerSampleLoss, type(self).__name__)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sampler = find_mixture_sampler(trainer.train_dataloader)
        if sampler.mode != "dynamic":
            raise ValueError(
                f"{type(self).__name__} steers the mixture weights, but the sampler's `mode` is "
                f"{sampler.mode!r}: use mode='dynamic'."
            )
        datamodule = check_mixture_data(trainer.datamodule, type(self).__name__)
        self.source_names = [str(name) for name in datamodule.source_names]
        if len(self.source_names) != sampler.num_sources:
            raise ValueError(
                f"The datamodule names {len(self.source_names)} sources, but the sampler draws "
                f"from {sampler.num_sources}."
            )
        self.check_data(datamodule, sampler)
        if self.weights is None:
            self.weights = sampler.pending_weights.clone()
        super().on_train_start(trainer, pl_module)

    @override
    def steer_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sampler = find_mixture_sampler(trainer.train_dataloader)
        assert self.weights is not None
        if self.should_update(trainer):
            started = time.perf_counter()
            self.weights = self.new_weights(trainer, pl_module, self.weights).double().cpu()
            self.steps.append(trainer.global_step)
            self.history.append(self.weights.clone())
            names, values = self.source_names, self.weights.tolist()
            logged = {f"mixing/{n}": w for n, w in zip(names, values, strict=True)}
            logged["mixing/update_seconds"] = time.perf_counter() - started
            pl_module.log_dict(logged, on_step=False, on_epoch=True, sync_dist=False)
        sampler.set_weights(self.weights)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # `trainer.log_dir` broadcasts from rank zero: every rank must ask
        folder = self.save_dir or Path(trainer.log_dir or trainer.default_root_dir)
        if trainer.is_global_zero and self.history:
            written = self.save(folder)
            rank_zero_info(
                f"{type(self).__name__}: wrote {', '.join(p.name for p in written)} to {folder}"
            )

    def save(self, folder: str | os.PathLike[str]) -> list[Path]:
        """Write the weight history (and, with ``plot``, its plot) into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        weights = torch.stack(self.history)
        path = folder / f"{self.name}_weights.pt"
        torch.save(
            {"steps": torch.tensor(self.steps), "weights": weights, "sources": self.source_names},
            path,
        )
        written = [path]
        if self.plot:
            title = f"{type(self).__name__}: mixture weights"
            png = folder / f"{self.name}_weights.png"
            written.append(plot_mixture_weights(self.steps, weights, self.source_names, png, title))
        return written

    # ------------------------------------------------------------ state
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "weights": None if self.weights is None else self.weights.clone(),
            "steps": list(self.steps),
            "history": torch.stack(self.history) if self.history else None,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.weights = state_dict.get("weights")
        self.steps = [int(step) for step in state_dict.get("steps", [])]
        history = state_dict.get("history")
        self.history = [] if history is None else list(history)
