"""Curriculum: train on easy samples first, by steering the sampler or weighting the loss."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from lightning_plugins.callbacks.difficulty_source import difficulty_source
from lightning_plugins.callbacks.epoch_start import EpochStartSteering
from lightning_plugins.callbacks.sample_protocols import PerSampleLoss, require_protocol
from lightning_plugins.callbacks.training_set_pass import (
    training_set_pass,
    warn_if_first_epoch_unsteered,
)
from lightning_plugins.functional._checks import check_choice, check_float, check_int
from lightning_plugins.functional.difficulty import (
    difficulty_ranking,
    ease_from_difficulty,
    ease_weights,
)
from lightning_plugins.functional.pacing import PACINGS, resolve_pacing
from lightning_plugins.functional.sample_scores import check_scores
from lightning_plugins.sampling import SteerableSampler, find_steerable_sampler

__all__ = ["CURRICULUM_MODES", "Curriculum"]

CURRICULUM_MODES = ("subset", "weight", "anneal")


class Curriculum(EpochStartSteering):
    """Easy samples first: a pacing function widens the data (or flattens weights) over time.

    Each sample has a *difficulty* (lower is easier), from

    - per-sample values: a tensor, array or list, or a ``.npy`` / ``.pt`` / ``.csv`` file
      (see :func:`~lightning_plugins.callbacks.difficulty_source.read_difficulty_file`);
    - ``"field:<key>"``: ``batch[key]`` of every training sample, read once;
    - a :class:`~lightning_plugins.callbacks.DataDiet` (its scores, once it has scored;
      training is uniform until then; put the ``DataDiet`` first in the callbacks);
    - ``"loss"``: **self-paced learning**, the model's own ``per_sample_loss`` over the
      training set, recomputed every ``rescore_every_n_epochs`` epochs. The samples kept
      are those with a loss below a threshold λ that grows with the pacing value: λ is the
      loss of the ``c(t)``-quantile sample (logged as ``curriculum/threshold``). The
      losses are all-gathered, so every rank keeps the same samples.

    The pacing value ``c(t)`` in ``(0, 1]`` at optimizer step ``t`` comes from ``pacing``:
    a name of :data:`~lightning_plugins.functional.pacing.PACINGS` (``"linear"``,
    ``"root"`` (competence-based, Platanios et al. 2019), ``"geometric"``, ``"step"``
    (baby steps)) evaluated with ``start`` and ``total_steps``, or any callable
    ``step -> float``. The modes:

    - ``"subset"``: train on the easiest ``c(t)`` share of the data. At the start of each
      epoch the callback hands the ranking and the pacing value of every step of that
      epoch to the steerable sampler
      (:func:`~lightning_plugins.sampling.find_steerable_sampler`), so the pool grows step
      by step, identically on every rank and in a resumed run. With ``num_workers > 0``
      the first epoch of a ``fit`` is drawn before any hook runs and trains on all data
      (see :class:`~lightning_plugins.sampling.CurriculumSampler`); use
      ``num_workers=0`` when that epoch matters.
    - ``"weight"``: every sample is trained, with loss weight ``w = D + (1 - D) c(t)``
      where ``D`` in ``(0, 1]`` is its ease (1 for the easiest, ``1/N`` for the hardest);
      weights become uniform as ``c(t)`` reaches 1.
    - ``"anneal"``: MacAvaney et al. (2020): ``w = D (1 - e/m) + e/m`` at epoch ``e``, per
      sample (not the batch-mean shortcut of the reference code), uniform from epoch
      ``m = anneal_epochs`` on.

    Weights go into ``batch["weight"]`` (multiplied with any weight already there); every
    module of ours reduces ``per_sample_loss`` to the weighted mean. Logged at Lightning's
    logging steps (every ``log_every_n_steps``): ``curriculum/pacing``,
    ``curriculum/data_share`` (the share of the data in the pool, or the mean weight) and,
    for ``"loss"``, ``curriculum/threshold``; each epoch, ``curriculum/difficulty_mean``
    and ``curriculum/difficulty_std`` of the samples in use.

    The state (the difficulty and when it was scored) is saved in checkpoints; a run
    resumed mid-epoch continues with the same batches and weights.

    Args:
        difficulty: see above.
        pacing: a pacing name or a callable ``step -> float`` in ``(0, 1]``.
        mode: ``"subset"``, ``"weight"`` or ``"anneal"``.
        start: the pacing value at step 0 (``c0``), in ``(0, 1]``.
        total_steps: the step at which the pacing reaches 1; ``None`` for the run's
            ``trainer.estimated_stepping_batches``.
        anneal_epochs: ``m`` of ``"anneal"``.
        rescore_every_n_epochs: how often ``"loss"`` is recomputed.

    Raises:
        TypeError: for a ``difficulty`` of another kind, or a ``pacing`` that is neither a
            name nor callable.
        ValueError: for an unknown ``mode`` or ``pacing`` name, ``start`` outside
            ``(0, 1]``, non-finite difficulties, ``total_steps`` or ``anneal_epochs`` below
            1; when fitting, for difficulties of another length than the training set, a
            pacing value outside ``(0, 1]``, or (for ``"subset"``, ``"loss"`` and
            ``"field:"``) no steerable sampler in the train dataloader.

    Example:
        >>> curriculum = Curriculum(difficulty=[0.3, 0.1, 0.2], pacing="linear", start=0.5)
        >>> curriculum.state_dict()
        {'difficulty': tensor([0.3000, 0.1000, 0.2000], dtype=torch.float64), 'scored_epoch': -1}
    """

    def __init__(
        self,
        difficulty: Any,
        pacing: str | Callable[[int], float] = "root",
        mode: str = "subset",
        start: float = 0.1,
        total_steps: int | None = None,
        anneal_epochs: int = 20,
        rescore_every_n_epochs: int = 1,
    ) -> None:
        self.mode = check_choice(mode, "mode", CURRICULUM_MODES)
        if isinstance(pacing, str):
            check_choice(pacing, "pacing", tuple(PACINGS))
        elif not callable(pacing):
            raise TypeError(
                f"`pacing` must be one of {tuple(PACINGS)} or a callable step -> float, got "
                f"{type(pacing).__name__}."
            )
        self.pacing = pacing
        self.start = check_float(start, "start", low=0.0, high=1.0, low_open=True)
        self.total_steps = check_int(total_steps, "total_steps", low=1, optional=True)
        self.anneal_epochs = check_int(anneal_epochs, "anneal_epochs", low=1)
        self.rescore_every_n_epochs = check_int(
            rescore_every_n_epochs, "rescore_every_n_epochs", low=1
        )
        self.kind, payload = difficulty_source(difficulty)
        self.difficulty: torch.Tensor | None = payload if self.kind == "values" else None
        self._payload = payload
        self.scored_epoch = -1
        self._pace: Callable[[int], float] | None = None
        self._ease: torch.Tensor | None = None
        self._sorted: torch.Tensor | None = None  # the difficulties in order, for the threshold

    # ------------------------------------------------------------ policy
    def pace(self, step: int) -> float:
        """The pacing value ``c(step)`` of this run (after fitting has started)."""
        if self._pace is None:
            raise RuntimeError("Curriculum.pace is known once fitting has started.")
        return self._pace(step)

    def needs_sampler(self) -> bool:
        """Whether this curriculum steers the sampler or reads the training set."""
        return self.mode == "subset" or self.kind in ("loss", "field")

    # ------------------------------------------------------------ hooks
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.kind == "loss":
            require_protocol(pl_module, PerSampleLoss, "Curriculum(difficulty='loss')")

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        total = self.total_steps
        if total is None:
            estimated = trainer.estimated_stepping_batches
            if not math.isfinite(estimated):
                raise ValueError(
                    "Curriculum needs `total_steps` when the run has no length "
                    "(max_steps=-1 and max_epochs=-1)."
                )
            total = max(1, int(estimated))
        self._pace = resolve_pacing(self.pacing, total, self.start)
        if self.needs_sampler():
            sampler = find_steerable_sampler(trainer.train_dataloader)
            if self.difficulty is not None:
                self._check_length(self.difficulty, sampler.num_samples)
        if self.mode == "subset":
            warn_if_first_epoch_unsteered(trainer, "Curriculum(mode='subset')")
        super().on_train_start(trainer, pl_module)

    @override
    def steer_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sampler = find_steerable_sampler(trainer.train_dataloader) if self.needs_sampler() else None
        self._update_difficulty(trainer, pl_module)
        difficulty = self.difficulty
        if difficulty is None:  # a DataDiet that has not scored yet: uniform
            if sampler is not None:
                sampler.set_pacing(None, None)
            return
        if sampler is not None:
            self._check_length(difficulty, sampler.num_samples)
        if self.mode == "subset":
            assert sampler is not None
            self._steer(trainer, sampler, difficulty)
            share = self.pace(trainer.global_step)
            in_use = difficulty_ranking(difficulty)[: max(1, math.ceil(share * len(difficulty)))]
            used = difficulty[in_use]
        else:
            if sampler is not None:
                sampler.set_pacing(None, None)
            used = difficulty
        self._ease = None if self.mode == "subset" else ease_from_difficulty(difficulty)
        self._sorted = None
        stats = {
            "curriculum/difficulty_mean": float(used.mean()),
            "curriculum/difficulty_std": float(used.std()) if used.numel() > 1 else 0.0,
        }
        pl_module.log_dict(stats, on_step=False, on_epoch=True, sync_dist=False)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        value = self.pace(trainer.global_step)
        difficulty = self.difficulty
        if difficulty is not None and self.mode != "subset":
            weight = self._weights(batch, trainer.current_epoch, value)
            current = batch.get("weight")
            device_weight = weight.to(batch["index"].device, non_blocking=True)
            batch["weight"] = device_weight if current is None else current * device_weight
        # Lightning writes step metrics every `log_every_n_steps` (a log call costs ~0.5 ms)
        if (trainer.global_step + 1) % trainer.log_every_n_steps:
            return
        logged = {"curriculum/pacing": value}
        if difficulty is not None and self.mode == "subset":
            count = max(1, math.ceil(value * len(difficulty)))
            logged["curriculum/data_share"] = count / len(difficulty)
            if self.kind == "loss":
                if self._sorted is None or len(self._sorted) != len(difficulty):
                    self._sorted = difficulty.sort().values
                logged["curriculum/threshold"] = float(self._sorted[count - 1])
        elif difficulty is not None:
            logged["curriculum/data_share"] = float(weight.mean())
        size = _batch_size(batch)
        pl_module.log_dict(logged, on_step=True, on_epoch=False, sync_dist=False, batch_size=size)

    # ------------------------------------------------------------ parts
    def _steer(
        self, trainer: pl.Trainer, sampler: SteerableSampler, difficulty: torch.Tensor
    ) -> None:
        """Hand the ranking and each step's pacing value of the coming epoch to the sampler."""
        accumulate = max(1, int(trainer.accumulate_grad_batches))
        first = trainer.global_step
        fractions = torch.tensor(
            [self.pace(first + i // accumulate) for i in range(len(sampler))], dtype=torch.float64
        )
        sampler.set_pacing(difficulty_ranking(difficulty), fractions)

    def _update_difficulty(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self.kind == "scores":
            scores = getattr(self._payload, "scores", None)
            self.difficulty = None if scores is None else scores.detach().to(torch.float64).cpu()
        elif self.kind == "field" and self.difficulty is None:
            key = self._payload
            self.difficulty = training_set_pass(
                trainer, pl_module, lambda batch: _field(batch, key)
            ).to(torch.float64)
            self.scored_epoch = epoch
        elif self.kind == "loss" and (
            self.scored_epoch < 0 or epoch - self.scored_epoch >= self.rescore_every_n_epochs
        ):
            losses = training_set_pass(trainer, pl_module, pl_module.per_sample_loss)
            self.difficulty = losses.to(torch.float64)
            self.scored_epoch = epoch
        if self.difficulty is not None and self.kind != "values":
            check_scores(self.difficulty, "difficulty", len(self.difficulty))

    def _weights(self, batch: Any, epoch: int, value: float) -> torch.Tensor:
        if self._ease is None:
            assert self.difficulty is not None
            self._ease = ease_from_difficulty(self.difficulty)
        if not isinstance(batch, Mapping) or "index" not in batch:
            raise ValueError(
                f"Curriculum(mode={self.mode!r}) weights each sample by its dataset index, "
                "but the train batch has no 'index'."
            )
        index = batch["index"].reshape(-1).cpu()
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= len(self._ease)):
            raise ValueError(
                f"`train batch['index']` holds {int(index.max())}, outside the "
                f"{len(self._ease)} samples that `difficulty` scores."
            )
        progress = value if self.mode == "weight" else min(1.0, epoch / self.anneal_epochs)
        return ease_weights(self._ease[index], progress).to(torch.float32)

    def _check_length(self, difficulty: torch.Tensor, num_samples: int) -> None:
        if len(difficulty) != num_samples:
            raise ValueError(
                f"`difficulty` holds {len(difficulty)} values, but the training set has "
                f"{num_samples} samples: one value per sample is needed."
            )

    # ------------------------------------------------------------ state
    @override
    def state_dict(self) -> dict[str, Any]:
        difficulty = None if self.difficulty is None else self.difficulty.clone()
        return {"difficulty": difficulty, "scored_epoch": self.scored_epoch}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        difficulty = state_dict.get("difficulty")
        self.difficulty = None if difficulty is None else difficulty.to(torch.float64)
        self.scored_epoch = int(state_dict.get("scored_epoch", -1))
        self._ease = self._sorted = None


def _field(batch: Mapping[str, Any], key: str) -> torch.Tensor:
    if key not in batch:
        raise ValueError(
            f"`difficulty`='field:{key}' reads batch[{key!r}], but the training batches hold "
            f"{sorted(batch)}."
        )
    return torch.as_tensor(batch[key]).reshape(len(batch["index"]), -1)[:, 0].double()


def _batch_size(batch: Any) -> int | None:
    if isinstance(batch, Mapping) and "index" in batch:
        return int(batch["index"].shape[0])
    return None
