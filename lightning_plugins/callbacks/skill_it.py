"""SkillIt: online skill mixing from a skills graph and windowed held-out losses."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from lightning_plugins.callbacks.difficulty_source import read_matrix_file
from lightning_plugins.callbacks.held_out import held_out_loss
from lightning_plugins.callbacks.online_mixing import OnlineMixing
from lightning_plugins.functional._checks import check_bool, check_float, check_int
from lightning_plugins.functional.mixing import check_mixture_weights, skill_it_weights
from lightning_plugins.sampling import MixtureSampler

__all__ = ["SkillIt"]


class SkillIt(OnlineMixing):
    """Skill-It (Chen et al. 2023): sample skills by how much they help the skills still to learn.

    Every update (see :class:`~lightning_plugins.callbacks.online_mixing.OnlineMixing`
    for when), the held-out loss of every skill (source) is measured through the module's
    ``per_sample_loss`` (all-reduced over ranks), appended to a window of the last
    ``window`` evaluations, and the weights become

    ``p ∝ prior ⊙ exp(eta · A · Σ_window L)``

    (:func:`~lightning_plugins.functional.skill_it_weights`): a windowed sum, not a
    product with the previous weights. ``A`` is the skills graph (``A[i, j]``: how much
    training on skill ``i`` lowers skill ``j``'s loss), given as a matrix, a ``.npy`` /
    ``.pt`` / ``.csv`` file, or estimated with
    :func:`~lightning_plugins.callbacks.estimate_skills_graph`; ``None`` is the identity
    (no transfer: every skill weighted by its own loss). With ``target`` (source names)
    only the target skills' columns count (the reference's fine-tuning mode). With
    ``normalize``, losses are divided by each skill's first measured loss.

    Args:
        graph: the ``[k, k]`` skills graph, a file holding it, or ``None``.
        eta: the step size (0.5 on LEGO in the reference).
        window: the number of evaluations summed (3 in the reference).
        update_every: optimizer steps between updates, at least 1.
        target: names of the target skills, or ``None`` for all.
        prior: the prior over skills (normalised), or ``None`` for uniform.
        normalize: divide losses by their first measurement.
        eval_batches: held-out batches per skill and evaluation, ``None`` for all.
        save_dir: where the weight history goes; ``None`` for ``trainer.log_dir``.
        plot: also plot the weights.

    Raises:
        TypeError: for arguments of the wrong type.
        ValueError: for a graph that is not square, has negative or non-finite entries, or
            (when fitting starts) does not match the number of sources; a non-finite
            ``eta``; ``window`` or ``update_every`` below 1; a ``target`` name that is no
            source; a module without ``per_sample_loss``; a sampler not in ``dynamic`` mode.

    Example:
        >>> skill_it = SkillIt(graph=[[1.0, 0.5], [0.0, 1.0]], eta=0.5, window=3, update_every=20)
        >>> skill_it.graph
        tensor([[1.0000, 0.5000],
                [0.0000, 1.0000]], dtype=torch.float64)
    """

    name = "skill_it"

    def __init__(
        self,
        graph: Any = None,
        eta: float = 0.5,
        window: int = 3,
        update_every: int = 100,
        target: Sequence[str] | None = None,
        prior: Sequence[float] | None = None,
        normalize: bool = False,
        eval_batches: int | None = None,
        save_dir: str | os.PathLike[str] | None = None,
        plot: bool = True,
    ) -> None:
        super().__init__(update_every, save_dir, plot)
        self.graph = None if graph is None else _graph(graph)
        self.eta = check_float(eta, "eta")
        self.window = check_int(window, "window", low=1)
        if target is not None and (isinstance(target, str) or not len(target)):
            raise ValueError(f"`target` must be a non-empty list of source names, got {target!r}.")
        self.target = None if target is None else [str(name) for name in target]
        self.prior = None if prior is None else check_mixture_weights(prior, "prior")
        self.normalize = check_bool(normalize, "normalize")
        self.eval_batches = check_int(eval_batches, "eval_batches", low=1, optional=True)
        self.losses: list[torch.Tensor] = []  # the window, oldest first
        self.initial_losses: torch.Tensor | None = None

    @override
    def check_data(self, datamodule: Any, sampler: MixtureSampler) -> None:
        k = len(self.source_names)
        if self.graph is not None and tuple(self.graph.shape) != (k, k):
            raise ValueError(
                f"`graph` must be [{k}, {k}] for the {k} sources {self.source_names}, got "
                f"{list(self.graph.shape)}."
            )
        if self.prior is not None and self.prior.numel() != k:
            raise ValueError(
                f"`prior` must have one entry per source ({k}), got {self.prior.numel()}."
            )
        unknown = [n for n in self.target or [] if n not in self.source_names]
        if unknown:
            raise ValueError(
                f"`target` names {unknown}, which are no sources; the sources are "
                f"{self.source_names}."
            )
        loaders = datamodule.eval_dataloaders()
        missing = [name for name in self.source_names if name not in loaders]
        if missing:
            raise ValueError(f"SkillIt needs held-out data for every source; none for {missing}.")

    @override
    def new_weights(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, weights: torch.Tensor
    ) -> torch.Tensor:
        loaders = trainer.datamodule.eval_dataloaders()
        losses = torch.tensor(
            [
                held_out_loss(trainer, pl_module, loaders[name], self.eval_batches)
                for name in self.source_names
            ],
            dtype=torch.float64,
        )
        for name, value in zip(self.source_names, losses.tolist(), strict=True):
            pl_module.log(f"mixing/loss/{name}", value, on_step=False, on_epoch=True)
        if self.initial_losses is None:
            self.initial_losses = losses.clone()
        if self.normalize:
            losses = losses / self.initial_losses.clamp_min(1e-12)
        self.losses = [*self.losses, losses][-self.window :]
        k = len(self.source_names)
        graph = self.graph if self.graph is not None else torch.eye(k, dtype=torch.float64)
        prior = self.prior if self.prior is not None else torch.full((k,), 1.0 / k)
        target = None if self.target is None else [self.source_names.index(n) for n in self.target]
        return skill_it_weights(prior, graph, torch.stack(self.losses), self.eta, target=target)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "losses": torch.stack(self.losses) if self.losses else None,
            "initial_losses": None if self.initial_losses is None else self.initial_losses.clone(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        losses = state_dict.get("losses")
        self.losses = [] if losses is None else list(losses)
        self.initial_losses = state_dict.get("initial_losses")


def _graph(graph: Any) -> torch.Tensor:
    if isinstance(graph, str | os.PathLike):
        values = read_matrix_file(graph, "graph")
    else:
        try:
            values = torch.as_tensor(graph, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(
                f"`graph` must be a [k, k] matrix or a file, got {graph!r:.80}."
            ) from error
    if values.ndim != 2 or values.shape[0] != values.shape[1] or values.numel() == 0:
        raise ValueError(f"`graph` must be a square [k, k] matrix, got shape {list(values.shape)}.")
    bad = ~torch.isfinite(values) | (values < 0)
    if bool(bad.any()):
        i, j = (int(v) for v in bad.nonzero()[0])
        raise ValueError(
            f"`graph` entries must be finite and non-negative, got {float(values[i, j])} at "
            f"[{i}, {j}] ({int(bad.sum())} bad entries)."
        )
    return values
