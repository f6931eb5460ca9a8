"""LoRAContinual (issue 16): a 2-task fit on the micro CLIP (what trains, the fold of the
adapters into the base weights at a task end, gates zeroed by the proximal step, logged counts
and saved plots), exact resume in the middle of task 1 on ClassIncremental(Digits), and bad
input. A small stand-in TaskStreamData datamodule of colour patterns keeps it fast."""

from __future__ import annotations

import copy
import functools
import os
import re

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader, DistributedSampler

from lightning_plugins.callbacks import TaskBoundaries
from lightning_plugins.datamodules import ClassIncremental, Digits
from lightning_plugins.datamodules.task_stream_data import read_task_stream
from lightning_plugins.models import active_ranks, gates, merge_lora_
from lightning_plugins.modules import LoRAContinual

TASKS = ((2, 0), (1, 3))
NAMES = ["red", "green", "blue", "white"]


class Patterns(pl.LightningDataModule):
    """A TaskStreamData stand-in: class ``c``'s images are a fixed colour pattern plus noise."""

    def __init__(self, batch_size=8, per_class=8, class_names=NAMES):
        super().__init__()
        self.task_classes = [list(c) for c in TASKS]
        self.num_tasks, self.epochs_per_task, self.num_classes = len(TASKS), 1, 4
        self.batch_size, self.class_names = batch_size, class_names
        generator = torch.Generator().manual_seed(0)
        centers = torch.randn(4, 3, 32, 32, generator=generator)
        self.rows = {}
        for split in ("train", "val"):
            self.rows[split] = [
                {
                    "image": centers[c] + 0.5 * torch.randn(3, 32, 32, generator=generator),
                    "label": torch.tensor(c),
                    "task": torch.tensor(t),
                }
                for t, classes in enumerate(TASKS)
                for c in classes
                for _ in range(per_class)
            ]

    def task_dataset(self, task):
        return [row for row in self.rows["train"] if int(row["task"]) == task]

    def _task(self):
        trainer = self.trainer
        return 0 if trainer is None else read_task_stream(self).task_of_epoch(trainer.current_epoch)

    def _loader(self, rows):
        world = self.trainer.world_size if self.trainer is not None else 1
        sampler = DistributedSampler(rows, shuffle=False) if world > 1 else None
        return DataLoader(rows, batch_size=self.batch_size, sampler=sampler)

    def train_dataloader(self):
        return self._loader(self.task_dataset(self._task()))

    def val_dataloader(self):
        seen = set(range(self._task() + 1))
        return self._loader([row for row in self.rows["val"] if int(row["task"]) in seen])


def lora(**kwargs) -> LoRAContinual:
    torch.manual_seed(0)
    defaults = dict(
        model_name="ViT-Micro-P8-32",
        rank=4,
        optimizer=functools.partial(torch.optim.AdamW, lr=0.01),
    )
    return LoRAContinual(**{**defaults, **kwargs})


def trainer(root, **kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        reload_dataloaders_every_n_epochs=1,
        use_distributed_sampler=False,  # Patterns' own
        default_root_dir=str(root),
    )
    return pl.Trainer(**{**defaults, **kwargs})


def base_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The base model's weights by their own names (adapters left out)."""
    return {
        re.sub(r"\.base_layer(?=\.|$)", "", name): value.detach().clone()
        for name, value in model.state_dict().items()
        if ".lora_" not in name
    }


class Fold(Callback):
    """At the last batch of task 0 (before TaskBoundaries runs its end): the expected fold;
    at the task's end (a TaskHooks callback, after the module's): the weights it left."""

    def __init__(self):
        self.expected, self.after, self.ranks, self.gates = None, None, None, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 0:
            self.ranks = active_ranks(pl_module.model)
            self.gates = {k: v.detach().clone() for k, v in gates(pl_module.model).items()}
            self.expected = base_weights(merge_lora_(copy.deepcopy(pl_module.model)))

    def on_task_end(self, trainer, pl_module, task):
        if task == 0:
            self.after = base_weights(pl_module.model)


