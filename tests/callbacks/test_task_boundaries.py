"""TaskBoundaries: hook order in a fit, exact resume without repeated hooks, 2-process DDP."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_plugins.callbacks import TaskBoundaries
from lightning_plugins.callbacks.task_boundaries import TaskHooks, ensure_task_boundaries
from lightning_plugins.datamodules import ClassIncremental, Digits
from tests.datamodules.test_class_incremental import Tiny
from tests.helpers import free_port, join_lightning, run_ddp

STEPS = 3  # steps_per_task of the resume tests


class HookModule(Tiny):
    """Tiny, recording its task hooks and the validations into a shared ``events`` list."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple] = []

    def on_task_start(self, task: int) -> None:
        self.events.append(("module_start", task, self.current_epoch, self.trainer.global_step))

    def on_task_end(self, task: int) -> None:
        self.events.append(("module_end", task, self.current_epoch, self.trainer.global_step))

    def on_validation_epoch_start(self) -> None:
        if not self.trainer.sanity_checking:
            self.events.append(("val", self.current_epoch))


class HookCallback(Callback):
    def on_task_start(self, trainer, pl_module, task):
        pl_module.events.append(("callback_start", task))

    def on_task_end(self, trainer, pl_module, task):
        pl_module.events.append(("callback_end", task))


def stream(**kwargs) -> ClassIncremental:
    digits = Digits(batch_size=16, image_size=8, channels=1)
    return ClassIncremental(digits, **{"increments": [4, 3, 3], **kwargs})


def trainer(root, callbacks=(), **kwargs) -> pl.Trainer:
    settings = {
        "max_epochs": -1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "default_root_dir": root,
        **kwargs,
    }
    return pl.Trainer(accelerator="cpu", devices=1, callbacks=list(callbacks), **settings)


def test_hook_order_over_the_stream(tmp_path):
    module = HookModule()
    fit = trainer(tmp_path, [HookCallback()], limit_train_batches=2, limit_val_batches=1)
    fit.fit(module, stream(epochs_per_task=2))
    events = [event[:2] if event[0].startswith("module") else event for event in module.events]
    expected = []
    for task in range(3):
        expected += [("module_start", task), ("callback_start", task), ("val", 2 * task)]
        expected += [("module_end", task), ("callback_end", task), ("val", 2 * task + 1)]
    assert events == expected
    # a task starts at its first step and ends after the last step of its last epoch
    starts = [e for e in module.events if e[0] == "module_start"]
    ends = [e for e in module.events if e[0] == "module_end"]
    assert starts == [("module_start", t, 2 * t, 4 * t) for t in range(3)]
    assert ends == [("module_end", t, 2 * t + 1, 4 * t + 4) for t in range(3)]
    assert isinstance(HookCallback(), TaskHooks) and not isinstance(Callback(), TaskHooks)


def test_ensure_task_boundaries_goes_before_checkpoints_once(tmp_path):
    checkpoint = ModelCheckpoint(dirpath=tmp_path)
    fit = trainer(tmp_path, [checkpoint], enable_checkpointing=True)
    added = ensure_task_boundaries(fit)
    assert ensure_task_boundaries(fit) is added
    names = [type(c).__name__ for c in fit.callbacks]
    assert names.count("TaskBoundaries") == 1
    assert names.index("TaskBoundaries") + 1 == names.index("ModelCheckpoint")


def test_a_datamodule_that_is_no_stream_is_refused(tmp_path):
    fit = trainer(tmp_path, [TaskBoundaries()], max_epochs=1)
    with pytest.raises(TypeError, match="Digits is no task stream"):
        fit.fit(Tiny(), Digits(image_size=8, channels=1))


# ----------------------------------------------------------------------------- resume
def _run(root, ckpt_path=None, save=False):
    pl.seed_everything(0, verbose=False)
    module = HookModule()
    callbacks = []
    if save:
        callbacks.append(
            ModelCheckpoint(dirpath=root, filename="{step}", every_n_train_steps=1, save_top_k=-1)
        )
    fit = trainer(root, callbacks, enable_checkpointing=save, limit_val_batches=1)
    fit.fit(module, stream(steps_per_task=STEPS, seed=2), ckpt_path=ckpt_path)
    steps = [batch["index"].tolist() for _, batch in module.train_batches]
    hooks = [event[:2] for event in module.events if event[0].startswith("module")]
    return steps, hooks, module.state_dict()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    return root, _run(root, save=True)


def test_uninterrupted_run_hooks(uninterrupted):
    _, (steps, hooks, _) = uninterrupted
    assert len(steps) == 3 * STEPS
    assert hooks == [(f"module_{kind}", t) for t in range(3) for kind in ("start", "end")]


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")  # no new checkpoints
@pytest.mark.parametrize("step", [4, 6], ids=["middle-of-task-1", "last-batch-of-task-1"])
def test_resume_gives_the_same_batches_weights_and_no_repeated_hook(uninterrupted, step):
    root, (steps, hooks, weights) = uninterrupted
    checkpoint = root / f"step={step}.ckpt"
    saved = torch.load(checkpoint, weights_only=False)["callbacks"]
    boundaries = next(v for k, v in saved.items() if "TaskBoundaries" in k)
    # the checkpoint holds the hooks already run: a start at step t*S, an end at (t+1)*S
    assert boundaries == {"started": (step - 1) // STEPS, "ended": step // STEPS - 1}
    resumed = _run(root / f"resumed{step}", ckpt_path=checkpoint)
    resumed_steps, resumed_hooks, resumed_weights = resumed
    assert resumed_steps == steps[step:]
    for name, value in weights.items():
        assert torch.equal(resumed_weights[name], value), name
    expected = [
        (kind, t)
        for kind, t in hooks
        if (kind == "module_start" and t * STEPS >= step)
        or (kind == "module_end" and (t + 1) * STEPS > step)
    ]
    assert resumed_hooks == expected
    assert ("module_start", 1) not in resumed_hooks and ("module_start", 2) in resumed_hooks
    assert (("module_end", 1) in resumed_hooks) == (step == 4)  # at step 6 it ran before


# ------------------------------------------------------------------------------- DDP
def _ddp_fit(rank, world_size, port, root):
    join_lightning(rank, world_size, port)
    pl.seed_everything(0, verbose=False)
    module = HookModule()
    fit = pl.Trainer(
        accelerator="cpu",
        devices=world_size,
        strategy="ddp",
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1,
        default_root_dir=root,
    )
    data = stream(increments=[5, 5], steps_per_task=2)
    fit.fit(module, data)
    return {
        "events": module.events,
        "batches": [(epoch, batch) for epoch, batch in module.train_batches],
        "task_classes": data.task_classes,
    }


@pytest.mark.ddp
@pytest.mark.slow
def test_ddp_ranks_run_the_same_hooks_on_disjoint_batches(tmp_path):
    a, b = run_ddp(_ddp_fit, free_port(), str(tmp_path))
    assert a["events"] == b["events"]
    assert [e[:2] for e in a["events"] if e[0] != "val"] == [
        ("module_start", 0),
        ("module_end", 0),
        ("module_start", 1),
        ("module_end", 1),
    ]
    assert len(a["batches"]) == len(b["batches"]) == 4
    for (epoch, first), (_, second) in zip(a["batches"], b["batches"], strict=True):
        assert not set(first["index"].tolist()) & set(second["index"].tolist())
        for batch in (first, second):
            assert set(batch["label"].tolist()) <= set(a["task_classes"][epoch])
            assert bool((batch["task"] == epoch).all())
