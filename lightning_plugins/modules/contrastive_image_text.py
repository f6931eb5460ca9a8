"""ContrastiveImageText: the LightningModule behind CLIP and SigLIP training."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from typing_extensions import override

from lightning_plugins.distributed import (
    all_gather,
    all_gather_with_grad,
    gather_sizes,
    get_world_size,
)
from lightning_plugins.functional._checks import (
    check_bool,
    check_choice,
    check_float,
    check_int,
)
from lightning_plugins.functional.distillation import DISTILLATION_KINDS, image_text_distillation
from lightning_plugins.functional.zero_shot import zero_shot_classifier
from lightning_plugins.losses import ContrastiveLoss, SigLipLoss
from lightning_plugins.metrics import ImageTextEvaluation, ZeroShotClasses, read_zero_shot_data
from lightning_plugins.models import ImageTextTowers, create_image_text_model, create_tokenizer
from lightning_plugins.modules.optimizer_setup import (
    decay_groups,
    no_weight_decay,
    scheduled_optimizer,
)
from lightning_plugins.modules.sample_weights import sample_reducer

__all__ = ["ContrastiveImageText"]

_NO_TEACHER = (
    "`distill_weight`={} needs a teacher, but the module's `teacher` is None: add "
    "lightning_plugins.callbacks.EMATeacher to the Trainer's callbacks, or set "
    "distill_weight=0."
)


class ContrastiveImageText(pl.LightningModule):
    """Contrastive image-text training of an open_clip model with any contrastive loss.

    The model is built from ``towers`` (an
    :class:`~lightning_plugins.models.ImageTextTowers`: an open_clip config with optional
    pretrained weights, or a timm image tower plus a Hugging Face text tower); for a plain
    open_clip config ``model_name`` is the short form. Batches are dicts with ``image`` and
    either ``text`` (token ids) or ``caption`` (strings, tokenized by :meth:`text_tokens`).

    Training reduces :meth:`per_sample_loss` to its mean over the global batch, or, when a
    callback put per-sample weights ``weight`` (float ``[B]``) into the batch, to the
    weighted mean ``sum(w * l) / sum(w)`` over the global batch (exact under DDP; the
    weights are checked: finite, non-negative, not all zero, at one host sync per step).
    So an override of :meth:`per_sample_loss` is what trains, and callbacks that score,
    weight or select samples see the very loss that is optimised. After
    every optimizer step the logit scale is clamped to ``[0, ln max_logit_scale]``.
    Norms, biases, and the logit scale and bias get no weight decay (open_clip's rule,
    see :meth:`no_weight_decay`).

    **Self-distillation.** With ``distill_weight > 0`` and a teacher attached as
    ``self.teacher`` (an :class:`~lightning_plugins.callbacks.EMATeacher` callback, or
    any module returning normalised image and text features from ``(image, text)`` with
    ``logit_scale`` and ``logit_bias`` attributes) every sample's loss gains
    ``distill_weight`` times its distillation loss
    (:func:`~lightning_plugins.functional.image_text_distillation`): the student's
    logits against the global batch are pulled towards the teacher's, by cross-entropy to
    the teacher's softmax (``distill_kind="softmax"``, open_clip's ``DistillClipLoss``)
    or by Bernoulli KL divergence (``"sigmoid"``). ``train/contrastive_loss`` and
    ``train/distill_loss`` are logged beside ``train/loss``. Under DDP the student's
    features are gathered a second time for it (with gradient), the teacher's without.

    **Evaluation.** Validation (and test) batches go to an
    :class:`~lightning_plugins.metrics.ImageTextEvaluation` (``self.evaluation``): a batch
    with ``label`` is scored for zero-shot classification (class-name prompts averaged
    over templates), one with ``text`` or ``caption`` for image-text retrieval
    (Recall@1/5/10). The zero-shot classes are ``zero_shot`` if given, else the
    datamodule's, read through the :class:`~lightning_plugins.metrics.ZeroShotData`
    protocol (its ``class_names``, ``templates`` and ``class_groups``; see the README).
    Each validation (or test) dataloader is evaluated on its own and its results are
    logged at its last batch, so ``trainer.validate`` returns (and prints) each result
    once, under its dataloader: for ``SyntheticShapes`` ``val/zero_shot_*`` under
    dataloader 0 and ``val/i2t_R@K``, ``val/t2i_R@K`` under dataloader 1. The names keep
    no ``/dataloader_idx_N`` suffix (ModelCheckpoint monitors stay ``val/zero_shot_top1``),
    except a name a later dataloader logs again, which gets Lightning's suffix. A
    dataloader without a known length is logged at the epoch end, which Lightning lists
    under every dataloader (as are EMATeacher's ``*_teacher`` results, whose pass runs
    outside the loop's dataloaders).

    **Extension points.** Subclass and override:

    - :meth:`per_sample_loss` -- the loss that is trained, ``[B]`` (add a term, reweight
      samples); callbacks (curriculum, Data Diet, data mixing) score with it too;
    - :meth:`loss_terms` -- the contrastive and distillation terms before they are added;
    - :meth:`classification_logits` -- the in-batch image-to-text logit rows and their
      targets, which Data Diet's EL2N scores and forgetting events read;
    - :meth:`encode_image` / :meth:`encode_text` -- the normalised embeddings (pooling,
      projection heads);
    - :meth:`no_weight_decay` -- which parameters get no weight decay;
    - :meth:`parameter_groups` -- the optimizer's parameter groups (per-tower learning
      rates);
    - :meth:`configure_optimizers` -- anything else about optimizer and scheduler.
      The default builds ``optimizer(parameter_groups())`` and ``lr_scheduler(optimizer)``;
      a scheduler factory that takes ``total_steps`` (such as
      :class:`~lightning_plugins.schedulers.WarmupCosineLR`) and was left without it gets
      ``trainer.estimated_stepping_batches``.

    The class is longer than 300 lines: about 440 lines below this docstring, a third of
    them method docstrings, hold the hooks Lightning needs in one class (model, loss,
    optimizer groups, batch checks, per-dataloader evaluation logging); the model
    building, the (weighted) reduction of per-sample losses, the scheduler set-up, the
    evaluation metrics and every formula live elsewhere.

    Args:
        loss: contrastive loss with open_clip's call signature and ``reduction="none"``:
            a :class:`~lightning_plugins.losses.ContrastiveLoss` (``ClipLoss``,
            ``SigLipLoss``, ``CWCLLoss`` or a subclass of one's own).
        init_logit_scale: initial logit scale in log space.
        init_logit_bias: initial logit bias, or ``None`` for none.
        model_name: open_clip config name (e.g. ``"ViT-B-32"`` or the shipped
            ``"ViT-Tiny-P8-32"``), short for ``towers=ImageTextTowers(model_name=...)``.
        towers: the image and text towers and their weights (instead of ``model_name``).
        max_logit_scale: upper clamp of the exponentiated logit scale.
        lock_image: freeze the image tower (and keep it in eval mode), as in LiT.
        lock_text: freeze the text tower (and keep it in eval mode).
        optimizer: optimizer factory taking parameter groups.
        lr_scheduler: LR scheduler factory, stepped every ``lr_scheduler_interval``.
        lr_scheduler_interval: ``"step"`` or ``"epoch"``.
        zero_shot: the zero-shot classes, templates and class groups; ``None`` for the
            datamodule's.
        eval_chunk_size: rows scored at once by retrieval and prompts encoded at once.
        distill_weight: weight of the distillation loss towards ``self.teacher``; 0 for
            none.
        distill_kind: ``"softmax"`` or ``"sigmoid"``; ``None`` picks ``"sigmoid"`` for a
            :class:`~lightning_plugins.losses.SigLipLoss` and ``"softmax"`` otherwise.

    Raises:
        TypeError: for an argument of the wrong type (a ``loss`` that is no module, a
            ``lock_image`` that is no bool, ...).
        ValueError: for both or neither of ``model_name`` and ``towers``, an unknown
            model, a missing checkpoint or tower, towers of unequal width, a loss that
            needs a frozen tower (``CWCLLoss``) without locking it, empty zero-shot
            classes, a template without exactly one ``{}`` (also a datamodule's, when
            evaluation starts), ``max_logit_scale`` not above 1, an unknown scheduler
            interval, locking both towers, a negative or non-finite ``distill_weight`` or
            an unknown ``distill_kind``; when fitting starts, for ``distill_weight > 0``
            without a teacher; and for a batch the model cannot read (see
            :meth:`check_batch`: no ``image``, images of the wrong rank, channels, size or
            dtype, token ids of the wrong shape or outside the vocabulary).

    Example:
        >>> from lightning_plugins.losses import ClipLoss
        >>> module = ContrastiveImageText(ClipLoss(), init_logit_scale=2.0,
        ...                               model_name="ViT-Micro-P8-32")
        >>> batch = {"image": torch.randn(4, 3, 32, 32),
        ...          "caption": ["a red circle", "a blue star", "two green bars", "a ring"]}
        >>> module.per_sample_loss(batch).shape
        torch.Size([4])
    """

    def __init__(
        self,
        loss: ContrastiveLoss,
        init_logit_scale: float,
        init_logit_bias: float | None = None,
        model_name: str | None = None,
        towers: ImageTextTowers | None = None,
        max_logit_scale: float = 100.0,
        lock_image: bool = False,
        lock_text: bool = False,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_interval: str = "step",
        zero_shot: ZeroShotClasses | None = None,
        eval_chunk_size: int = 1024,
        distill_weight: float = 0.0,
        distill_kind: str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(loss, nn.Module):
            raise TypeError(f"`loss` must be a torch.nn.Module, got {type(loss).__name__}.")
        init_logit_scale = check_float(init_logit_scale, "init_logit_scale")
        init_logit_bias = check_float(init_logit_bias, "init_logit_bias", optional=True)
        model = _towers(model_name, towers)
        max_logit_scale = check_float(max_logit_scale, "max_logit_scale", low=1, low_open=True)
        lock_image = check_bool(lock_image, "lock_image")
        lock_text = check_bool(lock_text, "lock_text")
        check_choice(lr_scheduler_interval, "lr_scheduler_interval", ("step", "epoch"))
        if lock_image and lock_text:
            raise ValueError("`lock_image` and `lock_text` are both True: nothing would train.")
        frozen = getattr(loss, "frozen", None)  # CWCL-style losses weight by a frozen tower
        if frozen in ("text", "image") and not (lock_text if frozen == "text" else lock_image):
            raise ValueError(
                f"`loss`={loss!r} takes its weights from the frozen {frozen} tower, but "
                f"`lock_{frozen}` is False; set `lock_{frozen}=True` (or use ClipLoss)."
            )
        self.zero_shot_classes = _zero_shot_classes(zero_shot)  # checks the templates
        eval_chunk_size = check_int(eval_chunk_size, "eval_chunk_size", low=1)
        distill_weight = check_float(distill_weight, "distill_weight", low=0)
        if distill_kind is not None:
            check_choice(distill_kind, "distill_kind", DISTILLATION_KINDS)
        self.save_hyperparameters(ignore=["loss", "optimizer", "lr_scheduler"])
        # as primitives, so that checkpoints load with torch.load(weights_only=True)
        self.save_hyperparameters(
            {
                "towers": None if towers is None else asdict(model),
                "zero_shot": None if zero_shot is None else asdict(self.zero_shot_classes),
            }
        )
        self.loss = loss
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.model = create_image_text_model(
            model, init_logit_scale=init_logit_scale, init_logit_bias=init_logit_bias
        )
        self.tokenizer = create_tokenizer(model)
        if lock_image:
            self.model.visual.requires_grad_(False)
        if lock_text:
            for name, param in self.model.named_parameters():
                if not name.startswith("visual.") and "logit_" not in name:
                    param.requires_grad_(False)
        self.evaluation = ImageTextEvaluation(chunk_size=eval_chunk_size)
        # per evaluation run: the names logged, the dataloader being read, unlogged updates
        self._eval_logged: set[str] = set()
        self._eval_loader: int | None = None
        self._eval_pending = False
        self.expected_inputs = _model_inputs(self.model)
        # token ids are checked against the vocabulary once per stage (a host sync)
        self._token_range_checked: set[str] = set()
        # the EMA teacher (DESIGN.md contract 4): set by an EMATeacher callback, else None
        self.teacher: Any = None
        # detached loss terms of the last per_sample_loss call, logged by training_step
        self._logged_terms: dict[str, torch.Tensor] = {}
        # None: the sigmoid form for the sigmoid loss, the softmax form otherwise
        self.distill_kind = distill_kind or (
            "sigmoid" if isinstance(loss, SigLipLoss) else "softmax"
        )

    # ----------------------------------------------------------------- model
    def _text_modules(self) -> Iterator[nn.Module]:
        return (m for name, m in self.model.named_children() if name != "visual")

    @override
    def train(self, mode: bool = True) -> ContrastiveImageText:
        """Set train mode, keeping locked towers in eval mode (dropout, norm statistics)."""
        super().train(mode)
        if self.hparams.lock_image:
            self.model.visual.eval()
        if self.hparams.lock_text:
            for module in self._text_modules():
                module.eval()
        return self

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings ``[B, D]``."""
        return F.normalize(self.model.encode_image(image), dim=-1)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """L2-normalised text embeddings ``[B, D]`` from token ids."""
        return F.normalize(self.model.encode_text(text), dim=-1)

    @property
    def logit_scale(self) -> torch.Tensor:
        """The exponentiated logit scale."""
        return self.model.logit_scale.exp()

    @property
    def logit_bias(self) -> torch.Tensor | None:
        """The logit bias, or ``None``."""
        return getattr(self.model, "logit_bias", None)

    @override
    def forward(self, image: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised image and text embeddings."""
        return self.encode_image(image), self.encode_text(text)

    # ------------------------------------------------------------------ data
    def text_tokens(self, batch: dict[str, Any]) -> torch.Tensor:
        """Token ids of a batch: its ``text``, or its ``caption`` strings tokenized here."""
        if "text" in batch:
            return batch["text"]
        if "caption" not in batch:
            raise KeyError(
                f"A batch needs `text` (token ids) or `caption` (strings); got {sorted(batch)}."
            )
        return self.tokenizer(list(batch["caption"])).to(self.device)

    def check_batch(self, batch: Any, stage: str, text: torch.Tensor | None = None) -> None:
        """Raise a clear error for a batch the model cannot read.

        Cheap checks of ``image`` (a float tensor ``[B, C, H, W]`` with the model's channels
        and size) and of the token ids ``text`` (an integer tensor ``[B, L]`` with ``L`` the
        model's context length, or at most it for towers that take shorter captions): shapes
        and dtypes only, at every batch. The ids' range against the vocabulary (their min and
        max, which waits for the device) is checked at the first batch of each ``stage``.

        Raises:
            KeyError: for a batch without ``image``.
            TypeError: for a batch that is no dict, or an ``image`` or ``text`` that is no
                tensor or of the wrong dtype.
            ValueError: for an ``image`` or ``text`` of the wrong rank or size, or token ids
                outside ``[0, vocab_size)``.
        """
        if not isinstance(batch, Mapping):
            raise TypeError(
                f"A {stage} batch must be a dict with `image` and `text` or `caption`, got "
                f"{type(batch).__name__}."
            )
        if "image" not in batch:
            raise KeyError(f"A {stage} batch needs `image`; got keys {sorted(batch)}.")
        _check_image(batch["image"], self.expected_inputs, stage)
        if text is None:
            return
        _check_text(text, self.expected_inputs, stage, batch["image"].shape[0])
        if stage not in self._token_range_checked:
            _check_token_range(text, self.expected_inputs["vocab_size"], stage)
            self._token_range_checked.add(stage)

    # ------------------------------------------------------------------ loss
    def per_sample_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """The loss of each local pair against the global batch, ``[B]``.

        The contrastive loss, plus ``distill_weight`` times the distillation loss when
        distilling (both from :meth:`loss_terms`). ``training_step`` reduces it to its
        (weighted) mean over the global batch: override it to change the loss that is
        trained, and callbacks that score or weight samples see the change too. The
        terms are kept, detached, for logging ``train/contrastive_loss`` and
        ``train/distill_loss``.
        """
        contrastive, distill = self.loss_terms(batch)
        self._logged_terms = {"contrastive_loss": contrastive.detach()}
        if distill is None:
            return contrastive
        self._logged_terms["distill_loss"] = distill.detach()
        return contrastive + self.hparams.distill_weight * distill

    def loss_terms(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-sample contrastive and distillation losses, ``[B]`` each.

        The distillation loss is ``None`` when ``distill_weight`` is 0.
        """
        text = self.text_tokens(batch) if isinstance(batch, Mapping) else None
        self.check_batch(batch, "train" if self.training else "loss", text)
        image = batch["image"]
        image_features, text_features = self(image, text)
        contrastive = self.loss(
            image_features, text_features, self.logit_scale, self.logit_bias, reduction="none"
        )
        if not self.hparams.distill_weight:
            return contrastive, None
        return contrastive, self.distillation_loss(image, text, image_features, text_features)

    def classification_logits(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The local in-batch image-to-text logits ``[B, B]`` and their targets ``arange(B)``.

        Row ``i`` scores image ``i`` against the batch's captions:
        ``logit_scale * image_features @ text_features.T`` (plus ``logit_bias`` when the
        model has one); its target is the sample's own caption, ``i``. This is what
        :class:`~lightning_plugins.callbacks.DataDiet`'s EL2N scores and forgetting events
        read (the ``ClassificationLogits`` protocol). Local to this rank: no gathering.

        Example:
            >>> from lightning_plugins.losses import ClipLoss
            >>> module = ContrastiveImageText(ClipLoss(), init_logit_scale=2.0,
            ...                               model_name="ViT-Micro-P8-32")
            >>> logits, targets = module.classification_logits(
            ...     {"image": torch.randn(3, 3, 32, 32), "caption": ["a", "b", "c"]})
            >>> logits.shape, targets.tolist()
            (torch.Size([3, 3]), [0, 1, 2])
        """
        text = self.text_tokens(batch) if isinstance(batch, Mapping) else None
        self.check_batch(batch, "train" if self.training else "loss", text)
        image_features, text_features = self(batch["image"], text)
        logits = self.logit_scale * image_features @ text_features.T
        if self.logit_bias is not None:
            logits = logits + self.logit_bias
        return logits, torch.arange(logits.shape[0], device=logits.device)

    def distillation_loss(
        self,
        image: torch.Tensor,
        text: torch.Tensor,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
    ) -> torch.Tensor:
        """Per-sample distillation loss of the student's features towards ``self.teacher``.

        Args:
            image: the batch's images, input of the teacher.
            text: the batch's token ids, input of the teacher.
            image_features: the student's normalised image embeddings ``[B, D]``.
            text_features: the student's normalised text embeddings ``[B, D]``.
        """
        teacher = self.teacher
        if teacher is None:
            raise ValueError(_NO_TEACHER.format(self.hparams.distill_weight))
        with torch.no_grad():
            teacher_image, teacher_text = teacher(image, text)
            teacher_scale, teacher_bias = teacher.logit_scale, teacher.logit_bias
        gathered: dict[str, torch.Tensor] = {}
        if get_world_size() > 1:
            sizes = gather_sizes(image_features.shape[0], image_features.device)
            gathered = {
                "all_image_features": all_gather_with_grad(image_features, sizes),
                "all_text_features": all_gather_with_grad(text_features, sizes),
                "all_teacher_image_features": all_gather(teacher_image, sizes),
                "all_teacher_text_features": all_gather(teacher_text, sizes),
            }
        return image_text_distillation(
            image_features,
            text_features,
            teacher_image,
            teacher_text,
            self.logit_scale,
            teacher_scale,
            self.logit_bias,
            teacher_bias,
            kind=self.distill_kind,
            **gathered,
        )

    @override
    def on_fit_start(self) -> None:
        self._token_range_checked.clear()
        if self.hparams.distill_weight and self.teacher is None:
            raise ValueError(_NO_TEACHER.format(self.hparams.distill_weight))

    @override
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self._logged_terms = {}
        losses = self.per_sample_loss(batch)
        batch_size = losses.shape[0]
        # the (weighted) mean over the global batch, exact under DDP even for unequal batches
        reduce = sample_reducer(batch, losses)
        loss = reduce(losses)
        if "distill_loss" in self._logged_terms:
            for name, values in self._logged_terms.items():
                self.log(f"train/{name}", reduce(values), batch_size=batch_size)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log("train/logit_scale", self.logit_scale.detach(), batch_size=batch_size)
        return loss

    # ------------------------------------------------------------ optimizer
    def no_weight_decay(self, name: str, param: nn.Parameter) -> bool:
        """Whether a parameter is exempt from weight decay (open_clip's rule).

        Override to change the policy. Default: 0- and 1-D tensors (norm weights, biases,
        the logit scale and bias, class embeddings) and names with ``bn``, ``ln``,
        ``bias`` or ``logit_scale``.
        """
        return no_weight_decay(name, param)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters split into a decayed and a non-decayed group."""
        decay, no_decay = decay_groups(self.named_parameters(), self.no_weight_decay)
        if not decay and not no_decay:
            raise ValueError("The model has no trainable parameters; check lock_image/lock_text.")
        return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]

    @override
    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameter_groups())
        return scheduled_optimizer(
            optimizer, self.lr_scheduler_factory, self.hparams.lr_scheduler_interval, self
        )

    @override
    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Step, then clamp the logit scale to ``[0, ln max_logit_scale]``."""
        super().optimizer_step(*args, **kwargs)
        with torch.no_grad():
            self.model.logit_scale.clamp_(0.0, math.log(self.hparams.max_logit_scale))

    # ------------------------------------------------------------ evaluation
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings ``[N, D]`` of strings, tokenized here."""
        return self.encode_text(self.tokenizer(prompts).to(self.device))

    def zero_shot_classifier(self, class_names: list[str], templates: list[str]) -> torch.Tensor:
        """Normalised class embeddings ``[C, D]``: prompt embeddings averaged over templates.

        Args:
            class_names: the classes.
            templates: prompt templates, each with one ``{}``.
        """
        chunk = self.hparams.eval_chunk_size
        return zero_shot_classifier(self.encode_prompts, class_names, templates, chunk)

    def _eval_epoch_start(self) -> None:
        classes = self.zero_shot_classes
        if classes is None:
            classes = read_zero_shot_data(self.trainer.datamodule)  # checks the templates
        self.evaluation.start(classes, self.encode_prompts)
        self._eval_logged, self._eval_loader, self._eval_pending = set(), None, False

    def _eval_step(
        self, batch: dict[str, Any], stage: str, batch_idx: int = 0, dataloader_idx: int = 0
    ) -> None:
        if dataloader_idx != self._eval_loader and not self._eval_pending:
            self.evaluation.reset()  # each dataloader is evaluated on its own
        self._eval_loader = dataloader_idx
        text = None
        if isinstance(batch, Mapping) and ("text" in batch or "caption" in batch):
            text = self.text_tokens(batch)
        self.check_batch(batch, stage, text)
        image_features = self.encode_image(batch["image"])
        text_features = None
        if text is not None:
            text_features = self.encode_text(text)
        self.evaluation.update(
            image_features,
            labels=batch.get("label"),
            text_features=text_features,
            index=batch.get("index"),
        )
        self._eval_pending = True
        if batch_idx == self._eval_num_batches(stage, dataloader_idx) - 1:
            self._eval_log(stage)

    def _eval_num_batches(self, stage: str, dataloader_idx: int) -> int | float:
        """The batches this run reads from the dataloader (``inf`` where unknown)."""
        trainer = self.trainer
        if stage == "test":
            counts = trainer.num_test_batches
        elif trainer.sanity_checking:
            counts = trainer.num_sanity_val_batches
        else:
            counts = trainer.num_val_batches
        if not isinstance(counts, list | tuple):
            counts = [counts]
        return counts[dataloader_idx] if dataloader_idx < len(counts) else math.inf

    def _eval_log(self, stage: str) -> None:
        """Log the results of the dataloader just read, or of what is left at the epoch end.

        Logged in the step of a dataloader's last batch, a result belongs to that dataloader:
        ``trainer.validate`` returns it (and prints it) for that dataloader only. The names
        carry no ``/dataloader_idx_N`` suffix, so monitors and loggers see ``val/i2t_R@1``
        however many dataloaders there are; a name that an earlier dataloader of the run
        logged already gets Lightning's suffix. What is logged at the epoch end (a
        dataloader whose length is unknown) belongs, by Lightning's rule, to every
        dataloader.
        """
        self._eval_pending = False
        results = self.evaluation.compute()
        for key, value in results.items():
            name = f"{stage}/{key}"
            first = name not in self._eval_logged
            self._eval_logged.add(name)
            self.log(
                name,
                value,
                on_step=False,
                on_epoch=True,
                batch_size=1,
                sync_dist=False,
                rank_zero_only=False,
                add_dataloader_idx=not first,
            )

    def _eval_epoch_end(self, stage: str) -> None:
        if self._eval_pending:
            self._eval_log(stage)
        if not self._eval_logged and not self.trainer.sanity_checking:
            rank_zero_warn(
                f"No {stage} batch had `label` (zero-shot) or `text`/`caption` (retrieval)."
            )

    @override
    def on_validation_epoch_start(self) -> None:
        self._eval_epoch_start()

    @override
    def validation_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._eval_step(batch, "val", batch_idx, dataloader_idx)

    @override
    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    @override
    def on_test_epoch_start(self) -> None:
        self._eval_epoch_start()

    @override
    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "test", batch_idx, dataloader_idx)

    @override
    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")


def _towers(
    model_name: str | None, towers: ImageTextTowers | Mapping[str, Any] | None
) -> ImageTextTowers:
    """The towers from exactly one of ``model_name`` and ``towers`` (a dict from hparams)."""
    if model_name is not None and not isinstance(model_name, str):
        raise TypeError(
            f"`model_name` must be a string or None, got {model_name!r} "
            f"({type(model_name).__name__})."
        )
    if (model_name is None) == (towers is None):
        raise ValueError(
            "Give `model_name` (an open_clip config name) or `towers` (an ImageTextTowers), "
            f"exactly one of them; got model_name={model_name!r}, towers={towers!r}."
        )
    if towers is None:
        return ImageTextTowers(model_name=model_name)
    if isinstance(towers, Mapping):  # as saved in a checkpoint's hyperparameters
        return ImageTextTowers(**towers)
    if not isinstance(towers, ImageTextTowers):
        raise TypeError(
            f"`towers` must be an ImageTextTowers or None, got {type(towers).__name__}."
        )
    return towers


def _zero_shot_classes(
    zero_shot: ZeroShotClasses | Mapping[str, Any] | None,
) -> ZeroShotClasses | None:
    """``zero_shot`` as a ZeroShotClasses (a dict from hparams is converted)."""
    if zero_shot is None or isinstance(zero_shot, ZeroShotClasses):
        return zero_shot
    if isinstance(zero_shot, Mapping):
        return ZeroShotClasses(**zero_shot)
    raise TypeError(
        f"`zero_shot` must be a ZeroShotClasses or None, got {type(zero_shot).__name__}."
    )


def _model_inputs(model: nn.Module) -> dict[str, Any]:
    """What the open_clip ``model`` reads: image channels and size, vocabulary, context.

    ``None`` for what the model does not say or does not need (an image size for a
    convolutional tower). ``exact_context``: the text tower adds its
    whole positional embedding (open_clip's own ``CLIP``), so captions must have exactly
    ``context_length`` tokens; other towers take shorter ones.
    """
    visual = getattr(model, "visual", None)
    trunk = getattr(visual, "trunk", None)  # a timm tower
    # only towers with a positional embedding of fixed length need one image size
    fixed_size = hasattr(visual, "positional_embedding") or (
        hasattr(trunk, "pos_embed") and not getattr(trunk, "dynamic_img_size", False)
    )
    size = getattr(visual, "image_size", None) if fixed_size else None
    conv = next((m for m in visual.modules() if isinstance(m, nn.Conv2d)), None) if visual else None
    vocab_size = getattr(model, "vocab_size", None)
    return {
        "image_size": tuple(size) if isinstance(size, tuple | list) else None,
        "channels": conv.in_channels if conv is not None else None,
        "vocab_size": int(vocab_size) if vocab_size else None,
        "context_length": getattr(model, "context_length", None),
        "exact_context": isinstance(getattr(model, "positional_embedding", None), torch.Tensor),
    }


def _check_image(image: Any, inputs: dict[str, Any], stage: str) -> None:
    name = f"{stage} batch['image']"
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"`{name}` must be a tensor [B, C, H, W], got {type(image).__name__}.")
    channels, size = inputs["channels"], inputs["image_size"]
    expected = f"[B, {channels or 'C'}, {size[0] if size else 'H'}, {size[1] if size else 'W'}]"
    if image.ndim != 4:
        raise ValueError(
            f"`{name}` must be a 4-D batch of images {expected}, got shape {tuple(image.shape)}."
        )
    if not image.is_floating_point():
        raise TypeError(
            f"`{name}` must be a floating-point tensor (normalised pixels), got {image.dtype}; "
            "convert uint8 images with the datamodule's transform (e.g. ToDtype + Normalize)."
        )
    if (channels is not None and image.shape[1] != channels) or (
        size is not None and tuple(image.shape[2:]) != size
    ):
        raise ValueError(
            f"`{name}` must have shape {expected} for this model, got {tuple(image.shape)}: "
            "set the datamodule's image size and channels (or `towers.image_size`) to match."
        )


