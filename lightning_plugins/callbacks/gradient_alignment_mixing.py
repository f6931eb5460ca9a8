"""GradientAlignmentMixing (DGA): weight domains by their gradients' alignment with the target."""

from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from lightning_plugins.callbacks.held_out import check_mixture_data, held_out_gradient
from lightning_plugins.callbacks.online_mixing import OnlineMixing
from lightning_plugins.functional._checks import check_float, check_int
from lightning_plugins.functional.mixing import dga_weights
from lightning_plugins.sampling import MixtureSampler

__all__ = ["GradientAlignmentMixing"]


class GradientAlignmentMixing(OnlineMixing):
    """Dynamic Gradient Alignment (Fan, Grangier & Ablin 2024): mix toward the target task.

    Every update (see :class:`~lightning_plugins.callbacks.online_mixing.OnlineMixing`
    for when), the gradient ``g_i`` of the mean ``per_sample_loss`` on ``eval_batches``
    held-out batches of every domain (source) and ``g_target`` on the datamodule's target
    examples are computed (``torch.autograd.grad`` over the trainable parameters, the
    module in eval mode, averaged over ranks so every rank gets the same weights); then
    (:func:`~lightning_plugins.functional.dga_weights`)

    ``a_new ∝ a ⊙ exp(eta · <g_i, g_target>)``,  ``a ← (1 - ema) · a + ema · a_new``.

    Each update costs ``k + 1`` held-out forward-backward passes; logged as
    ``mixing/update_seconds`` (and ``mixing/alignment/<source>`` the inner products).
    ``eta`` scales raw gradient inner products, so its size depends on the model and
    loss: a good value makes ``eta · <g_i, g_target>`` of order 1.

    Args:
        eta: the step size of the exponentiated update.
        ema: ``β``, the share of the new weights in the moving average, in ``[0, 1]``.
        update_every: optimizer steps between updates, at least 1.
        eval_batches: held-out batches per domain (and of the target) per update.
        save_dir: where the weight history goes; ``None`` for ``trainer.log_dir``.
        plot: also plot the weights.

    Raises:
        TypeError: for arguments of the wrong type.
        ValueError: for a non-finite ``eta``, ``ema`` outside ``[0, 1]``, ``update_every``
            or ``eval_batches`` below 1; when fitting starts, a datamodule without a target
            loader, a module without ``per_sample_loss``, a sampler not in ``dynamic`` mode.

    Example:
        >>> dga = GradientAlignmentMixing(eta=1.0, ema=0.5, update_every=50)
        >>> dga.eta, dga.ema, dga.update_every
        (1.0, 0.5, 50)
    """

    name = "gradient_alignment"

    def __init__(
        self,
        eta: float = 1.0,
        ema: float = 0.5,
        update_every: int = 100,
        eval_batches: int = 1,
        save_dir: str | os.PathLike[str] | None = None,
        plot: bool = True,
    ) -> None:
        super().__init__(update_every, save_dir, plot)
        self.eta = check_float(eta, "eta")
        self.ema = check_float(ema, "ema", low=0.0, high=1.0)
        self.eval_batches = check_int(eval_batches, "eval_batches", low=1)

    @override
    def check_data(self, datamodule: Any, sampler: MixtureSampler) -> None:
        check_mixture_data(datamodule, type(self).__name__, target=True)
        if datamodule.target_dataloader() is None:
            raise ValueError(
                "GradientAlignmentMixing needs target examples: the datamodule's "
                "target_dataloader() is None (MixtureDataModule(target=…))."
            )
        loaders = datamodule.eval_dataloaders()
        missing = [name for name in self.source_names if name not in loaders]
        if missing:
            raise ValueError(
                f"GradientAlignmentMixing needs held-out data for every source; none for {missing}."
            )

    @override
    def new_weights(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, weights: torch.Tensor
    ) -> torch.Tensor:
        datamodule = trainer.datamodule
        loaders = datamodule.eval_dataloaders()
        domain = torch.stack(
            [
                held_out_gradient(trainer, pl_module, loaders[name], self.eval_batches)
                for name in self.source_names
            ]
        )
        target = held_out_gradient(
            trainer, pl_module, datamodule.target_dataloader(), self.eval_batches
        )
        alignment = (domain.double() @ target.double()).cpu()
        for name, value in zip(self.source_names, alignment.tolist(), strict=True):
            pl_module.log(f"mixing/alignment/{name}", value, on_step=False, on_epoch=True)
        return dga_weights(weights, domain.cpu(), target.cpu(), self.eta, self.ema)