def test_two_tasks_fold_the_adapters_and_train_only_them(tmp_path):
    module = lora(kappa=0.0)  # gates stay, so the fold carries every rank
    before = base_weights(module.model)
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert not module.model.logit_scale.requires_grad
    fold = Fold()
    fit = trainer(tmp_path, callbacks=[fold], logger=pl.loggers.CSVLogger(tmp_path))
    fit.fit(module, datamodule=Patterns())

    assert fold.after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], fold.after[k])]
    assert changed and all("logit_scale" not in k for k in changed)
    for key, value in fold.expected.items():  # W + s B diag(w) A, as merge_lora_ folds it
        torch.testing.assert_close(fold.after[key], value, rtol=0, atol=1e-6, msg=key)
    assert set(fold.ranks.values()) == {4}
    for layer_gate in gates(module.model).values():  # reset after the last task's fold
        assert torch.equal(layer_gate.detach(), torch.ones(4))
    for name, parameter in module.named_parameters():
        if ".lora_B." in name:
            assert not parameter.any(), name
    assert int(module.ended_task) == 1 and module.task_active_ranks.eq(4).all()
    assert torch.equal(module.model.logit_scale, torch.tensor(module.model.logit_scale.item()))

    metrics = fit.callback_metrics
    assert {"val/acc_top1", "val/forgetting", "lora/active_ranks"} <= set(metrics)
    assert int(metrics["lora/active_ranks"]) == 4 * len(module.layer_names)
    counts = module.parameter_counts()
    assert counts["trainable_parameters"] == counts["active_adapter_parameters"]
    assert counts["merged_parameters"] == sum(v.numel() for v in before.values())
    for path in (*module.accuracy_matrix_paths, *module.active_ranks_paths):
        assert os.path.isfile(path)
    matrix = module.continual_accuracy.compute()["accuracy_matrix"]
    assert not matrix.tril().isnan().any()


def test_proximal_step_zeroes_gates_late_in_the_task(tmp_path):
    # 4 steps per task; the ramp starts at step 2 (start_fraction 0.5) with lr * kappa >> 1
    module = lora(kappa=1e4, start_fraction=0.5)
    seen = []

    class Watch(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.current_epoch == 0:
                values = torch.cat([g.detach() for g in gates(pl_module.model).values()])
                seen.append((int(pl_module.task_step), values))

    fit = trainer(tmp_path, callbacks=[Watch()])
    fit.fit(module, datamodule=Patterns(batch_size=4))
    assert [step for step, _ in seen] == [1, 2, 3, 4]
    assert bool(seen[0][1].ne(0).all()) and bool(seen[1][1].ne(0).all())  # before the ramp
    assert bool(seen[2][1].eq(0).all()) and bool(seen[3][1].eq(0).all())  # thresholded
    assert module.task_active_ranks.eq(0).all()  # recorded before each fold
    assert int(module.task_step) == 4  # task 1's steps


def test_plain_lora_has_no_gates():
    module = lora(gated=False)
    assert gates(module.model) == {}
    assert not any("gate" in name for name, _ in module.named_parameters())


def test_full_finetune_trains_every_base_weight_without_adapters(tmp_path):
    module = lora(full_finetune=True)  # gated=True, rank=4 by default: ignored
    trainable = {name for name, p in module.named_parameters() if p.requires_grad}
    expected = {f"model.{name}" for name, _ in module.model.named_parameters()}
    assert trainable == expected - {"model.logit_scale"}
    assert not any(".lora_" in name or "gate" in name for name in expected)
    assert gates(module.model) == {} and module.layer_names == []
    before = {k: v.detach().clone() for k, v in module.model.state_dict().items()}
    fit = trainer(tmp_path, logger=pl.loggers.CSVLogger(tmp_path))
    fit.fit(module, datamodule=Patterns())

    assert int(module.ended_task) == 1 and fit.global_step == 4
    after = module.model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():  # every weight trained; the temperature kept
        assert torch.equal(after[key], value) == (key == "logit_scale"), key
    counts = module.parameter_counts()
    assert counts["trainable_parameters"] == counts["merged_parameters"] - 1
    assert counts["active_ranks"] == 0 and module.active_ranks_paths is None
    assert {"val/forgetting", "lora/trainable_parameters"} <= set(fit.callback_metrics)
    assert module.merged_model().state_dict().keys() == before.keys()


# ------------------------------------------------------------------ exact resume
STEPS = 3  # per task: steps 0-2 train task 0, 3-5 task 1


def _fit_digits(root, ckpt_path=None) -> tuple[LoRAContinual, pl.Trainer]:
    module = lora(kappa=50.0, start_fraction=0.0)
    stream = ClassIncremental(
        Digits(batch_size=16, image_size=32, channels=3),
        num_tasks=2,
        class_order_seed=1,
        steps_per_task=STEPS,
    )
    checkpoints = ModelCheckpoint(
        dirpath=str(root / "ckpt"), filename="{step}", save_top_k=-1, every_n_train_steps=1
    )
    fit = trainer(
        root,
        max_epochs=-1,
        enable_checkpointing=True,
        callbacks=[checkpoints],
        reload_dataloaders_every_n_epochs=0,  # the stream sets it
        use_distributed_sampler=True,
        limit_val_batches=2,
    )
    fit.fit(module, datamodule=stream, ckpt_path=ckpt_path)
    return module, fit


def test_resume_mid_task_1_equals_the_uninterrupted_run(tmp_path):
    full, fit = _fit_digits(tmp_path / "full")
    assert fit.global_step == 2 * STEPS
    # after step 4 of 6: the second of task 1's three batches, mid-epoch
    resumed, refit = _fit_digits(tmp_path / "resumed", str(tmp_path / "full/ckpt/step=4.ckpt"))
    boundaries = [c for c in refit.callbacks if isinstance(c, TaskBoundaries)]
    assert [(b.started, b.ended) for b in boundaries] == [(1, 1)]
    expected, state = full.state_dict(), resumed.state_dict()
    assert set(state) == set(expected)
    assert {"task_step", "task_active_ranks", "continual_accuracy.correct"} <= set(state)
    for key, value in expected.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)
    assert full.task_active_ranks.lt(4).any()  # the proximal step pruned some ranks

    last = str(tmp_path / "full/ckpt" / f"step={2 * STEPS}.ckpt")
    hparams = torch.load(last, weights_only=True, map_location="cpu")["hyper_parameters"]
    assert hparams["class_names"] == [str(d) for d in range(10)]
    loaded = LoRAContinual.load_from_checkpoint(last)
    assert loaded.task_classes == full.task_classes