def _check_text(text: Any, inputs: dict[str, Any], stage: str, batch_size: int) -> None:
    name = f"{stage} batch['text']"
    if not isinstance(text, torch.Tensor):
        raise TypeError(f"`{name}` must be a tensor of token ids, got {type(text).__name__}.")
    if text.ndim != 2 or text.is_floating_point() or text.is_complex() or text.dtype == torch.bool:
        raise TypeError(
            f"`{name}` must be integer token ids [B, L], got {text.dtype} of shape "
            f"{tuple(text.shape)}."
        )
    if text.shape[0] != batch_size:
        raise ValueError(
            f"`{name}` holds {text.shape[0]} captions for {batch_size} images; one per image."
        )
    context = inputs["context_length"]
    if context is not None and (
        text.shape[1] != context if inputs["exact_context"] else text.shape[1] > context
    ):
        allowed = f"exactly {context}" if inputs["exact_context"] else f"at most {context}"
        raise ValueError(
            f"`{name}` has {text.shape[1]} tokens per caption, the model takes {allowed} "
            "(its `context_length`): tokenize with the module's tokenizer or set "
            "`towers.context_length`."
        )


def _check_token_range(text: torch.Tensor, vocab_size: int | None, stage: str) -> None:
    if vocab_size is None or text.numel() == 0:
        return
    low, high = int(text.min()), int(text.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(
            f"`{stage} batch['text']` holds token ids in [{low}, {high}], outside the model's "
            f"vocabulary [0, {vocab_size}): were they made by another tokenizer?"
        )
