"""LoRAContinual: continual fine-tuning of a pretrained CLIP through (gated) LoRA adapters."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torchmetrics import MeanMetric
from typing_extensions import override

from lightning_plugins.functional import proximal_strength, soft_threshold_
from lightning_plugins.functional._checks import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    load_checkpoint,
)
from lightning_plugins.functional.zero_shot import average_templates, check_templates
from lightning_plugins.metrics import ContinualAccuracy
from lightning_plugins.metrics.zero_shot_data import DEFAULT_TEMPLATES
from lightning_plugins.models import (
    ImageTextTowers,
    active_adapter_parameter_count,
    active_ranks,
    adapter_parameter_count,
    add_gated_lora,
    create_image_text_model,
    create_tokenizer,
    gates,
    merge_and_reset_,
    parameter_count,
)
from lightning_plugins.modules.backbone_module import check_image_batch
from lightning_plugins.modules.continual_parts import (
    StreamEvaluation,
    check_task_labels,
    checked_task_classes,
    read_stream_at_setup,
    seen_positions,
    stream_class_maps,
)
from lightning_plugins.modules.optimizer_setup import (
    decay_groups,
    no_weight_decay,
    scheduled_optimizer,
)
from lightning_plugins.modules.sample_weights import sample_reducer

__all__ = ["LoRAContinual"]

_GENERATOR_STRIDE = 1_000_003


class LoRAContinual(StreamEvaluation, pl.LightningModule):
    """Continual fine-tuning of a pretrained CLIP on a task stream through LoRA adapters (CoDyRA).

    The model is an open_clip CLIP (``model_name``, a config such as the shipped
    ``"ViT-Tiny-P8-32"``, with ``pretrained`` weights). LoRA adapters of rank ``rank`` go on
    the attention and MLP layers of **both** towers (``targets``; see
    :func:`~lightning_plugins.models.lora_targets`), each with a learnable gate per rank when
    ``gated`` (CoDyRA) or without (plain LoRA). Only the adapters (and gates) train; the
    base weights and the logit scale stay frozen (the pretrained temperature is kept).

    **Full fine-tuning baseline** (``full_finetune=True``): no adapters are added; every
    base weight of both towers trains (the logit scale stays frozen, as with adapters);
    there is no proximal step, and a task end only records and logs (nothing to merge:
    ``task_active_ranks`` has no columns, no ``active_ranks`` plot is saved,
    ``lora/active_ranks`` is 0). The adapter arguments ``rank``, ``alpha``, ``dropout``,
    ``targets``, ``gated``, ``kappa`` and ``start_fraction`` are then ignored (still
    checked), so a config switches between the methods by this one flag.

    **Classification by class-name prompts** (the X-TAIL / CoDyRA setting): the logits are
    ``logit_scale * normalize(image) @ C.T`` with ``C`` the class embeddings, the
    normalised text embeddings of ``template.format(name)`` averaged over ``templates``
    (:func:`~lightning_plugins.functional.average_templates`). Class names come from the
    datamodule's ``class_names`` (indexed by stream class id; ``ClassIncremental`` and
    ``TaskStream`` give their sources'), or from ``class_names``.

    - **Training** (``per_sample_loss``): cross-entropy over the *current* task's classes
      (the target the label's position in ``task_classes[t]``), the class prompts encoded
      with gradient at every step: the text tower's adapters train too.
    - **Validation**: over the classes of all tasks seen so far (task-agnostic), their
      embeddings computed once per validation; logs ``val/loss`` and ``val/acc_top1`` and
      fills the current row of ``continual_accuracy``
      (:class:`~lightning_plugins.metrics.ContinualAccuracy`); a validation after the
      current task's end also logs ``val/average_accuracy``,
      ``val/average_incremental_accuracy``, ``val/forgetting`` and
      ``val/backward_transfer``. At the end of ``fit`` rank 0 saves
      ``accuracy_matrix.csv`` / ``.png`` into ``trainer.log_dir``. Test: all classes.

    **Proximal step** (``gated``): after every optimizer step ``s`` of task ``t``, each gate
    is soft-thresholded by ``lr * proximal_strength(s, S, start_fraction, kappa)``
    (:func:`~lightning_plugins.functional.soft_threshold_`), ``lr`` that of the gates'
    parameter group: nothing in the first ``start_fraction`` of the task, then the L1
    strength ramps linearly to ``kappa`` (:func:`~lightning_plugins.functional.proximal_strength`).
    Gates with ``|w| <= lr * strength`` become exactly zero. ``S``, the task's optimizer
    steps, is read from the trainer at each step: ``ceil(num_training_batches /
    accumulate_grad_batches) * epochs_per_task`` (the loader of the current task's epoch;
    ``max_steps`` is not considered). At full strength a gate loses ``lr * kappa`` per step
    besides its gradient step, so ``kappa`` of the order ``1 / (lr * S)`` prunes a gate that
    the loss does not hold up within the ramp.

    **Task end** (``on_task_end``, from :class:`~lightning_plugins.callbacks.TaskBoundaries`):
    the active ranks per layer (non-zero gates) are recorded in ``task_active_ranks``
    (``[T, L]``, layers in ``layer_names`` order) and saved with the run as
    ``active_ranks.csv`` / ``.png`` (grouped bars per task); ``lora/active_ranks`` (their
    sum), ``lora/active_adapter_parameters`` (the adapter parameters of the active ranks),
    ``lora/trainable_parameters`` and ``lora/merged_parameters`` (the model's size without
    adapters) are logged. Then every adapter is folded into its base weights and reset in
    place (:func:`~lightning_plugins.models.merge_and_reset_`: fresh ``A`` from a generator
    seeded with ``(seed, task + 1)``, ``B = 0``, gates 1, the optimizer's state of the
    adapters dropped): zero-gated ranks add nothing, so this is "prune, then merge". The
    adapters are added once, in ``__init__``, and never re-created, so DDP and the optimizer
    keep the same parameters all through the stream. For a model without adapters (export)
    use :meth:`merged_model`.

    **State**: adapters and gates are parameters, the task counters and the metric
    persistent buffers, so a fit resumes exactly, also in the middle of a task.
    **Distributed**: DDP (every rank computes the same proximal step and merge). Sharded
    strategies are not supported.

    Args:
        model_name: open_clip config name.
        pretrained: weights for it: a local open_clip checkpoint file (or a tag, which
            downloads), or a Lightning ``.ckpt`` of a
            :class:`~lightning_plugins.modules.ContrastiveImageText` (CLIP, SigLIP) of the
            same ``model_name`` (its ``model.*`` weights); ``None`` for a random init.
        rank: LoRA rank, at least 1.
        alpha: peft's ``lora_alpha`` (scale ``alpha / rank``); ``None`` for ``rank``.
        dropout: LoRA dropout on the inputs of Linear targets, in ``[0, 1)``.
        targets: module names to adapt (peft's suffix rule); ``None`` for the attention and
            MLP layers of both towers.
        gated: learnable gates per rank with the proximal step (CoDyRA); ``False`` for plain
            LoRA.
        kappa: the final L1 strength of the proximal step, non-negative.
        start_fraction: the fraction of each task before the proximal step starts, in
            ``[0, 1)``.
        templates: prompt templates, each with one ``{}``.
        task_classes: the class ids of each task; ``None`` reads them from the datamodule
            at ``setup`` (saved in the hyperparameters, so that ``load_from_checkpoint``
            rebuilds the module). Given, they must equal the datamodule's.
        class_names: the name of each class id; ``None`` reads the datamodule's
            ``class_names`` at ``setup`` (saved likewise).
        seed: seed of the adapters' initialisation (with the task).
        full_finetune: train all base weights instead of adapters (the baseline; see above).
        optimizer: optimizer factory taking parameter groups.
        lr_scheduler: LR scheduler factory, stepped every ``lr_scheduler_interval``.
        lr_scheduler_interval: ``"step"`` or ``"epoch"``.

    Raises:
        TypeError: for an argument of the wrong type.
        ValueError: for ``rank < 1``, targets that match no module (listing those that
            exist), ``kappa < 0``, ``start_fraction`` outside ``[0, 1)``, a template without
            ``{}``, bad ``task_classes``; at ``setup``, a datamodule that is no task stream,
            has no ``class_names`` or too few, or other ``task_classes``; in training, a
            label outside the current task.

    Example:
        >>> module = LoRAContinual("ViT-Micro-P8-32", rank=2, task_classes=[[0, 1], [2]],
        ...                        class_names=["zero", "one", "two"])
        >>> batch = {"image": torch.randn(3, 3, 32, 32), "label": torch.tensor([1, 0, 1])}
        >>> module.per_sample_loss(batch).shape
        torch.Size([3])
        >>> module(batch["image"]).shape  # the classes seen: task 0's
        torch.Size([3, 2])
        >>> sorted({name.split(".")[-1] for name, p in module.named_parameters()
        ...         if p.requires_grad})
        ['gate', 'original', 'weight']
    """

    def __init__(
        self,
        model_name: str = "ViT-Tiny-P8-32",
        pretrained: str | None = None,
        rank: int = 8,
        alpha: float | None = None,
        dropout: float = 0.0,
        targets: list[str] | None = None,
        gated: bool = True,
        kappa: float = 1.0,
        start_fraction: float = 0.5,
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        task_classes: list[list[int]] | None = None,
        class_names: list[str] | None = None,
        seed: int = 0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: str = "step",
        full_finetune: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(model_name, str):
            raise TypeError(f"`model_name` must be an open_clip config name, got {model_name!r}.")
        if pretrained is not None and not isinstance(pretrained, str):
            raise TypeError(f"`pretrained` must be a path or None, got {pretrained!r}.")
        check_int(rank, "rank", low=1)
        check_bool(gated, "gated")
        check_float(kappa, "kappa", low=0.0)
        check_float(start_fraction, "start_fraction", low=0.0, high=1.0, high_open=True)
        check_templates(templates)
        check_int(seed, "seed", low=0)
        check_bool(full_finetune, "full_finetune")
        check_choice(lr_scheduler_interval, "lr_scheduler_interval", ("step", "epoch"))
        if class_names is not None and (
            isinstance(class_names, str) or not all(isinstance(n, str) for n in class_names)
        ):
            raise TypeError(f"`class_names` must be a list of strings, got {class_names!r}.")
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler"])
        self.hparams["templates"] = list(templates)
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.model = _pretrained_model(model_name, pretrained)
        self.tokenizer = create_tokenizer(ImageTextTowers(model_name=model_name))
        if full_finetune:  # the baseline: every base weight trains, no adapters
            self.model.requires_grad_(True)
            self.model.logit_scale.requires_grad_(False)
        else:
            self.model.requires_grad_(False)  # the base weights and the logit scale: frozen
            add_gated_lora(self.model, targets, rank, alpha, dropout, gated)  # checks them
            merge_and_reset_(self.model, generator=self._adapter_generator(0))  # seeded A
        self.layer_names = list(active_ranks(self.model))
        self.register_buffer("current_task", torch.tensor(0), persistent=True)
        self.register_buffer("ended_task", torch.tensor(-1), persistent=True)
        self.register_buffer("task_step", torch.tensor(0), persistent=True)  # optimizer steps
        self.val_accuracy, self.test_accuracy = MeanMetric(), MeanMetric()
        self.task_classes: tuple[tuple[int, ...], ...] | None = None
        self.class_names: list[str] | None = None
        self.epochs_per_task = 1
        self.accuracy_matrix_paths: tuple[str, str] | None = None
        self.active_ranks_paths: tuple[str, str] | None = None
        self._val_classes: torch.Tensor | None = None
        if task_classes is not None or class_names is not None:
            if task_classes is None or class_names is None:
                raise ValueError(
                    "Give both `task_classes` and `class_names`, or neither (both are then "
                    f"read from the datamodule); got task_classes={task_classes!r}, "
                    f"class_names={class_names!r}."
                )
            self._build_stream(checked_task_classes(task_classes), list(class_names))

    # ----------------------------------------------------------------- stream
    def _adapter_generator(self, task: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.hparams.seed * _GENERATOR_STRIDE + task)

    def _build_stream(
        self, task_classes: tuple[tuple[int, ...], ...], class_names: list[str]
    ) -> None:
        """Class maps, prompt tokens, the active-rank record and the accuracy matrix."""
        missing = max(c for classes in task_classes for c in classes) + 1 - len(class_names)
        if missing > 0:
            raise ValueError(
                f"`class_names` holds {len(class_names)} names, but `task_classes` uses class "
                f"ids up to {len(class_names) + missing - 1}: give one name per class id."
            )
        self.task_classes, self.class_names = task_classes, class_names
        device = self.current_task.device
        self.offsets, maps = stream_class_maps(task_classes, device)
        for name, value in maps.items():
            self.register_buffer(name, value, persistent=False)
        templates = self.hparams.templates
        prompts = [template.format(name) for name in class_names for template in templates]
        tokens = self.tokenizer(prompts).view(len(class_names), len(templates), -1)
        self.register_buffer("prompt_tokens", tokens.to(device), persistent=False)
        history = torch.full((len(task_classes), len(self.layer_names)), -1, device=device)
        self.register_buffer("task_active_ranks", history, persistent=True)
        self.continual_accuracy = ContinualAccuracy(len(task_classes)).to(device)

    def _require_stream(self) -> tuple[tuple[int, ...], ...]:
        if self.task_classes is None:
            raise RuntimeError(
                "LoRAContinual has no classes yet: give `task_classes` and `class_names`, or "
                "fit it with a TaskStreamData datamodule with `class_names` (ClassIncremental, "
                "TaskStream), which `setup` reads."
            )
        return self.task_classes

    @override
    def setup(self, stage: str) -> None:
        schedule = read_stream_at_setup(self, stage)
        if schedule is None:
            return
        self.epochs_per_task = schedule.epochs_per_task
        if self.task_classes is None:
            where = type(self.trainer.datamodule).__name__
            names = getattr(self.trainer.datamodule, "class_names", None)
            if names is None:
                raise ValueError(
                    f"LoRAContinual classifies by class-name prompts, but the datamodule "
                    f"{where} has no `class_names` (one name per class id): use a source "
                    "with class names (Digits, SyntheticShapes) or give `class_names`."
                )
            if isinstance(names, str) or len(names) < schedule.num_classes:
                raise ValueError(
                    f"{where}.class_names must hold one name per class id "
                    f"({schedule.num_classes}), got {names!r}."
                )
            self.hparams["task_classes"] = [list(classes) for classes in schedule.task_classes]
            self.hparams["class_names"] = [str(name) for name in names]
            self._build_stream(schedule.task_classes, self.hparams["class_names"])

    def on_task_start(self, task: int) -> None:
        """Task ``task`` trains now: its classes, its step count and its accuracy row."""
        task = check_int(task, "task", low=0, high=len(self._require_stream()) - 1)
        self.current_task.fill_(task)
        self.task_step.zero_()
        self.continual_accuracy.set_training_task(task)

    def on_task_end(self, task: int) -> None:
        """Record and log the active ranks, then fold the adapters into the base weights.

        With ``full_finetune`` only the (empty) record and the counts: nothing to fold.
        """
        task = check_int(task, "task", low=0, high=len(self._require_stream()) - 1)
        ranks = active_ranks(self.model)
        self.task_active_ranks[task] = torch.tensor(
            [ranks[name] for name in self.layer_names], device=self.task_active_ranks.device
        )
        if self._current_fx_name is not None:  # inside a Trainer hook
            counts = self.parameter_counts()
            for name, value in counts.items():
                self.log(f"lora/{name}", float(value), on_step=True, on_epoch=False)
            # log_dir broadcasts from rank 0: every rank asks, or the ranks' collectives
            # fall out of step (DDP's next buffer broadcast then pairs with this one)
            folder = self.trainer.log_dir or self.trainer.default_root_dir
            if self.trainer.is_global_zero and self.layer_names:
                self.active_ranks_paths = _save_active_ranks(
                    folder,
                    self.task_active_ranks[: task + 1].cpu(),
                    self.layer_names,
                )
        if not self.hparams.full_finetune:
            optimizers = self.trainer.optimizers if self._trainer is not None else []
            merge_and_reset_(self.model, optimizers, self._adapter_generator(task + 1))
        self.ended_task.fill_(task)

    def parameter_counts(self) -> dict[str, int]:
        """The parameter counts logged at each task end, as ``lora/<name>``.

        ``active_ranks`` (summed over layers), ``active_adapter_parameters`` (those of the
        active ranks), ``trainable_parameters`` and ``merged_parameters`` (the size of the
        model without adapters, which merging does not change).
        """
        return {
            "active_ranks": sum(active_ranks(self.model).values()),
            "active_adapter_parameters": active_adapter_parameter_count(self.model),
            "trainable_parameters": sum(p.numel() for p in self.parameters() if p.requires_grad),
            "merged_parameters": parameter_count(self.model) - adapter_parameter_count(self.model),
        }

    def merged_model(self) -> torch.nn.Module:
        """A copy of the open_clip model with the adapters merged and removed (for export).

        Zero-gated ranks are pruned first (:func:`~lightning_plugins.models.prune_ranks_`),
        then :func:`~lightning_plugins.models.merge_lora_` folds the rest in.
        """
        import copy

        from lightning_plugins.models import merge_lora_, prune_ranks_

        model = copy.deepcopy(self.model)
        prune_ranks_(model)
        return merge_lora_(model)

    # ----------------------------------------------------------------- model
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings ``[B, D]``."""
        return F.normalize(self.model.encode_image(image), dim=-1)

    def class_embeddings(self, classes: torch.Tensor) -> torch.Tensor:
        """Normalised class embeddings ``[K, D]`` of class ids ``[K]`` (with gradient)."""
        tokens = self.prompt_tokens[classes]  # [K, T, L]
        text = F.normalize(self.model.encode_text(tokens.flatten(0, 1)), dim=-1)
        return average_templates(text.view(*tokens.shape[:2], -1))

    def logits(self, image: torch.Tensor, class_embeddings: torch.Tensor) -> torch.Tensor:
        """``logit_scale * normalize(image) @ class_embeddings.T``."""
        return self.model.logit_scale.exp() * self.encode_image(image) @ class_embeddings.T

    def seen_classes(self, num_tasks: int) -> torch.Tensor:
        """The class ids of tasks ``0..num_tasks-1``, in stream order."""
        self._require_stream()
        return self.class_order[: self.offsets[num_tasks]]

    @override
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, C_seen]`` over the classes of tasks ``0..current`` (stream order)."""
        return self.logits(image, self.class_embeddings(self.seen_classes(self._seen())))

    def _seen(self) -> int:
        return int(self.current_task) + 1

    # ------------------------------------------------------------------ loss
    def classification_logits(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[B, k_t]`` over the current task's classes and the labels' positions."""
        task_classes = self._require_stream()
        task = int(self.current_task)
        check_image_batch(batch, "train")
        check_task_labels(batch, task, self.class_task, task_classes, "LoRAContinual")
        start, stop = self.offsets[task], self.offsets[task + 1]
        logits = self.logits(batch["image"], self.class_embeddings(self.class_order[start:stop]))
        return logits, self.class_position[batch["label"]] - start

    def per_sample_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """Cross-entropy of each sample over the current task's class prompts, ``[B]``."""
        logits, targets = self.classification_logits(batch)
        return F.cross_entropy(logits, targets, reduction="none")

    @override
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses = self.per_sample_loss(batch)
        loss = sample_reducer(batch, losses)(losses)
        self.log("train/loss", loss, prog_bar=True, batch_size=losses.shape[0])
        return loss

    # ------------------------------------------------------------ optimizer
    def parameter_groups(self) -> list[dict[str, Any]]:
        """The adapters (weight decay) and the gates (none; open_clip's rule for 1-D).

        With ``full_finetune``: the base weights, split by the same rule.
        """
        decay, no_decay = decay_groups(self.named_parameters(), no_weight_decay)
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]

    @override
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameter_groups())
        return scheduled_optimizer(
            optimizer, self.lr_scheduler_factory, self.hparams.lr_scheduler_interval, self
        )

    def task_steps(self) -> int:
        """The optimizer steps of the current task (see the class docstring)."""
        trainer = self.trainer
        batches = trainer.num_training_batches
        if not math.isfinite(batches):
            raise ValueError(
                "LoRAContinual's proximal step needs the number of training batches of a "
                "task, but the training loader has no length."
            )
        per_epoch = math.ceil(int(batches) / trainer.accumulate_grad_batches)
        return max(per_epoch * self.epochs_per_task, 1)

    @override
    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Step, then the proximal step on the gates; count the task's steps."""
        super().optimizer_step(*args, **kwargs)
        if self.hparams.gated and not self.hparams.full_finetune:
            optimizer = args[2] if len(args) > 2 else kwargs["optimizer"]
            self.proximal_step(getattr(optimizer, "optimizer", optimizer))
        self.task_step += 1

    @torch.no_grad()
    def proximal_step(self, optimizer: torch.optim.Optimizer) -> float:
        """Soft-threshold every gate by its learning rate times the current L1 strength.

        Returns:
            The strength used (0 before the ramp).
        """
        strength = proximal_strength(
            int(self.task_step),
            self.task_steps(),
            self.hparams.start_fraction,
            self.hparams.kappa,
        )
        if strength > 0:
            lrs = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
            for gate in gates(self.model).values():
                soft_threshold_(gate, float(lrs[id(gate)]) * strength)
        return strength

    # ------------------------------------------------------------ evaluation
    def _clear_eval_cache(self) -> None:
        """Forget the class embeddings, computed once per evaluation."""
        self._val_classes = None

    def _eval_step(self, batch: dict[str, Any], stage: str, num_tasks: int) -> torch.Tensor:
        check_image_batch(batch, stage)
        label = batch["label"]
        position = seen_positions(
            label, self.class_position, self.offsets, num_tasks, stage, "LoRAContinual"
        )
        if self._val_classes is None:
            self._val_classes = self.class_embeddings(self.seen_classes(num_tasks))
        logits = self.logits(batch["image"], self._val_classes)
        loss = F.cross_entropy(logits, position)
        self.log(f"{stage}/loss", loss, batch_size=label.shape[0], sync_dist=True)
        predictions = self.class_order[logits.argmax(dim=1)]
        (self.val_accuracy if stage == "val" else self.test_accuracy).update(
            (predictions == label).float()
        )
        return predictions