# --------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rank": 0}, ValueError, "`rank`"),
        ({"targets": ["nope"]}, ValueError, r"`targets` entry 'nope' matches no"),
        ({"start_fraction": 1.0}, ValueError, "`start_fraction`"),
        ({"kappa": -1.0}, ValueError, "`kappa`"),
        ({"templates": ["no slot"]}, ValueError, "`templates`"),
        ({"task_classes": [[0], [0]], "class_names": ["a"]}, ValueError, "must not overlap"),
        ({"task_classes": [[0, 1]], "class_names": ["a"]}, ValueError, "`class_names` holds 1"),
        ({"task_classes": [[0, 1]]}, ValueError, "Give both `task_classes` and `class_names`"),
        ({"pretrained": "missing.ckpt"}, ValueError, "`pretrained`"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        lora(**kwargs)


def test_a_datamodule_without_class_names_is_refused(tmp_path):
    with pytest.raises(ValueError, match="has no `class_names`"):
        trainer(tmp_path).fit(lora(), datamodule=Patterns(class_names=None))


def test_a_label_outside_the_current_task_is_refused():
    module = lora(task_classes=[list(c) for c in TASKS], class_names=NAMES)
    batch = {"image": torch.randn(2, 3, 32, 32), "label": torch.tensor([2, 1])}
    with pytest.raises(ValueError, match=r"class 1, which is not in the current task 0"):
        module.per_sample_loss(batch)


def test_pretrained_from_a_clip_checkpoint(tmp_path):
    from lightning_plugins.modules import CLIP

    torch.manual_seed(1)
    clip = CLIP(model_name="ViT-Micro-P8-32")
    fit = trainer(tmp_path, max_epochs=0)
    fit.strategy.connect(clip)
    path = str(tmp_path / "clip.ckpt")
    fit.save_checkpoint(path)
    module = lora(pretrained=path)
    merged = module.merged_model().state_dict()
    for key, value in clip.model.state_dict().items():
        torch.testing.assert_close(merged[key], value, rtol=0, atol=1e-6, msg=key)
    with pytest.raises(ValueError, match="holds a 'ViT-Micro-P8-32' model"):
        lora(model_name="ViT-Tiny-P8-32", pretrained=path)
