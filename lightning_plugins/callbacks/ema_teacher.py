"""EMATeacher: an exponential moving average of the trained weights, used as a teacher."""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from typing_extensions import override

from lightning_plugins.callbacks.teacher_view import TeacherView
from lightning_plugins.functional.ema import ema_update_
from lightning_plugins.functional.schedules import SCHEDULES, resolve_schedule

__all__ = ["EMATeacher", "TeacherView"]

_VALIDATE_WITH = ("ema", "model", "both")
# the argument each named schedule takes the callback's `decay` as
_DECAY_ARGUMENT = {"constant": "value", "cosine": "start_value", "warmup": "decay"}
# wrappers that strategies and torch.compile put into parameter names
_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def _clean_name(name: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


class EMATeacher(Callback):
    """Keep an exponential moving average (EMA) of the trained weights, and use it as a teacher.

    After every optimizer step chosen by :meth:`should_update` the average moves towards
    the live weights, ``ema = d * ema + (1 - d) * live``, with the fused
    :func:`~lightning_plugins.functional.ema_update_` (non-float buffers are copied). The
    first update copies the live weights, so a delayed start (``start_step``) averages
    from the weights it starts at, not from the initialisation. The decay ``d`` comes from
    ``schedule`` at ``s = step - start_step - 1`` (optimizer steps since the average
    started, from 0):

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
    live module. The optimizer state is never copied.

    **Memory.** One copy of the averaged tensors, on the module's device or on ``device``
    (``"cpu"`` keeps the accelerator free, at the cost of a transfer per update). Under DDP
    every rank keeps its own copy and no communication happens; the averaged parameters
    are equal on all ranks because the live ones are (buffers such as BatchNorm statistics
    follow each rank's own, as the live ones do). Under FSDP (``FSDPStrategy`` with
    ``use_orig_params=True``, its default, or ``ModelParallelStrategy``) every rank
    averages its own shards of the parameters: no rank ever holds a full copy while
    training. Checkpoints and :meth:`export` gather the full average on rank 0's CPU, as a
    full-state-dict checkpoint of the model does. DeepSpeed is not supported.

    **The teacher.** At the start of fitting the module gets an attribute ``name``
    (default ``pl_module.teacher``, DESIGN.md contract 4): a :class:`TeacherView` that
    runs the module's ``forward`` and methods (``self.teacher.encode_image(x)``) with the
    averaged tensors in place of the live ones, in eval mode and without autograd. It is
    not a second copy of the network (``torch.func.functional_call``). Until the first
    update it runs the live weights. Under sharded strategies it cannot run (the shards
    are gathered by the strategy's own forward); validation and export still work.

    **Validation.** ``validate_with="ema"`` validates the averaged weights: they are
    swapped into the module for the validation loop and swapped back, bitwise exactly,
    when it ends. Until the average has been updated once (a delayed start) the live
    weights are validated, never a copy that was not updated. ``"model"`` validates the
    live weights. ``"both"`` validates the live weights as usual and, before them, the
    averaged ones by calling the module's ``on_validation_epoch_start``,
    ``validation_step`` and ``on_validation_epoch_end`` on the same validation batches,
    with every logged name suffixed by ``"_" + name`` (``val/loss_teacher``); it doubles
    the validation time. A validation loader with ``persistent_workers`` (whose one
    iterator the validation loop holds) is read through a fresh loader over the same
    dataset, batch sampler and collate function for the averaged weights.

    **Checkpoints.** The module's ``state_dict`` in a checkpoint always holds the live
    weights, also for a checkpoint written during validation while the average is swapped
    in (under sharded strategies such a checkpoint raises an error instead: save in
    ``on_validation_end`` or later, as ``ModelCheckpoint`` does). The callback's state
    holds the averaged tensors by name, the number of updates and the step of the last
    one: tensors and integers only, so the checkpoint loads with
    ``torch.load(weights_only=True)``, and a resumed run continues exactly. Several
    instances (say two decays) coexist when their ``name`` differs. :meth:`export` writes
    the averaged weights as a plain state dict of the module.

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

    Raises:
        ValueError: for ``decay`` outside ``[0, 1)``, an unknown schedule, a schedule
            argument the schedule does not take or that ``decay`` sets, ``update_every``
            below 1, a negative ``start_step``, an unknown device or ``validate_with``,
            or a ``name`` that is not a public Python identifier; and when fitting starts,
            for a module without trainable parameters, a module that already has an
            attribute ``name``, DeepSpeed, or FSDP without ``use_orig_params``.

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
    ) -> None:
        super().__init__()
        if isinstance(decay, bool) or not isinstance(decay, int | float) or not 0 <= decay < 1:
            raise ValueError(f"`decay` must lie in [0, 1), got {decay!r}.")
        schedule_kwargs = dict(schedule_kwargs or {})
        if isinstance(schedule, str):
            _check_schedule(schedule, schedule_kwargs)
        elif not callable(schedule):
            raise ValueError(
                f"`schedule` must be one of {sorted(SCHEDULES)} or a step -> float function, "
                f"got {schedule!r}."
            )
        elif schedule_kwargs:
            raise ValueError("`schedule_kwargs` only applies to a schedule given by name.")
        if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
            raise ValueError(
                f"`update_every` must be an integer of at least 1, got {update_every!r}."
            )
        if isinstance(start_step, bool) or not isinstance(start_step, int) or start_step < 0:
            raise ValueError(f"`start_step` must be a non-negative integer, got {start_step!r}.")
        if device is not None:
            try:
                device = torch.device(device)
            except (RuntimeError, TypeError) as error:
                raise ValueError(
                    f"`device` must be None or a torch device such as 'cpu', got {device!r}."
                ) from error
        if validate_with not in _VALIDATE_WITH:
            raise ValueError(
                f"`validate_with` must be one of {_VALIDATE_WITH}, got {validate_with!r}."
            )
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
            raise ValueError(
                f"`name` must be a Python identifier not starting with '_', got {name!r}."
            )
        self.decay = float(decay)
        self.schedule = schedule
        self.schedule_kwargs = schedule_kwargs
        self.update_every = update_every
        self.start_step = start_step
        self.device = device
        self.include_buffers = bool(include_buffers)
        self.validate_with = validate_with
        self.name = name
        self.num_updates = 0
        self.last_update_step = 0
        self._decay_at: Callable[[int], float] | None = schedule if callable(schedule) else None
        self._module: pl.LightningModule | None = None
        self._trainer: pl.Trainer | None = None
        self._keys: list[str] = []  # names in the module's state dict
        self._paths: list[str] = []  # attribute paths in the (possibly wrapped) module
        self._owners: list[tuple[nn.Module, str]] = []
        self._ema: list[torch.Tensor] = []
        self._pending: dict[str, Any] | None = None
        self._sharded = False
        self._swapped = False
        self._told_not_updated = False

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name)

    # ----------------------------------------------------------------- policy
    def should_update(self, trainer: pl.Trainer, step: int) -> bool:
        """Whether to update the average after optimizer step ``step`` (1 for the first step).

        Called at most once per optimizer step; the answer must be the same on every rank.
        Default: every ``update_every``-th step after the first ``start_step`` steps.
        Override for another policy.
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
        return list(self._keys)

    @property
    def swapped_in(self) -> bool:
        """Whether the module holds the averaged weights now (during validation)."""
        return self._swapped

    @property
    def sharded(self) -> bool:
        """Whether the average is kept as per-rank shards (FSDP)."""
        return self._sharded

    def named_averages(self) -> Iterator[tuple[str, torch.Tensor]]:
        """``(attribute path in the module, averaged tensor)`` pairs, as stored."""
        return zip(self._paths, self._ema, strict=True)

    def _live(self) -> list[torch.Tensor]:
        return [getattr(owner, attribute) for owner, attribute in self._owners]

    @torch.no_grad()
    def _swap(self) -> None:
        """Exchange the values of the live and the averaged tensors, bitwise exactly."""
        for ema, live in zip(self._ema, self._live(), strict=True):
            stash = live.detach().clone()
            live.copy_(ema)
            ema.copy_(stash)
        self._swapped = not self._swapped

    @contextlib.contextmanager
    def averaged_weights(self) -> Iterator[None]:
        """Within the block the module holds the averaged weights (no-op once swapped in)."""
        if self._swapped or not self._ema:
            yield
            return
        self._swap()
        try:
            yield
        finally:
            self._swap()

    def _ema_values(self) -> list[torch.Tensor]:
        """The averaged tensors, wherever they are now (in the module while swapped in)."""
        return self._live() if self._swapped else self._ema

    @override
    def state_dict(self) -> dict[str, Any]:
        if not self._ema:
            if self._pending is not None:
                return self._pending
            return {
                "num_updates": self.num_updates,
                "last_update_step": self.last_update_step,
                "ema": {},
            }
        if self._sharded:
            ema = self._gather_full()
        elif self._swapped:
            ema = {key: t.detach().clone() for key, t in zip(self._keys, self._live(), strict=True)}
        else:
            ema = dict(zip(self._keys, self._ema, strict=True))
        return {
            "num_updates": self.num_updates,
            "last_update_step": self.last_update_step,
            "ema": ema,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self._ema:  # restored before fitting created the average: apply it then
            self._pending = state_dict
            self.num_updates = int(state_dict["num_updates"])
            self.last_update_step = int(state_dict["last_update_step"])
            return
        self._load(state_dict)

    @torch.no_grad()
    def _load(self, state_dict: dict[str, Any]) -> None:
        ema = state_dict["ema"]
        if ema or state_dict["num_updates"]:
            missing = [key for key in self._keys if key not in ema]
            unexpected = [key for key in ema if key not in set(self._keys)]
            if missing or unexpected:
                raise ValueError(
                    f"The checkpoint's `{self.state_key}` state does not match the averaged "
                    f"tensors of the module (did the set of trainable parameters change?): "
                    f"missing {missing[:5]}, unexpected {unexpected[:5]}."
                )
            if self._sharded:
                self._scatter_full(ema)
            else:
                for key, tensor in zip(self._keys, self._ema_values(), strict=True):
                    if ema[key].shape != tensor.shape:
                        raise ValueError(
                            f"The checkpoint's average of {key!r} has shape "
                            f"{tuple(ema[key].shape)}, the module's {tuple(tensor.shape)}."
                        )
                    tensor.copy_(ema[key])
        self.num_updates = int(state_dict["num_updates"])
        self.last_update_step = int(state_dict["last_update_step"])

    def _gather_full(self) -> dict[str, torch.Tensor]:
        """The full average on rank 0's CPU (empty elsewhere); every rank must call it."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        with self.averaged_weights():
            state = get_model_state_dict(self._trainer.strategy.model, options=options)
        keys = set(self._keys)
        return {key: value for key, value in state.items() if key in keys}

    def _scatter_full(self, ema: dict[str, torch.Tensor]) -> None:
        """Load a full average (rank 0's is used) into every rank's shards of it."""
        import torch.distributed as dist
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            set_model_state_dict,
        )

        model = self._trainer.strategy.model
        with self.averaged_weights():  # the module's shards are the average's now
            # a complete state dict on rank 0, sent to the shards of every rank
            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            state = get_model_state_dict(model, options=options)
            if dist.get_rank() == 0:
                state.update(ema)
            options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
            set_model_state_dict(model, state, options=options)

    # ------------------------------------------------------------------ setup
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if isinstance(trainer.strategy, DeepSpeedStrategy):
            raise ValueError("EMATeacher does not support DeepSpeed; use FSDP or DDP.")
        self._sharded = isinstance(trainer.strategy, FSDPStrategy | ModelParallelStrategy) or any(
            _is_dtensor(p) for p in pl_module.parameters()
        )
        self._trainer = trainer
        current = getattr(pl_module, self.name, None)
        if current is not None and not isinstance(current, TeacherView):
            raise ValueError(
                f"The module already has an attribute `{self.name}` ({type(current).__name__}); "
                f"give EMATeacher another `name`."
            )
        if self._module is not pl_module or not self._ema:
            self._create(pl_module)
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._load(pending)
        if self._decay_at is None:
            self._decay_at = self._resolve_schedule(trainer)
        # a plain attribute, not a submodule: the view is no nn.Module
        setattr(pl_module, self.name, TeacherView(self, pl_module))

    def _create(self, pl_module: pl.LightningModule) -> None:
        """Select the tensors to average and allocate the average (a copy of them)."""
        if self._pending is None:  # a new module starts a new average
            self.num_updates = 0
            self.last_update_step = 0
        trained_children = {
            name
            for name, child in pl_module.named_children()
            if any(p.requires_grad for p in child.parameters())
        }
        paths = [path for path, p in pl_module.named_parameters() if p.requires_grad]
        if not paths:
            raise ValueError(
                f"EMATeacher found no trainable parameters in {type(pl_module).__name__}: "
                "nothing to average (are all parameters frozen?)."
            )
        if any(path.endswith("_flat_param") for path in paths):
            raise ValueError(
                "EMATeacher needs the original parameters under FSDP: use "
                "FSDPStrategy(use_orig_params=True), its default."
            )
        if self.include_buffers:
            for module_path, module in pl_module.named_modules():
                if module_path.split(".")[0] not in trained_children:
                    continue
                non_persistent = getattr(module, "_non_persistent_buffers_set", set())
                for name, buffer in module.named_buffers(recurse=False):
                    if buffer is not None and name not in non_persistent:
                        paths.append(f"{module_path}.{name}")
        self._module = pl_module
        self._paths = paths
        self._keys = [_clean_name(path) for path in paths]
        self._owners = []
        for path in paths:
            owner, _, attribute = path.rpartition(".")
            self._owners.append((pl_module.get_submodule(owner), attribute))
        with torch.no_grad():
            self._ema = [
                t.detach().to(self.device, copy=True) if self.device else t.detach().clone()
                for t in self._live()
            ]
        self._swapped = False
        size = sum(_local(t).numel() * t.element_size() for t in self._ema)
        rank_zero_info(
            f"EMATeacher `{self.name}`: averaging {len(self._ema)} tensors "
            f"({size / 2**20:.1f} MiB{' per rank' if self._sharded else ''})."
        )

    def _resolve_schedule(self, trainer: pl.Trainer) -> Callable[[int], float]:
        kwargs = dict(self.schedule_kwargs)
        kwargs[_DECAY_ARGUMENT[self.schedule]] = self.decay
        if self.schedule == "cosine":
            kwargs.setdefault("end_value", 1.0)
            if "max_steps" not in kwargs:
                total = trainer.estimated_stepping_batches
                if total == float("inf"):
                    raise ValueError(
                        "The cosine decay schedule needs a length: set `max_steps` or "
                        "`max_epochs` of the Trainer, or `schedule_kwargs={'max_steps': ...}`."
                    )
                kwargs["max_steps"] = max(int(total) - self.start_step, 1)
        return resolve_schedule(self.schedule, **kwargs)

    # --------------------------------------------------------------- training
    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        # once per optimizer step (several batches share one under gradient accumulation)
        if step != self.last_update_step and self.should_update(trainer, step):
            self.update(step)

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Update the average with the live weights after optimizer step ``step``."""
        if self._swapped:
            raise RuntimeError("EMATeacher cannot update while the average is swapped in.")
        # the first update copies the live weights (decay 0 is an exact copy)
        decay = self.decay_at(step) if self.num_updates else 0.0
        ema_update_(self._ema, self._live(), decay)
        self.num_updates += 1
        self.last_update_step = step

    # ------------------------------------------------------------- validation
    def _validates_ema(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        if self.validate_with == "model" or pl_module is not self._module or not self._ema:
            return False
        if not self.updated:
            if not self._told_not_updated and not trainer.sanity_checking:
                rank_zero_info(
                    f"EMATeacher `{self.name}`: the average has not been updated yet "
                    f"(start_step={self.start_step}); validating the live weights only."
                )
                self._told_not_updated = True
            return False
        return True

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.validate_with == "ema" and self._validates_ema(trainer, pl_module):
            self._swap()

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (
            self.validate_with == "both"
            and not trainer.sanity_checking
            and self._validates_ema(trainer, pl_module)
        ):
            with self.averaged_weights():
                self._validate_average(trainer, pl_module)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._swapped:
            self._swap()

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self._swapped:
            self._swap()

    def _validate_average(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Run the module's validation on the averaged weights, logging under a suffix."""
        loaders = trainer.val_dataloaders
        if isinstance(loaders, dict):
            loaders = list(loaders.values())
        elif not isinstance(loaders, list | tuple):
            loaders = [loaders]
        loaders = [_second_pass(loader) for loader in loaders]
        suffix = f"_{self.name}"
        log = pl_module.log

        @functools.wraps(log)
        def log_with_suffix(name: str, *args: Any, **kwargs: Any) -> None:
            log(name + suffix, *args, **kwargs)

        pl_module.log = log_with_suffix  # an instance attribute, removed below
        try:
            pl_module.on_validation_epoch_start()
            limits = trainer.num_val_batches
            for index, loader in enumerate(loaders):
                for batch_idx, batch in enumerate(loader):
                    if batch_idx >= limits[index]:
                        break
                    batch = trainer.strategy.batch_to_device(batch, dataloader_idx=index)
                    extra = (index,) if len(loaders) > 1 else ()
                    pl_module.validation_step(batch, batch_idx, *extra)
            pl_module.on_validation_epoch_end()
        finally:
            del pl_module.log

    # ----------------------------------------------------------- checkpoints
    @override
    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if not self._swapped:
            return
        # written while the average is swapped in (during validation): the module's
        # state dict holds the average; put the live weights, now in our storage, back
        if self._sharded:
            raise RuntimeError(
                "A checkpoint was written during validation while EMATeacher had the average "
                "swapped in; under sharded strategies its live weights cannot be restored. "
                "Save in `on_validation_end` or later (ModelCheckpoint does), or use "
                "validate_with='model'."
            )
        state = checkpoint.get("state_dict", {})
        for path, key, live in zip(self._paths, self._keys, self._ema, strict=True):
            for name in {path, key} & state.keys():
                state[name] = live.detach().clone()

    # ----------------------------------------------------------------- export
    def export(self, path: str | os.PathLike) -> None:
        """Write the averaged weights as a plain state dict of the module (rank 0 writes).

        The file holds the module's full ``state_dict`` with the averaged tensors in place
        of the live ones, on the CPU; load it with
        ``module.load_state_dict(torch.load(path, weights_only=True))``. Under DDP or FSDP
        every rank must call it.
        """
        module = self._module
        if module is None or not self._ema:
            raise RuntimeError("EMATeacher.export needs a fitted module: call it after fitting.")
        if not self.updated:
            rank_zero_warn(
                f"EMATeacher `{self.name}` was never updated: exporting the live weights."
            )
        if self._sharded:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
            )

            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            with self.averaged_weights() if self.updated else contextlib.nullcontext():
                state = get_model_state_dict(self._trainer.strategy.model, options=options)
        else:
            with self.averaged_weights() if self.updated else contextlib.nullcontext():
                state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
        trainer = self._trainer
        if trainer is None or trainer.is_global_zero:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            torch.save(state, path)
        if trainer is not None:
            trainer.strategy.barrier("EMATeacher.export")


def _second_pass(loader: Any) -> Any:
    """A loader to iterate while the validation loop holds ``loader``'s iterator.

    A loader with persistent workers has a single iterator, which a second ``iter()``
    would reset under the validation loop; the same data comes from a fresh loader with
    the same dataset, batch sampler (or batch size), collate function and workers.
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


def _is_dtensor(tensor: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch without distributed support
        return False
    return isinstance(tensor, DTensor)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """A rank's own part of a tensor: the local shard of a DTensor."""
    return tensor.to_local() if _is_dtensor(tensor) else tensor


def _check_schedule(schedule: str, schedule_kwargs: dict[str, Any]) -> None:
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