def _pretrained_model(model_name: str, pretrained: str | None) -> torch.nn.Module:
    """The open_clip model of ``model_name`` with ``pretrained`` weights (a file, tag or .ckpt)."""
    init = {"init_logit_scale": math.log(1 / 0.07)}
    if pretrained is None or not pretrained.endswith(".ckpt"):
        return create_image_text_model(
            ImageTextTowers(model_name=model_name, pretrained=pretrained), **init
        )
    checkpoint = load_checkpoint(pretrained, "pretrained")
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    weights = {k[len("model.") :]: v for k, v in (state or {}).items() if k.startswith("model.")}
    saved_name = (hparams or {}).get("model_name")
    if not weights or saved_name is None:
        raise ValueError(
            f"`pretrained`={pretrained!r} is no Lightning checkpoint of a ContrastiveImageText "
            "(CLIP, SigLIP) built from a `model_name`: it lacks the 'model_name' "
            "hyperparameter or 'model.*' weights."
        )
    if saved_name != model_name:
        raise ValueError(
            f"`pretrained`={pretrained!r} holds a {saved_name!r} model, but `model_name` is "
            f"{model_name!r}; set `model_name: {saved_name}`."
        )
    model = create_image_text_model(model_name, **init)
    model.load_state_dict(weights)
    return model


