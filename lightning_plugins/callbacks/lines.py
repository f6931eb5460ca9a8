"""LiNeS: scale the update of a fit (or of each task) per layer block, after training."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from typing_extensions import override

from lightning_plugins.callbacks.averaged_tensors import AveragedTensors
from lightning_plugins.callbacks.ema_sharding import (
    gather_dtensors,
    gather_full,
    is_dtensor,
    local_part,
    scatter_dtensors,
    scatter_full,
)
from lightning_plugins.callbacks.task_boundaries import ensure_task_boundaries
from lightning_plugins.functional._checks import (
    check_checkpoint_file,
    check_choice,
    check_float,
    check_resume_state,
    load_checkpoint,
)
from lightning_plugins.functional.lines import (
    lines_factors,
    lines_scale,
    merging_alpha,
    scale_update_,
)
from lightning_plugins.models.layer_blocks import BlockMapping, block_lists, block_positions

__all__ = ["LiNeS"]

_AT = ("fit_end", "task_end")


class LiNeS(Callback):
    """Scale the fine-tuning update per layer block (LiNeS, Wang et al., ICLR 2025).

    The callback keeps the reference weights ``theta_0`` and, at the end of the fit
    (``at="fit_end"``, in ``on_train_end``) or at the end of every task of a task stream
    (``at="task_end"``), replaces each parameter ``theta`` in place by
    ``theta_0 + lambda * (theta - theta_0)`` with the scale of its block from
    :func:`~lightning_plugins.functional.lines_scale`,
    ``lambda_l = alpha + beta * (l - 1) / (L - 1)``; parameters outside the blocks get
    ``alpha``. Blocks come from the module's structure
    (:func:`~lightning_plugins.models.block_positions`: timm ``blocks``, open_clip
    ``transformer.resblocks``, Hugging Face layer lists; each block list, such as each
    tower of a CLIP, is its own stack of ``L`` blocks) or from ``blocks``, a user mapping.

    **The reference.** The weights at fit start, or those of the checkpoint ``reference``
    (a state dict of the LightningModule, or a Lightning checkpoint's ``state_dict``,
    holding every scaled parameter). With ``at="task_end"`` each task's own update is
    scaled: after the scaling at the end of task ``t`` the reference becomes the (scaled)
    weights, where task ``t + 1`` starts (scaling the update since fit start at every task
    end would scale earlier tasks again). The task ends come from
    :class:`~lightning_plugins.callbacks.TaskBoundaries` through the
    :class:`~lightning_plugins.callbacks.task_boundaries.TaskHooks` protocol
    (``on_task_end``); the callback adds one if the trainer has none.

    **Merging.** With ``merging`` (the checkpoints of models fine-tuned from
    ``theta_0`` on each of ``T`` tasks) the module holds a merged model and ``alpha`` is
    :func:`~lightning_plugins.functional.merging_alpha`,
    ``(||sum_t tau_t||_1 / ||tau_merged||_1) / T`` with ``tau_merged = theta - theta_0``,
    computed when the scaling is applied (one summed copy on the CPU; the checkpoints are
    read one at a time). It takes files rather than the tasks of the fit because the
    updates of tasks trained one after another sum to the merged update, giving
    ``alpha = 1 / T`` whatever the training did.

    **What is scaled.** The parameters :meth:`should_scale` chooses (default: every
    floating-point parameter of the module, frozen ones too, since a module may merge
    adapters into frozen weights at a task's end; a frozen parameter that did not change
    stays bitwise equal). Buffers (BatchNorm statistics) are not scaled. Parameters
    created after fit start (fresh adapters) are not in the reference and are left alone.

    **Memory and strategies.** ``theta_0`` is kept on the CPU, never on the accelerator;
    the scaling moves one tensor at a time there. Under DDP every rank keeps the same
    reference and scales the same way (no communication). Under FSDP (``use_orig_params``)
    and ``ModelParallelStrategy`` each rank keeps and scales its own shards; checkpoints
    gather the full reference on rank 0's CPU, as :class:`EMATeacher` does (its
    :mod:`~lightning_plugins.callbacks.ema_sharding` helpers are reused), and the norms are
    summed over ranks. ``merging`` is not supported under sharding; DeepSpeed is not.

    **With EMATeacher.** LiNeS scales the live (student) weights only; an EMA average is
    not scaled. Under ``at="task_end"`` an :class:`EMATeacher` listed before the stream's
    ``TaskBoundaries`` (the usual order) updates its average with the task's last, unscaled
    weights, then LiNeS scales the live weights, and the average follows the scaled ones
    from the next update on. At fit end the average is untouched, so ``trainer.test``
    with ``validate_with="ema"`` tests the unscaled average; to scale it, export it
    and use :func:`~lightning_plugins.functional.scale_update_` with the scales of
    :attr:`last_scales`.

    **Logged.** Once per application: the scale of every block (``rank_zero_info``, and
    :attr:`last_scales`) and the L2 norms of ``tau`` over all scaled parameters before
    and after, as ``lines/tau_norm_before``, ``lines/tau_norm_after`` and ``lines/alpha``
    to the trainer's loggers. The names of :attr:`last_scales` are the block lists'
    (``"mapping"`` for a user mapping).

    **Resume.** The state holds the reference by parameter name (tensors), the number of
    applications and the settings (``alpha``, ``beta``, ``at``): a resumed fit scales
    exactly as the uninterrupted one; one with other settings is refused.

    Args:
        alpha: the scale of the first block and of parameters outside the blocks
            (``None`` only with ``merging``).
        beta: what the last block adds to ``alpha``.
        at: ``"fit_end"`` or ``"task_end"``.
        reference: a checkpoint file with ``theta_0``; ``None``: the weights at fit start.
        blocks: a mapping ``{module name or prefix: block index}`` or a function
            ``parameter name -> block index or None`` instead of the structure.
        merging: checkpoint files of the task models (see above); ``alpha`` is computed.

    Raises:
        TypeError: for an argument of the wrong type.
        ValueError: for an unknown ``at``; ``alpha`` and ``beta`` that give the first or
            the last block a negative scale; ``alpha`` given with ``merging``, or missing
            without it; a negative ``beta`` with ``merging``; a missing or unreadable
            ``reference`` or ``merging`` file. When fitting starts: a module without
            recognisable blocks and no ``blocks``, DeepSpeed, ``merging`` under a sharded
            strategy, a ``reference`` without some scaled parameter or of another shape.

    Example:
        >>> import timm
        >>> class ViT(pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.vit = timm.create_model("vit_tiny_patch16_224", img_size=32,
        ...             patch_size=8, depth=3, embed_dim=16, num_heads=2, num_classes=10)
        ...     def training_step(self, batch, batch_idx):
        ...         return self.vit(batch).logsumexp(1).mean()
        ...     def configure_optimizers(self):
        ...         return torch.optim.SGD(self.parameters(), lr=0.1)
        >>> lines = LiNeS(alpha=0.4, beta=0.6)
        >>> trainer = pl.Trainer(max_steps=2, callbacks=[lines], logger=False,
        ...     enable_checkpointing=False, enable_progress_bar=False,
        ...     enable_model_summary=False)
        >>> trainer.fit(ViT(), torch.utils.data.DataLoader(torch.randn(4, 3, 32, 32), 2))
        >>> lines.last_scales  # per block of each stack; alpha outside the blocks
        {'vit.blocks': [0.4, 0.7, 1.0]}
        >>> LiNeS(alpha=0.5, beta=-0.7)
        Traceback (most recent call last):
        ...
        ValueError: `alpha`=0.5 and `beta`=-0.7 give the last block of every stack the negative LiNeS scale alpha + beta = -0.2; both alpha and alpha + beta must be >= 0.
    """  # noqa: E501

    def __init__(
        self,
        alpha: float | None = None,
        beta: float = 0.0,
        at: str = "fit_end",
        reference: str | os.PathLike | None = None,
        blocks: BlockMapping | None = None,
        merging: Sequence[str | os.PathLike] | None = None,
    ) -> None:
        self.at = check_choice(at, "at", _AT)
        self.beta = check_float(beta, "beta")
        if merging is not None:
            if isinstance(merging, str | os.PathLike) or not isinstance(merging, Sequence):
                raise TypeError(
                    "`merging` must be None or a list of checkpoint files of the task models, "
                    f"got {merging!r} ({type(merging).__name__})."
                )
            if not merging:
                raise ValueError("`merging` must list at least one task model checkpoint, got [].")
            for index, path in enumerate(merging):
                check_checkpoint_file(path, f"merging[{index}]")
            if alpha is not None:
                raise ValueError(
                    f"`alpha`={alpha!r} cannot be given with `merging`: LiNeS computes it from "
                    "the norms of the task vectors. Leave `alpha=None`."
                )
            if self.beta < 0:
                raise ValueError(
                    f"`beta` must be >= 0 with `merging` (alpha is computed and may be near "
                    f"0), got {self.beta!r}."
                )
            merging = [os.fspath(path) for path in merging]
        else:
            if alpha is None:
                raise ValueError("`alpha` must be a number (it may be None only with `merging`).")
            alpha = check_float(alpha, "alpha")
            _check_scales(alpha, self.beta)
        self.alpha = alpha
        self.merging = merging
        if reference is not None:
            check_checkpoint_file(reference, "reference")
            reference = os.fspath(reference)
        self.reference = reference
        if blocks is not None and not (isinstance(blocks, Mapping) or callable(blocks)):
            raise TypeError(
                "`blocks` must be None, a dict {module name or prefix: block index} or a "
                f"function parameter name -> block index, got {blocks!r} "
                f"({type(blocks).__name__})."
            )
        self.blocks = blocks
        self.applied = 0
        self.last_scales: dict[str, list[float]] = {}
        self._store: AveragedTensors | None = None  # theta_0 on the CPU
        self._positions: list[tuple[int, int] | None] = []  # (block, depth) per parameter
        self._stacks: list[str] = []  # the block list of each parameter
        self._pending: dict[str, Any] | None = None  # a checkpoint's state, before the store
        self._trainer: pl.Trainer | None = None

    # ----------------------------------------------------------------- policy
    def should_scale(self, name: str, parameter: nn.Parameter) -> bool:
        """Whether the parameter ``name`` is scaled (and its reference kept).

        Override to choose; default: every floating-point parameter.
        """
        return parameter.is_floating_point()

    def _scales(self, alpha: float) -> dict[str, list[float]]:
        """The scale of every block of every stack (a block list's name, or ``"mapping"``)."""
        stacks: dict[str, list[float]] = {}
        for stack, position in zip(self._stacks, self._positions, strict=True):
            if position is not None and stack not in stacks:
                stacks[stack] = [
                    round(s, 6) for s in lines_scale(position[1], alpha, self.beta).tolist()
                ]
        return stacks

    # ------------------------------------------------------------------ state
    @property
    def sharded(self) -> bool:
        """Whether the reference is kept as per-rank shards (FSDP)."""
        return self._store is not None and self._store.sharded

    def _config(self) -> dict[str, Any]:
        alpha = None if self.alpha is None else float(self.alpha)
        return {"kind": "LiNeS", "alpha": alpha, "beta": float(self.beta), "at": self.at}

    @override
    def state_dict(self) -> dict[str, Any]:
        if self._store is None and self._pending is not None:
            return self._pending
        store = self._store
        if store is None:
            reference = {}
        elif store.dtensors:
            reference = gather_dtensors(store.keys, store.tensors)
        elif store.sharded:
            reference = gather_full(self._trainer.strategy.model, store.keys, store.swapped_in)
        else:
            reference = {key: t.clone() for key, t in zip(store.keys, store.tensors, strict=True)}
        return {"config": self._config(), "applied": self.applied, "reference": reference}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_resume_state(
            state_dict,
            "LiNeS",
            self._config(),
            ["applied", "reference"],
            advice="Resume with the same `alpha`, `beta` and `at`.",
        )
        self.applied = int(state_dict["applied"])
        self._pending = state_dict
        module = getattr(self._trainer, "lightning_module", None)
        if self._store is not None and module in (None, self._store.module):
            self._apply_pending()  # restored after on_fit_start (sharded strategies)

    def _apply_pending(self) -> None:
        state, self._pending = self._pending, None
        if state["reference"]:
            self._load(state["reference"], "the checkpoint's LiNeS reference")

    def _load(self, full: Mapping[str, torch.Tensor], what: str) -> None:
        """Set the reference from full tensors by name (rank 0's used under sharding)."""
        store = self._store
        missing = [key for key in store.keys if key not in full]
        if missing:
            raise ValueError(
                f"{what} lacks {len(missing)} of the {len(store.keys)} scaled parameters, e.g. "
                f"{missing[:5]}; it must hold the LightningModule's state dict (as "
                "`pl_module.state_dict()` names it)."
            )
        full = {key: full[key] for key in store.keys}
        if store.dtensors:
            scatter_dtensors(store.keys, store.tensors, full)
        elif store.sharded:
            model = self._trainer.strategy.model
            scatter_full(model, full, lambda: store.swapped_in(write_back=True))
        else:
            store.load(full)

    # ------------------------------------------------------------------ setup
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer
        if stage == "fit" and self.at == "task_end":
            ensure_task_boundaries(trainer)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if isinstance(trainer.strategy, DeepSpeedStrategy):
            raise ValueError("LiNeS does not support DeepSpeed; use FSDP or DDP.")
        self._trainer = trainer
        named = [(n, p) for n, p in pl_module.named_parameters() if self.should_scale(n, p)]
        if not named:
            raise ValueError(f"LiNeS found no parameters to scale in {type(pl_module).__name__}.")
        positions = block_positions(pl_module, self.blocks)
        lists = [] if self.blocks is not None else list(block_lists(pl_module))
        dtensors = any(is_dtensor(p) for _, p in named)
        sharded = dtensors or isinstance(trainer.strategy, FSDPStrategy | ModelParallelStrategy)
        if sharded and self.merging is not None:
            raise ValueError(
                "LiNeS `merging` is not supported under sharded strategies (FSDP, "
                "ModelParallelStrategy): merge and scale on one process or under DDP."
            )
        paths = [name for name, _ in named]
        if any(path.endswith("_flat_param") for path in paths):
            raise ValueError(
                "LiNeS needs the original parameters under FSDP: use "
                "FSDPStrategy(use_orig_params=True), its default."
            )
        self._store = AveragedTensors(pl_module, paths, torch.device("cpu"), None, sharded)
        self._positions = [positions[path] for path in paths]
        self._stacks = [
            next((name for name in lists if path.startswith(name + ".")), "mapping")
            for path in paths
        ]
        if self._pending is not None:
            self._apply_pending()
        elif self.reference is not None:
            state = load_checkpoint(self.reference, "reference")
            if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
                state = state["state_dict"]
            self._load(state, f"`reference`={self.reference!r}")
        if self.alpha is not None:
            scales = self._scales(self.alpha)
            rank_zero_info(f"LiNeS: scales per block {scales}, alpha={self.alpha} elsewhere.")
        rank_zero_info(
            f"LiNeS: keeping the reference of {len(paths)} parameters on the CPU "
            f"({self._store.nbytes / 2**20:.1f} MiB{' per rank' if sharded else ''})."
        )

    # ------------------------------------------------------------------ apply
    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at == "fit_end":
            self.apply(trainer)

    def on_task_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: int) -> None:
        """Scale task ``task``'s update, then make the scaled weights the next reference."""
        if self.at != "task_end":
            return
        self.apply(trainer, f"task {task}")
        with torch.no_grad():
            for reference, live in zip(self._store.tensors, self._store.live(), strict=True):
                local_part(reference).copy_(local_part(live))

    @torch.no_grad()
    def apply(self, trainer: pl.Trainer, where: str = "fit end") -> None:
        """Replace every scaled parameter by ``theta_0 + lambda * (theta - theta_0)`` now.

        Every rank must call it (it sums norms over ranks under sharding).
        """
        store = self._store
        if store is None:
            raise RuntimeError(
                "LiNeS.apply needs a fitted module: the reference is taken at fit start."
            )
        live = [local_part(t) for t in store.live()]
        reference = [local_part(t) for t in store.tensors]
        alpha = self.alpha if self.merging is None else self._merging_alpha(live, reference)
        factors = lines_factors(self._positions, alpha, self.beta)
        before = self._tau_norm(live, reference)
        scale_update_(live, reference, factors)
        after = self._tau_norm(live, reference)
        self.applied += 1
        paths = store.paths
        self.last_scales = self._scales(alpha)
        rank_zero_info(
            f"LiNeS at {where}: scaled the update of {len(paths)} parameters; scales per block "
            f"{self.last_scales}, alpha={alpha:.4g} elsewhere; ||tau||_2 {before:.4g} -> "
            f"{after:.4g}."
        )
        metrics = {"lines/tau_norm_before": before, "lines/tau_norm_after": after}
        metrics["lines/alpha"] = float(alpha)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def _tau_norm(self, live: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
        total = torch.zeros((), dtype=torch.float64)
        for theta, theta_0 in zip(live, reference, strict=True):
            tau = theta.detach().to("cpu", torch.float64) - theta_0.to(torch.float64)
            total += tau.square().sum()
        if self.sharded and torch.distributed.is_initialized():
            device = self._trainer.strategy.root_device
            total = total.to(device)
            torch.distributed.all_reduce(total)
        return float(total.sqrt())

    def _merging_alpha(self, live: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
        """``merging_alpha`` of the task models in ``merging`` and the module's update."""
        keys = self._store.keys
        summed = [torch.zeros_like(t, dtype=torch.float64) for t in reference]
        for index, path in enumerate(self.merging):
            state = load_checkpoint(path, f"merging[{index}]")
            if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
                state = state["state_dict"]
            missing = [key for key in keys if key not in state]
            if missing:
                raise ValueError(
                    f"`merging[{index}]`={path!r} lacks {len(missing)} scaled parameters, e.g. "
                    f"{missing[:5]}."
                )
            for total, key, theta_0 in zip(summed, keys, reference, strict=True):
                total += state[key].to(torch.float64) - theta_0.to(torch.float64)
            del state
        merged = [
            theta.detach().to("cpu", torch.float64) - theta_0.to(torch.float64)
            for theta, theta_0 in zip(live, reference, strict=True)
        ]
        return merging_alpha([summed], merged, num_tasks=len(self.merging))


def _check_scales(alpha: float, beta: float) -> None:
    """Raise ``ValueError`` if some block of some stack would get a negative scale."""
    if alpha < 0:
        raise ValueError(
            f"`alpha`={alpha!r} gives the first block of every stack (and the parameters "
            "outside the blocks) a negative LiNeS scale; alpha must be >= 0."
        )
    if alpha + beta < 0:
        raise ValueError(
            f"`alpha`={alpha!r} and `beta`={beta!r} give the last block of every stack the "
            f"negative LiNeS scale alpha + beta = {alpha + beta:.4g}; both alpha and "
            "alpha + beta must be >= 0."
        )
