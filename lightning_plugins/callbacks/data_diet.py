"""DataDiet: score every training sample early in training (EL2N, GraNd, forgetting) and prune."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torch.func import functional_call
from typing_extensions import override

from lightning_plugins.callbacks.epoch_start import EpochStartSteering
from lightning_plugins.callbacks.sample_protocols import (
    ClassificationLogits,
    PerSampleLoss,
    require_protocol,
)
from lightning_plugins.callbacks.score_histogram import plot_score_histogram
from lightning_plugins.callbacks.training_set_pass import (
    training_set_pass,
    warn_if_first_epoch_unsteered,
)
from lightning_plugins.functional._checks import check_bool, check_choice, check_float, check_int
from lightning_plugins.functional.difficulty import prune_mask
from lightning_plugins.functional.sample_scores import (
    check_scores,
    el2n_scores,
    forgetting_events,
    grand_scores,
    per_sample_grad_norms,
)
from lightning_plugins.sampling import find_steerable_sampler

__all__ = ["DATA_DIET_SCORES", "DataDiet"]

DATA_DIET_SCORES = ("el2n", "grand", "forgetting", "random")
GRAND_SAMPLES = ("independent", "in_batch")


class DataDiet(EpochStartSteering):
    """Score each training sample early in training, then keep the most informative ones.

    Data Diet (Paul et al. 2021) and forgetting events (Toneva et al. 2019), online, on
    any number of ranks:

    - ``"el2n"``: ``‖softmax(f(x)) - onehot(y)‖₂`` from the module's
      ``classification_logits(batch)``; averaged over the scorings at the starts of the
      ``repeats`` epochs ending with ``score_epoch``;
    - ``"grand"``: the per-sample gradient norm ``‖∇_w l(x, y)‖₂`` of ``per_sample_loss``
      over the trainable parameters (``torch.func``; not under sharded strategies),
      averaged the same way. ``grand_samples="independent"`` (the paper's definition)
      takes each sample on its own, in one vmapped pass per batch;
      ``"in_batch"`` differentiates each sample's loss within its batch, for losses
      whose samples interact (CLIP's in-batch softmax), at one backward pass per sample;
    - ``"forgetting"``: the times a sample went from correctly to wrongly classified
      between the passes at the starts of epochs ``1 .. score_epoch`` (one pass per
      epoch rather than each minibatch presentation); never-learned samples count as
      the most forgotten;
    - ``"random"``: uniform random scores from ``seed``: the random-pruning baseline.

    Higher scores are harder. At the start of epoch ``score_epoch`` the scores are final:
    they are written to ``data_diet_<score>.pt`` (``scores``, ``kept``) and, with
    ``plot``, ``data_diet_<score>.png`` in ``save_dir`` (default: ``trainer.log_dir``),
    logged (``data_diet/score_mean``, ``data_diet/kept_share``) and kept in
    :attr:`scores`. With ``prune > 0`` the sampler is steered from that epoch on to the
    samples with the highest scores: after skipping the ``offset`` share of the very
    hardest (the paper's offset, against label noise), the next ``1 - prune`` share is
    kept. With ``prune = 0`` nothing is pruned: hand the callback to
    :class:`~lightning_plugins.callbacks.Curriculum` as its ``difficulty`` instead.

    Each pass reads the whole training set in order (every rank a share) with the module
    in eval mode; scores are all-gathered, so every rank prunes the same samples. The
    state (scores, running sums, correctness history, kept mask) is saved in checkpoints.

    Args:
        score: ``"el2n"``, ``"grand"``, ``"forgetting"`` or ``"random"``.
        score_epoch: the epoch at whose start the scores are final (0 scores the
            untrained model, as GraNd at initialisation does).
        repeats: EL2N/GraNd: the number of scorings averaged (at the starts of epochs
            ``score_epoch - repeats + 1 .. score_epoch``).
        prune: the share of the training set pruned, in ``[0, 1)``.
        offset: the share of the hardest samples skipped before keeping, in ``[0, 1)``.
        save_dir: where the scores are written; ``None`` for ``trainer.log_dir``.
        plot: also write the histogram.
        chunk_size: GraNd: per-sample gradients computed at once (memory), ``None`` for
            the whole batch.
        grand_samples: GraNd: ``"independent"`` or ``"in_batch"`` (see above).
        seed: the seed of ``"random"``.

    Raises:
        TypeError: for arguments of the wrong type.
        ValueError: for an unknown ``score``, ``prune`` or ``offset`` outside ``[0, 1)``,
            ``repeats`` larger than ``score_epoch + 1`` or not 1 for ``"forgetting"``,
            ``score_epoch < 1`` for ``"forgetting"``; when fitting, a module without the
            method the score needs (``classification_logits`` or ``per_sample_loss``), or
            no steerable sampler in the train dataloader.

    Example:
        >>> diet = DataDiet(score="el2n", score_epoch=2, prune=0.3)
        >>> diet.scores is None, diet.scoring_epochs()
        (True, [2])
    """

    def __init__(
        self,
        score: str = "el2n",
        score_epoch: int = 1,
        repeats: int = 1,
        prune: float = 0.0,
        offset: float = 0.0,
        save_dir: str | os.PathLike[str] | None = None,
        plot: bool = True,
        chunk_size: int | None = None,
        seed: int = 0,
        grand_samples: str = "independent",
    ) -> None:
        self.score = check_choice(score, "score", DATA_DIET_SCORES)
        self.score_epoch = check_int(
            score_epoch, "score_epoch", low=1 if score == "forgetting" else 0
        )
        self.repeats = check_int(repeats, "repeats", low=1, high=self.score_epoch + 1)
        if score == "forgetting" and self.repeats != 1:
            raise ValueError(
                f"`repeats`={repeats} does not apply to score='forgetting', which counts over "
                "epochs 1..score_epoch; leave it at 1."
            )
        self.prune = check_float(prune, "prune", low=0.0, high=1.0, high_open=True)
        self.offset = check_float(offset, "offset", low=0.0, high=1.0, high_open=True)
        self.save_dir = None if save_dir is None else Path(save_dir)
        self.plot = check_bool(plot, "plot")
        self.chunk_size = check_int(chunk_size, "chunk_size", low=1, optional=True)
        self.seed = check_int(seed, "seed")
        self.grand_samples = check_choice(grand_samples, "grand_samples", GRAND_SAMPLES)
        self.scores: torch.Tensor | None = None
        self.kept: torch.Tensor | None = None
        self._sum: torch.Tensor | None = None
        self._count = 0
        self._correct: list[torch.Tensor] = []
        self._checked = False

    def scoring_epochs(self) -> list[int]:
        """The epochs at whose start a pass over the training set runs."""
        if self.score == "random":
            return [self.score_epoch]
        if self.score == "forgetting":
            return list(range(1, self.score_epoch + 1))
        return list(range(self.score_epoch - self.repeats + 1, self.score_epoch + 1))

    # ------------------------------------------------------------ hooks
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        needed_by = f"DataDiet(score={self.score!r})"
        if self.score in ("el2n", "forgetting"):
            require_protocol(pl_module, ClassificationLogits, needed_by)
        elif self.score == "grand":
            require_protocol(pl_module, PerSampleLoss, needed_by)
            if "fsdp" in type(trainer.strategy).__name__.lower():
                raise ValueError(
                    "DataDiet(score='grand') computes per-sample gradients with torch.func, "
                    "which needs whole parameters; it does not run under a sharded strategy "
                    f"({type(trainer.strategy).__name__}). Use score='el2n' there."
                )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        find_steerable_sampler(trainer.train_dataloader)  # a clear error before any pass
        if self.score_epoch == 0 and self.prune > 0:
            warn_if_first_epoch_unsteered(trainer, "DataDiet(score_epoch=0)")
        super().on_train_start(trainer, pl_module)

    @override
    def steer_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        sampler = find_steerable_sampler(trainer.train_dataloader)
        if self.scores is None and epoch in self.scoring_epochs():
            self._score(trainer, pl_module, sampler.num_samples)
            if epoch == self.score_epoch:
                self._finish(trainer, pl_module)
        if self.kept is not None:
            sampler.set_subset(self.kept)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.scores is None:
            rank_zero_warn(
                f"DataDiet scores at the start of epoch {self.score_epoch}, but fitting ended "
                f"after {trainer.current_epoch} epochs: nothing was scored or pruned."
            )

    # ------------------------------------------------------------ scoring
    def _score(self, trainer: pl.Trainer, pl_module: pl.LightningModule, num_samples: int) -> None:
        if self.score == "random":
            generator = torch.Generator().manual_seed(self.seed)
            self._sum, self._count = torch.rand(num_samples, generator=generator).double(), 1
            return
        if self.score == "forgetting":
            correct = training_set_pass(
                trainer, pl_module, lambda batch: _correct(pl_module, batch)
            )
            self._correct.append(correct.bool())
            return
        if self.score == "el2n":
            values = training_set_pass(
                trainer,
                pl_module,
                lambda batch: el2n_scores(*pl_module.classification_logits(batch)),
            )
        else:
            self._checked = False
            values = training_set_pass(
                trainer, pl_module, lambda batch: self._grand(pl_module, batch), grad=True
            )
        values = values.double()
        self._sum = values if self._sum is None else self._sum + values
        self._count += 1

    def _grand(self, pl_module: pl.LightningModule, batch: Any) -> torch.Tensor:
        if not self._checked:  # once outside torch.func: modules check a stage's first batch
            with torch.no_grad():
                pl_module.per_sample_loss(batch)
            self._checked = True
        wrapper = _PerSampleLossCall(pl_module)
        params = {
            f"module.{name}": param.detach()
            for name, param in pl_module.named_parameters()
            if param.requires_grad
        }
        if self.grand_samples == "independent":
            return per_sample_grad_norms(
                lambda values, samples: functional_call(wrapper, values, (samples,)),
                params,
                batch,
                chunk_size=self.chunk_size,
            )

        def loss_fn(values: dict[str, torch.Tensor]) -> torch.Tensor:
            return functional_call(wrapper, values, (batch,))

        return grand_scores(loss_fn, params, chunk_size=self.chunk_size)

    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.score == "forgetting":
            scores = forgetting_events(torch.stack(self._correct)).double()
        else:
            assert self._sum is not None
            scores = self._sum / self._count
        self.scores = check_scores(scores, "scores", len(scores))
        self.kept = prune_mask(self.scores, self.prune, self.offset) if self.prune > 0 else None
        kept_share = 1.0 if self.kept is None else float(self.kept.float().mean())
        pl_module.log_dict(
            {
                "data_diet/score_mean": float(self.scores.mean()),
                "data_diet/kept_share": kept_share,
            },
            on_step=False,
            on_epoch=True,
            sync_dist=False,
        )
        # `trainer.log_dir` broadcasts from rank zero: every rank must ask
        folder = self.save_dir or Path(trainer.log_dir or trainer.default_root_dir)
        if trainer.is_global_zero:
            written = self.save(folder)
            rank_zero_info(f"DataDiet: wrote {', '.join(p.name for p in written)} to {folder}")

    def save(self, folder: str | os.PathLike[str]) -> list[Path]:
        """Write the scores (and, with ``plot``, their histogram) into ``folder``."""
        if self.scores is None:
            raise RuntimeError("DataDiet has no scores yet.")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"data_diet_{self.score}.pt"
        torch.save({"scores": self.scores, "kept": self.kept, "score": self.score}, path)
        written = [path]
        if self.plot:
            written.append(
                plot_score_histogram(
                    self.scores,
                    folder / f"data_diet_{self.score}.png",
                    kept=self.kept,
                    title=f"Data Diet: {self.score} at epoch {self.score_epoch}",
                )
            )
        return written

    # ------------------------------------------------------------ state
    @override
    def state_dict(self) -> dict[str, Any]:
        def copy(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.clone()

        return {
            "scores": copy(self.scores),
            "kept": copy(self.kept),
            "sum": copy(self._sum),
            "count": self._count,
            "correct": torch.stack(self._correct) if self._correct else None,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.scores = state_dict.get("scores")
        self.kept = state_dict.get("kept")
        self._sum = state_dict.get("sum")
        self._count = int(state_dict.get("count", 0))
        correct = state_dict.get("correct")
        self._correct = [] if correct is None else list(correct.bool())


class _PerSampleLossCall(nn.Module):
    """``per_sample_loss`` as a ``forward``, for ``torch.func.functional_call``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, batch: Any) -> torch.Tensor:
        return self.module.per_sample_loss(batch)


def _correct(pl_module: Any, batch: Any) -> torch.Tensor:
    logits, targets = pl_module.classification_logits(batch)
    return (logits.argmax(dim=-1) == targets).float()