def _save_active_ranks(
    folder: str, history: torch.Tensor, layer_names: list[str]
) -> tuple[str, str]:
    """Write ``active_ranks.csv`` (a row per task) and ``.png`` (grouped bars per layer)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    os.makedirs(folder, exist_ok=True)
    csv_path = os.path.join(folder, "active_ranks.csv")
    with open(csv_path, "w") as file:
        file.write(",".join(["after_task", *layer_names]) + "\n")
        for task, row in enumerate(history.tolist()):
            file.write(",".join([str(task), *map(str, row)]) + "\n")
    tasks, layers = history.shape
    figure = Figure(figsize=(max(6.0, 0.35 * layers * max(tasks, 1)), 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / max(tasks, 1)
    for task in range(tasks):
        positions = [i + (task - (tasks - 1) / 2) * width for i in range(layers)]
        axes.bar(positions, history[task].tolist(), width=width, label=f"task {task}")
    axes.set_xticks(range(layers), layer_names, rotation=90, fontsize=6)
    axes.set_ylabel("active ranks")
    axes.set_title("active LoRA ranks per layer at each task end")
    axes.legend(fontsize=7)
    png_path = os.path.join(folder, "active_ranks.png")
    figure.savefig(png_path, dpi=120)
    return csv_path, png_path
