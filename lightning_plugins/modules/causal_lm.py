"""CausalLM: any transformers causal language model, trained on the tokens of an answer."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from typing_extensions import override

from lightning_plugins.distributed import global_sum
from lightning_plugins.functional._checks import check_choice, check_int
from lightning_plugins.modules.optimizer_setup import (
    decay_groups,
    no_weight_decay,
    scheduled_optimizer,
)
from lightning_plugins.modules.sample_weights import sample_reducer
from lightning_plugins.modules.skill_data import read_skill_names

__all__ = ["DEFAULT_CONFIG", "CausalLM", "build_causal_lm"]

DEFAULT_CONFIG: dict[str, Any] = {"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 2}
"""The model ``CausalLM`` builds without ``config`` and ``checkpoint``: a 2-layer GPT-2."""

_TOKEN_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def build_causal_lm(
    config: str | Mapping[str, Any] | None = None,
    checkpoint: str | os.PathLike | None = None,
    vocab_size: int | None = None,
) -> nn.Module:
    """A transformers causal LM, randomly initialised from a config or loaded from a folder.

    ``config`` is a model type (``"gpt2"``, ``"llama"``, ...; transformers' default sizes)
    or a dict with ``model_type`` and the config's fields, built with
    ``AutoConfig.for_model`` and ``AutoModelForCausalLM.from_config`` (random weights,
    nothing downloaded). ``checkpoint`` is a local folder written by ``save_pretrained``,
    loaded with ``local_files_only=True``. ``vocab_size`` overrides a config's (special
    token ids of the config that fall outside the smaller vocabulary are set to ``None``;
    they only matter for generation); with a checkpoint it must equal the checkpoint's.

    Raises:
        TypeError: for a ``config`` that is no string or dict.
        ValueError: for both ``config`` and ``checkpoint``, a dict without ``model_type``,
            an unknown model type (naming close matches), a model type without a causal
            LM, a ``checkpoint`` that is no folder with a ``config.json``, or a
            ``vocab_size`` that differs from the checkpoint's.

    Example:
        >>> model = build_causal_lm({"model_type": "gpt2", "n_layer": 1, "n_embd": 16,
        ...                          "n_head": 2}, vocab_size=36)
        >>> type(model).__name__, model.get_input_embeddings().num_embeddings
        ('GPT2LMHeadModel', 36)
    """
    import transformers  # slow to import: only when a model is built

    vocab_size = check_int(vocab_size, "vocab_size", low=1, optional=True)
    if checkpoint is not None:
        if config is not None:
            raise ValueError(
                f"Give `config` (a new model) or `checkpoint` (a saved one), not both; got "
                f"config={config!r} and checkpoint={checkpoint!r}."
            )
        return _load_checkpoint(transformers, checkpoint, vocab_size)
    settings = _config_settings(DEFAULT_CONFIG if config is None else config)
    model_type = settings.pop("model_type")
    try:
        model_config = transformers.AutoConfig.for_model(model_type, **settings)
    except ValueError as err:
        known = list(transformers.CONFIG_MAPPING.keys())
        close = difflib.get_close_matches(model_type, known, n=5)
        raise ValueError(
            f"`config['model_type']` must be a transformers model type, got {model_type!r}; "
            f"close matches: {close or 'none'} (see transformers.CONFIG_MAPPING)."
        ) from err
    if vocab_size is not None:
        model_config.vocab_size = vocab_size
        for field in _TOKEN_ID_FIELDS:
            token_id = getattr(model_config, field, None)
            if isinstance(token_id, int) and token_id >= vocab_size:
                setattr(model_config, field, None)
    try:
        return transformers.AutoModelForCausalLM.from_config(model_config)
    except ValueError as err:
        raise ValueError(
            f"`config['model_type']` {model_type!r} has no causal LM in transformers "
            "(AutoModelForCausalLM); use a decoder such as 'gpt2' or 'llama'."
        ) from err


def _config_settings(config: Any) -> dict[str, Any]:
    if isinstance(config, str):
        return {"model_type": config}
    if not isinstance(config, Mapping):
        raise TypeError(
            f"`config` must be a model type or a dict with `model_type`, got {config!r} "
            f"({type(config).__name__})."
        )
    settings = dict(config)
    if not isinstance(settings.get("model_type"), str):
        raise ValueError(
            f"`config` must have a `model_type` string (such as 'gpt2'), got {config!r}."
        )
    return settings


def _load_checkpoint(transformers: Any, checkpoint: Any, vocab_size: int | None) -> nn.Module:
    if not isinstance(checkpoint, str | os.PathLike):
        raise TypeError(
            f"`checkpoint` must be a folder path, got {checkpoint!r} ({type(checkpoint).__name__})."
        )
    if not os.path.isfile(os.path.join(checkpoint, "config.json")):
        raise ValueError(
            f"`checkpoint` must be a local folder written by `save_pretrained` (with a "
            f"config.json), got {os.fspath(checkpoint)!r}."
        )
    model = transformers.AutoModelForCausalLM.from_pretrained(
        checkpoint, local_files_only=True, dtype=torch.float32
    )
    loaded = model.get_input_embeddings().num_embeddings
    if vocab_size is not None and vocab_size != loaded:
        raise ValueError(
            f"`vocab_size` must match the checkpoint's vocabulary of {loaded} tokens (or be "
            f"None), got {vocab_size}."
        )
    return model


class CausalLM(pl.LightningModule):
    """A transformers causal LM, trained and evaluated on the answer tokens of each sample.

    The model is built by :func:`build_causal_lm`: from ``config`` (random init; default
    :data:`DEFAULT_CONFIG`, a 2-layer GPT-2 with 64 dimensions) or from a local
    ``checkpoint`` folder (``save_pretrained``); ``vocab_size`` overrides the config's:
    set it to the datamodule's (``LegoSkills.vocab_size``, 36). Hyperparameters stay
    primitives, so Lightning checkpoints load with ``torch.load(weights_only=True)``
    (``load_from_checkpoint`` rebuilds the model from ``config``, or from the
    ``checkpoint`` folder, which must then still exist, and loads the weights).

    **Batches** are dicts (as :class:`~lightning_plugins.datamodules.LegoSkills` yields):
    ``input_ids`` (integer ``[B, L]``), ``answer_mask`` (bool ``[B, L]``: True at each
    position ``t`` whose next-token prediction ``input_ids[:, t + 1]`` is an answer
    token; at least one per sample, never the last position) and optionally
    ``attention_mask`` (``[B, L]``, 1 on tokens) and ``weight`` (float ``[B]``); other
    keys are ignored. The targets are read from ``input_ids``, so an answer may span
    several tokens.

    **Loss.** :meth:`per_sample_loss` is each sample's mean cross-entropy over its answer
    tokens ``[B]``; ``training_step`` reduces it to the mean over the global batch, or to
    the weighted mean with a batch ``weight`` (see
    :func:`~lightning_plugins.modules.sample_weights.sample_reducer`), and logs
    ``train/loss``. :meth:`classification_logits` gives the logits at the answer position
    over the vocabulary (one answer token per sample) for Data Diet's EL2N.

    **Evaluation.** Per validation (test) dataloader: the mean answer loss and the answer
    accuracy (a sample is correct when the argmax at each of its answer positions is the
    answer token), summed over the dataloader and over DDP ranks and logged at the end of
    the epoch as ``val/loss/<name>`` and ``val/answer_accuracy/<name>``, where the names
    are the datamodule's ``skill_names`` (the :class:`~lightning_plugins.modules.SkillData`
    protocol; ``dataloader_<i>`` without it), and the mean over the dataloaders as
    ``val/loss`` and ``val/answer_accuracy``. With one dataloader and no names only the
    means are logged.

    **Optimizer** as :class:`~lightning_plugins.modules.ImageClassifier`: the ``optimizer``
    factory gets :meth:`parameter_groups` (norms, biases and embeddings' 1-D parameters
    without weight decay), a scheduler that takes ``total_steps`` and was left without it
    gets ``trainer.estimated_stepping_batches``.

    Args:
        config: a transformers model type or a dict with ``model_type`` and config fields;
            ``None`` for :data:`DEFAULT_CONFIG` (when no ``checkpoint``).
        checkpoint: a local folder saved with ``save_pretrained``.
        vocab_size: the vocabulary size, overriding the config's.
        optimizer: optimizer factory taking parameter groups.
        lr_scheduler: LR scheduler factory, stepped every ``lr_scheduler_interval``.
        lr_scheduler_interval: ``"step"`` or ``"epoch"``.

    Raises:
        TypeError: for an argument of the wrong type.
        ValueError: see :func:`build_causal_lm`; an unknown ``lr_scheduler_interval``;
            and for a batch the model cannot read (see :meth:`check_batch`).

    Example:
        >>> module = CausalLM(vocab_size=36)
        >>> ids = torch.randint(3, 36, (2, 8))
        >>> answer_mask = torch.zeros(2, 8, dtype=torch.bool)
        >>> answer_mask[:, 5] = True
        >>> module.per_sample_loss({"input_ids": ids, "answer_mask": answer_mask}).shape
        torch.Size([2])
        >>> logits, targets = module.classification_logits(
        ...     {"input_ids": ids, "answer_mask": answer_mask})
        >>> logits.shape, torch.equal(targets, ids[:, 6])
        (torch.Size([2, 36]), True)
    """

    def __init__(
        self,
        config: str | dict[str, Any] | None = None,
        checkpoint: str | None = None,
        vocab_size: int | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: str = "step",
    ) -> None:
        super().__init__()
        check_choice(lr_scheduler_interval, "lr_scheduler_interval", ("step", "epoch"))
        self.model = build_causal_lm(config, checkpoint, vocab_size)
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        # token ids are checked against the vocabulary at the first batch of each stage
        self._ids_checked: set[str] = set()
        # per dataloader: [loss sum, correct count, sample count] of the running eval epoch
        self._eval_sums: dict[int, torch.Tensor] = {}

    @property
    def vocab_size(self) -> int:
        """The model's vocabulary size (rows of its input embedding)."""
        return self.model.get_input_embeddings().num_embeddings

    @override
    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Next-token logits ``[B, L, vocab_size]`` of ``input_ids`` ``[B, L]``."""
        return self.model(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).logits

    # ---------------------------------------------------------------- batches
    def check_batch(self, batch: Any, stage: str) -> None:
        """Raise a clear error for a batch the model cannot read.

        At every batch: ``input_ids`` an integer tensor ``[B, L]``, ``answer_mask`` a bool
        tensor of the same shape with at least one answer position per sample and none at
        the last position (one host sync), ``attention_mask`` (if any) of the same shape.
        At the first batch of each ``stage``: token ids in ``[0, vocab_size)``.

        Raises:
            KeyError: for a batch without ``input_ids`` or ``answer_mask``.
            TypeError: for a batch that is no dict or a tensor of the wrong dtype.
            ValueError: for wrong shapes, a sample without answer positions, an answer
                position at the end, or token ids outside the vocabulary.
        """
        if not isinstance(batch, Mapping):
            raise TypeError(
                f"A {stage} batch must be a dict with `input_ids` and `answer_mask`, got "
                f"{type(batch).__name__}."
            )
        for key in ("input_ids", "answer_mask"):
            if key not in batch:
                raise KeyError(f"A {stage} batch needs `{key}`; got keys {sorted(batch)}.")
        ids, mask = batch["input_ids"], batch["answer_mask"]
        if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.dtype == torch.bool:
            got = getattr(ids, "dtype", type(ids).__name__)
            raise TypeError(f"`{stage} batch['input_ids']` must be an integer tensor, got {got}.")
        if ids.ndim != 2:
            raise ValueError(
                f"`{stage} batch['input_ids']` must be [B, L], got shape {tuple(ids.shape)}."
            )
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            got = getattr(mask, "dtype", type(mask).__name__)
            raise TypeError(f"`{stage} batch['answer_mask']` must be a bool tensor, got {got}.")
        attention = batch.get("attention_mask")
        for key, value in (("answer_mask", mask), ("attention_mask", attention)):
            if value is not None and value.shape != ids.shape:
                raise ValueError(
                    f"`{stage} batch['{key}']` must have the shape of `input_ids` "
                    f"{tuple(ids.shape)}, got {tuple(value.shape)}."
                )
        counts = mask.sum(1)
        if bool((counts == 0).any() | mask[:, -1].any()):
            if bool(mask[:, -1].any()):
                raise ValueError(
                    f"`{stage} batch['answer_mask']` is True at the last position, which "
                    "predicts no token: True marks the position whose next token is an "
                    "answer token."
                )
            rows = torch.nonzero(counts == 0).flatten().tolist()
            raise ValueError(
                f"`{stage} batch['answer_mask']` has no answer position in samples {rows[:10]} "
                "(of the batch); every sample needs at least one."
            )
        if stage not in self._ids_checked and ids.numel():
            low, high = int(ids.min()), int(ids.max())
            if low < 0 or high >= self.vocab_size:
                raise ValueError(
                    f"`{stage} batch['input_ids']` holds token ids in [{low}, {high}], outside "
                    f"the model's vocabulary [0, {self.vocab_size}); build the model with the "
                    "datamodule's `vocab_size`."
                )
            self._ids_checked.add(stage)

    def answer_logits(
        self, batch: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits ``[N, vocab_size]`` at the ``N`` answer positions, targets and samples ``[N]``.

        The answer positions in row-major order of ``answer_mask``; the target of position
        ``t`` is ``input_ids[:, t + 1]``, its sample the batch row.
        """
        self.check_batch(batch, "train" if self.training else "eval")
        ids, mask = batch["input_ids"], batch["answer_mask"]
        logits = self(ids, batch.get("attention_mask"))
        rows, positions = torch.nonzero(mask, as_tuple=True)
        return logits[rows, positions], ids[rows, positions + 1], rows

    # ------------------------------------------------------------------ loss
    def per_sample_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Each sample's mean cross-entropy over its answer tokens, ``[B]``.

        ``training_step`` reduces it to its (weighted) mean over the global batch; Skill-It,
        curricula and data-diet callbacks call it too.
        """
        logits, targets, rows = self.answer_logits(batch)
        losses = F.cross_entropy(logits, targets, reduction="none")
        return _per_sample_mean(losses, rows, batch["input_ids"].shape[0])

    def classification_logits(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[B, vocab_size]`` at each sample's answer position and the answers ``[B]``.

        Raises:
            ValueError: unless every sample has exactly one answer position.
        """
        logits, targets, rows = self.answer_logits(batch)
        size = batch["input_ids"].shape[0]
        if rows.shape[0] != size:
            raise ValueError(
                "`classification_logits` needs exactly one answer position per sample; "
                f"`batch['answer_mask']` has {rows.shape[0]} for {size} samples."
            )
        return logits, targets

    @override
    def on_fit_start(self) -> None:
        self._ids_checked.clear()

    @override
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses = self.per_sample_loss(batch)
        loss = sample_reducer(batch, losses)(losses)
        self.log("train/loss", loss, prog_bar=True, batch_size=losses.shape[0])
        return loss

    # ------------------------------------------------------------ optimizer
    def no_weight_decay(self, name: str, param: nn.Parameter) -> bool:
        """Whether a parameter is exempt from weight decay (the package's rule; override)."""
        return no_weight_decay(name, param)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The trainable parameters as groups ``model`` and ``model_no_decay`` (empty left out)."""
        decay, no_decay = decay_groups(self.model.named_parameters(), self.no_weight_decay)
        groups = [
            {"params": decay, "name": "model"},
            {"params": no_decay, "weight_decay": 0.0, "name": "model_no_decay"},
        ]
        return [group for group in groups if group["params"]]

    @override
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameter_groups())
        return scheduled_optimizer(
            optimizer, self.lr_scheduler_factory, self.hparams.lr_scheduler_interval, self
        )

    # ------------------------------------------------------------ evaluation
    def _eval_step(self, batch: dict[str, Any], dataloader_idx: int) -> None:
        logits, targets, rows = self.answer_logits(batch)
        size = batch["input_ids"].shape[0]
        losses = _per_sample_mean(F.cross_entropy(logits, targets, reduction="none"), rows, size)
        wrong = torch.zeros(size, device=logits.device).index_add_(
            0, rows, (logits.argmax(-1) != targets).float()
        )
        sums = torch.stack(
            [
                losses.sum(),
                (wrong == 0).float().sum(),
                torch.tensor(float(size), device=logits.device),
            ]
        ).detach()
        previous = self._eval_sums.get(dataloader_idx)
        self._eval_sums[dataloader_idx] = sums if previous is None else previous + sums

    def _eval_epoch_end(self, stage: str, num_dataloaders: int) -> None:
        sums = torch.zeros(num_dataloaders, 3, device=self.device)
        for index, value in self._eval_sums.items():
            sums[index] = value
        self._eval_sums.clear()
        sums = global_sum(sums)  # every rank's samples
        names = read_skill_names(self.trainer.datamodule, num_dataloaders)
        losses, accuracies = [], []
        for name, (loss_sum, correct, count) in zip(names, sums, strict=True):
            if count == 0:
                continue
            losses.append(loss_sum / count)
            accuracies.append(correct / count)
            if num_dataloaders > 1 or not name.startswith("dataloader_"):
                self.log(f"{stage}/loss/{name}", losses[-1])
                self.log(f"{stage}/answer_accuracy/{name}", accuracies[-1])
        if losses:
            self.log(f"{stage}/loss", torch.stack(losses).mean())
            self.log(f"{stage}/answer_accuracy", torch.stack(accuracies).mean())

    @override
    def on_validation_epoch_start(self) -> None:
        self._eval_sums.clear()

    @override
    def validation_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._eval_step(batch, dataloader_idx)

    @override
    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val", len(self.trainer.num_val_batches))

    @override
    def on_test_epoch_start(self) -> None:
        self._eval_sums.clear()

    @override
    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    @override
    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test", len(self.trainer.num_test_batches))


def _per_sample_mean(values: torch.Tensor, rows: torch.Tensor, size: int) -> torch.Tensor:
    """The mean of ``values [N]`` per sample ``rows [N]`` over ``size`` samples, ``[size]``."""
    totals = torch.zeros(size, dtype=values.dtype, device=values.device).index_add(0, rows, values)
    counts = torch.bincount(rows, minlength=size).to(values.dtype)
    return totals / counts
