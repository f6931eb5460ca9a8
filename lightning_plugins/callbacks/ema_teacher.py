"""EMATeacher: an exponential moving average of the trained weights, used as a teacher."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from typing_extensions import override

from lightning_plugins.callbacks.averaged_tensors import AveragedTensors, select_paths
from lightning_plugins.callbacks.ema_sharding import (
    full_state_dict,
    gather_dtensors,
    gather_full,
    is_dtensor,
    scatter_dtensors,
    scatter_full,
)
from lightning_plugins.callbacks.teacher_view import TeacherView
from lightning_plugins.functional._checks import check_bool, check_choice, check_float, check_int
from lightning_plugins.functional.schedules import SCHEDULES, resolve_schedule

__all__ = ["EMATeacher", "TeacherView"]

_VALIDATE_WITH = ("ema", "model", "both")
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
_DTYPES["float16"] = torch.float16
# the argument each named schedule takes the callback's `decay` as
_DECAY_ARGUMENT = {"constant": "value", "cosine": "start_value", "warmup": "decay"}


class EMATeacher(Callback):
    """Keep an exponential moving average (EMA) of the trained weights, and use it as a teacher.

    After every optimizer step that :meth:`should_update` chooses (it is asked once per
    optimizer step, also under gradient accumulation) the average moves towards the live
    weights, ``ema = d * ema + (1 - d) * live``, with the fused
    :func:`~lightning_plugins.functional.ema_update_` (non-float buffers are copied). The
    first update copies the live weights, so a delayed start (``start_step``) averages
    from the weights it starts at, not from the initialisation. The decay ``d`` is
    :meth:`decay_at`: the ``schedule`` at ``s = step - start_step - 1`` (optimizer steps
    since the average started, from 0):

    - ``"constant"``: ``d = decay``;
    - ``"warmup"``: timm's ``1 - (1 + s / gamma) ** -power`` clamped to
      ``[min_decay, decay]`` (``schedule_kwargs`` may set ``gamma``, ``power``,
      ``min_decay``);
    - ``"cosine"``: from ``decay`` to ``end_value`` (default 1) over ``max_steps`` steps,
      the teacher momentum of BYOL and DINO; ``max_steps`` defaults to the run's optimizer
      steps after ``start_step``;
    - or any ``step -> float`` function.

    **What is averaged.** The LightningModule's trainable parameters (``requires_grad``),
    keyed by name, and (with ``include_buffers``) the persistent buffers of every direct
    child of the LightningModule that holds a trainable parameter (BatchNorm statistics
    of the network). Frozen parameters, losses, metrics, non-persistent buffers (constant
    masks) and the LightningModule's own buffers are not: the teacher shares them with the
    live module. The optimizer state is never copied. A buffer registered empty and sized
    at the first forward is adopted at the first update after it got its size. The
    mechanics (selection, update, swap) are :class:`AveragedTensors`'.

    **Memory and precision.** One copy of the averaged tensors, on the module's device or
    on ``device`` (``"cpu"`` keeps the accelerator free, at the cost of a transfer per
    update), in the weights' dtype or in ``dtype``: with low-precision weights
    (``precision="bf16-true"``) ``dtype="float32"`` keeps the average in float32, since a
    bf16 average with decay 0.999 cannot move by ``0.001 * (live - ema)`` for most entries.
    Under DDP every rank keeps its own copy and no communication happens; the averaged
    parameters are equal on all ranks because the live ones are, and each rank averages
    the buffers that its own module holds after its steps (validation never writes into
    the average: DDP's broadcast of rank 0's buffers at a forward stays in the module).
    Under FSDP (``FSDPStrategy`` with ``use_orig_params=True``, its default, or
    ``ModelParallelStrategy``) every rank averages its own shards of the parameters: no
    rank ever holds a full copy while training. Checkpoints and :meth:`export` gather the
    full average on rank 0's CPU (:mod:`~lightning_plugins.callbacks.ema_sharding`), as a
    full-state-dict checkpoint of the model does. DeepSpeed is not supported, nor ``dtype``
    with ``FSDPStrategy``'s flat parameters (it works with ``fully_shard``'s DTensors).

    **The teacher.** The module gets an attribute ``name`` (default ``pl_module.teacher``,
    DESIGN.md contract 4): a :class:`TeacherView` that runs the module's ``forward`` and
    methods (``self.teacher.encode_image(x)``) with the averaged tensors in place of the
    live ones, in eval mode and without autograd. It is not a second copy of the network
    (``torch.func.functional_call``). Until the first update it runs the live weights.
    Under sharded strategies it cannot run (the shards are gathered by the strategy's own
    forward); validation and export still work.

    **Validation, test, predict.** ``validate_with="ema"`` validates the averaged weights:
    they are swapped into the module for the validation loop and swapped back, bitwise
    exactly, when it ends. Until the average has been updated once (a delayed start) the
    live weights are validated, never a copy that was not updated. ``"model"`` validates
    the live weights. ``"both"`` validates the live weights as usual and, before them in
    each validation run (not the sanity check), the averaged ones: the module's
    ``on_validation_epoch_start``, then for every batch of the same validation loaders
    (moved by ``trainer.strategy.batch_to_device``) ``trainer.strategy.validation_step`` —
    the strategy's precision context (autocast of ``"bf16-mixed"``) and forward
    redirection (DDP, FSDP) included — and ``on_validation_epoch_end``, with every name
    the module logs meanwhile suffixed by ``"_" + name`` (``val/loss_teacher``; Lightning
    has no public way to rename what a module logs, so the module's ``log`` is shadowed
    for this pass only); it doubles the validation time. The pass reads the loaders
    itself, not through the validation loop (whose hooks would run twice for every other
    callback): a loader with persistent workers, whose one iterator the loop holds, is
    read through a fresh loader over the same dataset and batch sampler.
    ``trainer.test`` and ``trainer.predict`` use the average unless
    ``validate_with="model"``. So do ``trainer.validate``, ``test`` and ``predict`` in a
    new Trainer with ``ckpt_path``: the average comes from the checkpoint's callback
    state (Lightning issue #20545).

    **Checkpoints.** The module's ``state_dict`` in a checkpoint always holds the live
    weights, also for a checkpoint written during validation while the average is swapped
    in (under sharded strategies such a checkpoint raises an error instead: save in
    ``on_validation_end`` or later, as ``ModelCheckpoint`` does). The callback's state
    holds the averaged tensors by name, the number of updates and the step of the last
    one: tensors and integers only, so the checkpoint loads with
    ``torch.load(weights_only=True)``, and a resumed run continues exactly. Several
    instances (say two decays) coexist when their ``name`` differs. :meth:`export` writes
    the averaged weights as a plain state dict of the module; from a checkpoint,
    :func:`~lightning_plugins.callbacks.load_teacher_weights` gives the same dict (and
    ``lightning-plugins export-teacher CKPT OUT`` writes it), without the module.

    The callback has 18 attributes, and about 420 lines below this docstring (method
    docstrings included), because it keeps
    its ten arguments as given (LightningCLI and ``state_key`` read them) besides its state
    (the average, the counters, the resolved schedule, a checkpoint's state waiting for the
    module, the Trainer), and has hooks for fit, validate, test and predict; the mechanics
    live in :class:`AveragedTensors` and :mod:`~lightning_plugins.callbacks.ema_sharding`.

    Args:
        decay: the decay, in ``[0, 1)``: of ``"constant"``, the largest of ``"warmup"``,
            the start of ``"cosine"``.
        schedule: ``"constant"``, ``"warmup"``, ``"cosine"``, or a ``step -> float``
            function giving the decay.
        schedule_kwargs: further arguments of the named schedule (``gamma``, ``power``,
            ``min_decay`` of ``"warmup"``; ``max_steps``, ``end_value`` of ``"cosine"``).
        update_every: update after every n-th optimizer step.
        start_step: optimizer steps before the first update.
        device: where to keep the average; ``None``: with the weights.
        include_buffers: also average the buffers of the trained submodules.
        validate_with: ``"ema"``, ``"model"`` or ``"both"`` (see above).
        name: the module attribute that exposes the teacher; part of :attr:`state_key`
            and of the suffix of ``"both"``.
        dtype: ``"float32"``, ``"float64"``, ``"bfloat16"``, ``"float16"`` (or the torch
            dtype) of the averaged floating-point tensors; ``None``: the weights' own.
        restart_at_task_end: on a task stream, set the average to the live weights at
            every task end (the ``on_task_end`` hook of
            :class:`~lightning_plugins.callbacks.task_boundaries.TaskHooks`, which runs
            after the module's own). Use it with modules that change their weights there,
            such as ``LoRAContinual``, which folds its adapters into the base weights and
            resets them: an average across that fold would count the task's update twice.

    Raises:
        TypeError: for an argument of the wrong type.
        ValueError: for ``decay`` outside ``[0, 1)``, an unknown schedule, a schedule
            argument the schedule does not take or that ``decay`` sets, ``update_every``
            below 1, a negative ``start_step``, an unknown device (or a CUDA device
            without CUDA), ``validate_with`` or ``dtype``, or a ``name`` that is not a
            public Python identifier; when fitting starts, for a module without trainable
            parameters, a module that already has an attribute ``name``, DeepSpeed, FSDP
            without ``use_orig_params``, or ``dtype`` with ``FSDPStrategy``; during
            fitting, for a module that sets an attribute ``name`` itself (checked at every
            training batch and around validation); and when restoring a checkpoint that
            holds the average of an EMATeacher of another ``name`` which no attached
            EMATeacher restores, and none for this one (the message names both names).

    Example:
        >>> ema = EMATeacher(decay=0.9999, schedule="warmup", update_every=2, start_step=3)
        >>> [step for step in range(1, 11) if ema.should_update(None, step)]
        [4, 6, 8, 10]
        >>> ema.state_key
        "EMATeacher{'name': 'teacher'}"
        >>> ema.state_dict()
        {'num_updates': 0, 'last_update_step': 0, 'ema': {}}
        >>> callbacks = [ema, EMATeacher(decay=0.99, name="fast")]  # two teachers
        >>> trainer = pl.Trainer(callbacks=callbacks, logger=False)
    """

    def __init__(
        self,
        decay: float = 0.999,
        schedule: str | Callable[[int], float] = "constant",
        schedule_kwargs: dict[str, Any] | None = None,
        update_every: int = 1,
        start_step: int = 0,
        device: str | torch.device | None = None,
        include_buffers: bool = True,
        validate_with: str = "ema",
        name: str = "teacher",
        dtype: str | torch.dtype | None = None,
        restart_at_task_end: bool = False,
    ) -> None:
        super().__init__()
        self.decay = check_float(decay, "decay", low=0, high=1, high_open=True)
        self.restart_at_task_end = check_bool(restart_at_task_end, "restart_at_task_end")
        if schedule_kwargs is not None and not isinstance(schedule_kwargs, Mapping):
            raise TypeError(
                "`schedule_kwargs` must be a dict of the schedule's arguments or None, got "
                f"{schedule_kwargs!r} ({type(schedule_kwargs).__name__})."
            )
        self.schedule_kwargs = _check_schedule(schedule, dict(schedule_kwargs or {}))
        self.schedule = schedule
        self.update_every = check_int(update_every, "update_every", low=1)
        self.start_step = check_int(start_step, "start_step", low=0)
        self.device = _check_device(device)
        self.include_buffers = check_bool(include_buffers, "include_buffers")
        self.validate_with = check_choice(validate_with, "validate_with", _VALIDATE_WITH)
        if not isinstance(name, str):
            raise TypeError(f"`name` must be a string, got {name!r} ({type(name).__name__}).")
        if not name.isidentifier() or name.startswith("_"):
            raise ValueError(
                f"`name` must be a Python identifier not starting with '_', got {name!r}."
            )
        self.name = name
        self.dtype = _check_dtype(dtype)
        self.num_updates = 0
        self.last_update_step = 0
        self._decay_at: Callable[[int], float] | None = schedule if callable(schedule) else None
        self._average: AveragedTensors | None = None
        self._pending: dict[str, Any] | None = None  # a checkpoint's state, before the average
        self._trainer: pl.Trainer | None = None
        self._view: TeacherView | None = None  # what the module's attribute `name` holds
        self._asked_step = -1  # the optimizer step `should_update` was last asked about

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name)

    # ----------------------------------------------------------------- policy
    def should_update(self, trainer: pl.Trainer, step: int) -> bool:
        """Whether to update the average after optimizer step ``step`` (1 for the first step).

        Called once per optimizer step (on the last batch of the step under gradient
        accumulation); the answer must be the same on every rank. Default: every
        ``update_every``-th step after the first ``start_step`` steps. Override for
        another policy.
        """
        return step > self.start_step and step % self.update_every == 0

    def decay_at(self, step: int) -> float:
        """The decay of the update after optimizer step ``step`` (from the schedule)."""
        if self._decay_at is None:
            raise RuntimeError("The decay schedule is resolved when fitting starts.")
        decay = float(self._decay_at(max(step - self.start_step - 1, 0)))
        if not 0.0 <= decay <= 1.0:
            raise ValueError(
                f"The decay schedule gave {decay} at step {step}; it must lie in [0, 1]."
            )
        return decay

    # ------------------------------------------------------------------ state
    @property
    def updated(self) -> bool:
        """Whether the average has been updated at least once."""
        return self.num_updates > 0

    @property
    def keys(self) -> list[str]:
        """The names (as in the module's ``state_dict``) of the averaged tensors."""
        return list(self._average.keys) if self._average else []

    @property
    def swapped_in(self) -> bool:
        """Whether the module holds the averaged weights now (during validation)."""
        return self._average is not None and self._average.swapped

    @property
    def sharded(self) -> bool:
        """Whether the average is kept as per-rank shards (FSDP)."""
        return self._average is not None and self._average.sharded

    def named_averages(self) -> Iterator[tuple[str, torch.Tensor]]:
        """``(attribute path in the module, averaged tensor in the live tensor's dtype)``."""
        if self._average is None:
            return iter(())
        average = self._average
        values = zip(average.paths, average.averages(), average.live(), strict=True)
        return ((path, ema.to(live.dtype)) for path, ema, live in values)

    def averaged_weights(self) -> contextlib.AbstractContextManager[None]:
        """Within the block the module holds the averaged weights (no-op once swapped in)."""
        if self._average is None:
            return contextlib.nullcontext()
        return self._average.swapped_in()

    @override
    def state_dict(self) -> dict[str, Any]:
        if self._average is None and self._pending is not None:
            return self._pending
        if self._average is None:
            ema = {}
        elif self._average.dtensors:
            ema = gather_dtensors(self._average.keys, self._average.averages())
        elif self._average.sharded:
            model = self._trainer.strategy.model
            ema = gather_full(model, self._average.keys, self._average.swapped_in)
        else:
            values = zip(self._average.keys, self._average.averages(), strict=True)
            ema = {key: value.detach().clone() for key, value in values}
        return {
            "num_updates": self.num_updates,
            "last_update_step": self.last_update_step,
            "ema": ema,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.num_updates = int(state_dict["num_updates"])
        self.last_update_step = int(state_dict["last_update_step"])
        self._pending = state_dict  # applied to the module's average now, or once it exists
        module = getattr(self._trainer, "lightning_module", None)
        if self._average is not None and module in (None, self._average.module):
            self._apply_pending()  # restored after on_fit_start (sharded strategies)

    def _apply_pending(self) -> None:
        state, self._pending = self._pending, None
        if not state["ema"] and not state["num_updates"]:
            return
        if self._average.dtensors:
            scatter_dtensors(self._average.keys, self._average.averages(), state["ema"])
        elif self._average.sharded:
            model = self._trainer.strategy.model
            # the loaded values land in the module's tensors: keep them as the average
            scatter_full(model, state["ema"], lambda: self._average.swapped_in(write_back=True))
        else:
            self._average.load(state["ema"])

    # ------------------------------------------------------------------ setup
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if isinstance(trainer.strategy, DeepSpeedStrategy):
            raise ValueError("EMATeacher does not support DeepSpeed; use FSDP or DDP.")
        self._trainer = trainer
        self._attach(pl_module, new_run=self._pending is None)
        if self._decay_at is None:
            self._decay_at = _resolve_schedule(self, trainer)

    def _attach(self, pl_module: pl.LightningModule, new_run: bool = False) -> None:
        """Average ``pl_module`` (unless it is already), apply a checkpoint's state, expose it."""
        current = getattr(pl_module, self.name, None)
        if current is not None and not isinstance(current, TeacherView):
            raise ValueError(
                f"The module already has an attribute `{self.name}` ({type(current).__name__}); "
                f"give EMATeacher another `name`."
            )
        if self._average is None or self._average.module is not pl_module:
            self._create(pl_module, new_run)
        if self._pending is not None:
            self._apply_pending()
        # a plain attribute, not a submodule: the view is no nn.Module
        self._view = TeacherView(self, pl_module)
        setattr(pl_module, self.name, self._view)

    def _check_view(self, pl_module: pl.LightningModule) -> None:
        """Raise ``ValueError`` if the module has replaced the teacher attribute ``name``.

        A module that sets an attribute of this name after fitting started (say lazily at
        its first validation) would silently lose the teacher, or use its own object as one.
        """
        if self._view is None or self._average is None or self._average.module is not pl_module:
            return
        current = getattr(pl_module, self.name, None)
        if current is not self._view:
            raise ValueError(
                f"The module's attribute `{self.name}` was replaced by "
                f"{type(current).__name__} while EMATeacher exposes its teacher there: the "
                f"module uses the name for something else. Give EMATeacher another `name`."
            )

    def _create(self, pl_module: pl.LightningModule, new_run: bool) -> None:
        strategy = self._trainer.strategy if self._trainer is not None else None
        dtensors = any(is_dtensor(p) for p in pl_module.parameters())
        sharded = dtensors or isinstance(strategy, FSDPStrategy | ModelParallelStrategy)
        if sharded and not dtensors and self.dtype is not None:
            raise ValueError(
                "EMATeacher's `dtype` needs DTensor shards under sharded strategies "
                "(fully_shard, ModelParallelStrategy), not FSDPStrategy's flat parameters."
            )
        paths = select_paths(pl_module, self.include_buffers)
        if not any(p.requires_grad for p in pl_module.parameters()):
            raise ValueError(
                f"EMATeacher found no trainable parameters in {type(pl_module).__name__}: "
                "nothing to average (are all parameters frozen?)."
            )
        if any(path.endswith("_flat_param") for path in paths):
            raise ValueError(
                "EMATeacher needs the original parameters under FSDP: use "
                "FSDPStrategy(use_orig_params=True), its default."
            )
        if new_run:  # a new module starts a new average
            self.num_updates = self.last_update_step = 0
        self._average = AveragedTensors(pl_module, paths, self.device, self.dtype, sharded)
        rank_zero_info(
            f"EMATeacher `{self.name}`: averaging {len(paths)} tensors "
            f"({self._average.nbytes / 2**20:.1f} MiB{' per rank' if sharded else ''})."
        )

    # --------------------------------------------------------------- training
    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._asked_step = trainer.global_step  # restored by now when resuming
        self._check_view(pl_module)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._check_view(pl_module)

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._check_view(pl_module)
        step = trainer.global_step
        # once per optimizer step: the first batch end after it (under gradient
        # accumulation the batches before the step share the previous step's number)
        if step == self._asked_step:
            return
        self._asked_step = step
        if self.should_update(trainer, step):
            self.update(step)

    def on_task_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, task: int) -> None:
        """With ``restart_at_task_end``, the average becomes the live weights (TaskHooks)."""
        if self.restart_at_task_end and self._average is not None:
            self._average.update(0.0)  # decay 0: an exact copy of the live weights

    def update(self, step: int) -> None:
        """Update the average with the live weights after optimizer step ``step``."""
        if self._average is None:
            raise RuntimeError("EMATeacher.update needs a module: it is attached at fit start.")
        if self._average.swapped:
            raise RuntimeError("EMATeacher cannot update while the average is swapped in.")
        # the first update copies the live weights (decay 0 is an exact copy)
        self._average.update(self.decay_at(step) if self.num_updates else 0.0)
        self.num_updates += 1
        self.last_update_step = step

    # ------------------------------------------- validation, test and predict
    def _uses_average(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        """Whether this evaluation runs the average (attaching one from a checkpoint)."""
        if self.validate_with == "model":
            return False
        if trainer.state.fn != TrainerFn.FITTING and self._pending is not None:
            self._attach(pl_module)  # validate/test/predict from a checkpoint
        if self._average is None or self._average.module is not pl_module:
            return False
        if not self.updated:
            if not trainer.sanity_checking:
                rank_zero_info(
                    f"EMATeacher `{self.name}`: the average has not been updated yet "
                    f"(start_step={self.start_step}); evaluating the live weights only."
                )
            return False
        return True

    def _swap_in(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._uses_average(trainer, pl_module):
            self._average.swap_in()

    def _swap_out(self) -> None:
        if self._average is not None:
            self._average.swap_out()

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_view(pl_module)
        if self.validate_with == "ema":
            self._swap_in(trainer, pl_module)

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (
            self.validate_with == "both"
            and not trainer.sanity_checking
            and self._uses_average(trainer, pl_module)
        ):
            with self._average.swapped_in(), _suffixed_log(pl_module, f"_{self.name}"):
                _validate(trainer, pl_module)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_out()
        self._check_view(pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_view(pl_module)

    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_in(trainer, pl_module)

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_out()

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_in(trainer, pl_module)

    @override
    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_out()

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._swap_out()

    # ----------------------------------------------------------- checkpoints
    @override
    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Refuse a checkpoint whose EMA average no attached EMATeacher would restore.

        Lightning only warns generically about callback states nobody claims; an EMA
        average saved under another ``name`` would be dropped and a fresh one started.
        """
        states = checkpoint.get("callbacks") or {}
        if self.state_key in states:
            return
        claimed = {cb.state_key for cb in trainer.callbacks if isinstance(cb, EMATeacher)}
        orphans = [
            key
            for key, state in states.items()
            if key not in claimed and isinstance(key, str) and _is_ema_state(state)
        ]
        if orphans:
            names = [_name_in_state_key(key) for key in orphans]
            raise ValueError(
                f"The checkpoint holds the EMA average of {', '.join(orphans)} (name "
                f"{' or '.join(repr(n) for n in names)}), which no attached EMATeacher "
                f"restores, and none for this EMATeacher (name={self.name!r}): resuming would "
                f"throw the saved average away. Give EMATeacher name={names[0]!r} to continue "
                "it, or delete its entry from checkpoint['callbacks'] to start a new average."
            )

    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if not self.swapped_in:
            return
        # written while the average is swapped in (during validation): the module's
        # state dict holds the average; put the live weights back
        if self.sharded:
            raise RuntimeError(
                "A checkpoint was written during validation while EMATeacher had the average "
                "swapped in; under sharded strategies its live weights cannot be restored. "
                "Save in `on_validation_end` or later (ModelCheckpoint does), or use "
                "validate_with='model'."
            )
        self._average.put_into(checkpoint.get("state_dict", {}), self._average.live_values())

    # ----------------------------------------------------------------- export
    def export(self, path: str | os.PathLike) -> None:
        """Write the averaged weights as a plain state dict of the module (rank 0 writes).

        The file holds the module's full ``state_dict`` with the averaged tensors (in the
        average's dtype) in place of the live ones, on the CPU; load it with
        ``module.load_state_dict(torch.load(path, weights_only=True))``. Under DDP or FSDP
        every rank must call it.

        Raises:
            TypeError: for a ``path`` that is no string or path.
            RuntimeError: before fitting (there is no average yet).
        """
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"`path` must be a file path, got {path!r} ({type(path).__name__}).")
        average = self._average
        if average is None:
            raise RuntimeError("EMATeacher.export needs a fitted module: call it after fitting.")
        if not self.updated:
            rank_zero_warn(
                f"EMATeacher `{self.name}` was never updated: exporting the live weights."
            )
        trainer = self._trainer
        if self.sharded:  # the live weights, then the averaged ones, gathered on rank 0
            state = full_state_dict(trainer.strategy.model)
            if self.updated:
                state.update(self.state_dict()["ema"])
        else:
            state = {k: v.detach().cpu().clone() for k, v in average.module.state_dict().items()}
            if self.updated:
                average.put_into(state, average.averages())
        if trainer is None or trainer.is_global_zero:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            torch.save(state, path)
        if trainer is not None:
            trainer.strategy.barrier("EMATeacher.export")


@contextlib.contextmanager
def _suffixed_log(pl_module: pl.LightningModule, suffix: str) -> Iterator[None]:
    """Within the block every name ``pl_module`` logs gets ``suffix`` (``val/loss_teacher``).

    Lightning has no public way to rename what a module logs, so the bound ``log`` is
    shadowed by an instance attribute for the block only, and removed afterwards.
    """
    log = pl_module.log

    @functools.wraps(log)
    def log_with_suffix(name: str, *args: Any, **kwargs: Any) -> None:
        log(name + suffix, *args, **kwargs)

    pl_module.log = log_with_suffix
    try:
        yield
    finally:
        del pl_module.log


def _validate(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
    """One validation epoch of the module over the trainer's validation loaders.

    Each step goes through the strategy (its precision context and forward redirection),
    each batch through the precision plugin and ``strategy.batch_to_device``, as in the loop.
    """
    loaders = trainer.val_dataloaders
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    elif not isinstance(loaders, list | tuple):
        loaders = [loaders]
    loaders = [_fresh_if_persistent(loader) for loader in loaders]
    pl_module.on_validation_epoch_start()
    for index, loader in enumerate(loaders):
        for batch_idx, batch in enumerate(loader):
            if batch_idx >= trainer.num_val_batches[index]:
                break
            batch = trainer.precision_plugin.convert_input(batch)
            batch = trainer.strategy.batch_to_device(batch, dataloader_idx=index)
            extra = (index,) if len(loaders) > 1 else ()
            trainer.strategy.validation_step(batch, batch_idx, *extra)
    pl_module.on_validation_epoch_end()


def _fresh_if_persistent(loader: Any) -> Any:
    """``loader``, or, for one with persistent workers, a fresh loader over the same data.

    The validation loop already holds (and has prefetched from) the single iterator of a
    loader with persistent workers, which a second ``iter()`` would reset under it; the
    same batches come from a fresh loader with the same dataset, batch sampler (or batch
    size), collate function and workers.
    """
    if not (getattr(loader, "persistent_workers", False) and getattr(loader, "num_workers", 0)):
        return loader
    workers = {
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
        "worker_init_fn": loader.worker_init_fn,
        "multiprocessing_context": loader.multiprocessing_context,
        "prefetch_factor": loader.prefetch_factor,
        "generator": loader.generator,
    }
    if isinstance(loader.dataset, torch.utils.data.IterableDataset):
        return torch.utils.data.DataLoader(
            loader.dataset, batch_size=loader.batch_size, drop_last=loader.drop_last, **workers
        )
    return torch.utils.data.DataLoader(
        loader.dataset, batch_sampler=loader.batch_sampler, **workers
    )


def _is_ema_state(state: Any) -> bool:
    """Whether a callback state is one :meth:`EMATeacher.state_dict` wrote."""
    return isinstance(state, dict) and {"num_updates", "last_update_step", "ema"} <= set(state)


def _name_in_state_key(key: str) -> str:
    """The ``name`` in a state key such as ``"EMATeacher{'name': 'fast'}"``."""
    start = key.find("{'name': '")
    if start < 0:
        return key
    return key[start + len("{'name': '") :].split("'", 1)[0]


def _resolve_schedule(ema: EMATeacher, trainer: pl.Trainer) -> Callable[[int], float]:
    """The ``step -> decay`` function of ``ema``'s named schedule.

    The cosine schedule's length defaults to the Trainer's optimizer steps after the start.
    """
    kwargs = dict(ema.schedule_kwargs)
    kwargs[_DECAY_ARGUMENT[ema.schedule]] = ema.decay
    if ema.schedule == "cosine":
        kwargs.setdefault("end_value", 1.0)
        if "max_steps" not in kwargs:
            total = trainer.estimated_stepping_batches
            if total == float("inf"):
                raise ValueError(
                    "The cosine decay schedule needs a length: set `max_steps` or "
                    "`max_epochs` of the Trainer, or `schedule_kwargs={'max_steps': ...}`."
                )
            kwargs["max_steps"] = max(int(total) - ema.start_step, 1)
    return resolve_schedule(ema.schedule, **kwargs)


def _check_device(device: Any) -> torch.device | None:
    if device is None:
        return None
    if not isinstance(device, str | torch.device):
        raise TypeError(
            f"`device` must be None, a string or a torch.device, got {device!r} "
            f"({type(device).__name__})."
        )
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"`device` must be None or a torch device such as 'cpu', got {device!r}."
        ) from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"`device`={str(device)!r} needs CUDA, which is not available here.")
    if device.type == "cuda" and device.index is not None:
        if device.index >= torch.cuda.device_count():
            raise ValueError(
                f"`device`={str(device)!r} names a GPU that does not exist: "
                f"{torch.cuda.device_count()} GPU(s) are visible."
            )
    return device


def _check_dtype(dtype: Any) -> torch.dtype | None:
    if dtype is None or dtype in _DTYPES.values():
        return dtype
    if not isinstance(dtype, str):
        raise TypeError(
            f"`dtype` must be None, a dtype name or a torch floating-point dtype, got "
            f"{dtype!r} ({type(dtype).__name__})."
        )
    return _DTYPES[check_choice(dtype, "dtype", tuple(_DTYPES))]


def _check_schedule(schedule: Any, schedule_kwargs: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(schedule, str):
        if not callable(schedule):
            raise TypeError(
                f"`schedule` must be one of {sorted(SCHEDULES)} or a step -> float function, "
                f"got {schedule!r} ({type(schedule).__name__})."
            )
        if schedule_kwargs:
            raise ValueError("`schedule_kwargs` only applies to a schedule given by name.")
        return schedule_kwargs
    if schedule not in SCHEDULES:
        raise ValueError(f"`schedule` must be one of {sorted(SCHEDULES)}, got {schedule!r}.")
    decay_argument = _DECAY_ARGUMENT[schedule]
    if decay_argument in schedule_kwargs:
        raise ValueError(
            f"`schedule_kwargs` sets {decay_argument!r}, which the {schedule!r} schedule takes "
            "from `decay`."
        )
    allowed = [p for p in inspect.signature(SCHEDULES[schedule]).parameters if p != "step"]
    unknown = sorted(set(schedule_kwargs) - set(allowed))
    if unknown:
        raise ValueError(
            f"`schedule_kwargs` has {unknown}, which the {schedule!r} schedule does not take; "
            f"it takes {[p for p in allowed if p != decay_argument]}."
        )
    return schedule_kwargs
