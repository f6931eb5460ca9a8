"""SLCA: class statistics against numpy, the alignment on known Gaussians, which heads a task
trains, the slow learner's learning rates, the linear probe, validation metrics and the
accuracy matrix, and bad input. A small stand-in TaskStreamData datamodule of tensor blobs
keeps it fast; the stream datamodules are tested with SLCA in test_slca_resume.py."""

from __future__ import annotations

import functools
import os

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from lightning_plugins.datamodules.task_stream_data import read_task_stream
from lightning_plugins.functional import class_statistics
from lightning_plugins.modules import SLCA
from lightning_plugins.modules.classifier_alignment import align_linear_classifier

TASKS = ((4, 1), (0, 5), (3, 2))
SIDE = 4  # images [1, 4, 4]


class Blobs(pl.LightningDataModule):
    """A TaskStreamData stand-in: class ``c``'s images are a fixed pattern plus noise."""

    def __init__(self, task_classes=TASKS, epochs_per_task=1, per_class=8, batch_size=8):
        super().__init__()
        self.task_classes = [list(c) for c in task_classes]
        self.num_tasks, self.epochs_per_task = len(task_classes), epochs_per_task
        self.num_classes = 1 + max(c for classes in task_classes for c in classes)
        self.batch_size = batch_size
        generator = torch.Generator().manual_seed(0)
        centers = 2.0 * torch.randn(self.num_classes, 1, SIDE, SIDE, generator=generator)
        self.rows = {}
        for split in ("train", "val"):
            rows = []
            for t, classes in enumerate(self.task_classes):
                for c in classes:
                    for _ in range(per_class):
                        noise = 0.7 * torch.randn(1, SIDE, SIDE, generator=generator)
                        rows.append({"image": centers[c] + noise, "label": c, "task": t})
            self.rows[split] = [
                {**row, "label": torch.tensor(row["label"]), "task": torch.tensor(row["task"])}
                for row in rows
            ]

    def _task_rows(self, split, tasks):
        return [row for row in self.rows[split] if int(row["task"]) in tasks]

    def task_dataset(self, task):
        return self._task_rows("train", {task})

    def _task(self):
        trainer = self.trainer
        return 0 if trainer is None else read_task_stream(self).task_of_epoch(trainer.current_epoch)

    def _loader(self, rows):
        world = self.trainer.world_size if self.trainer is not None else 1
        # in order: rank r takes rows r::world, and a step's ranks together hold the rows
        # one process's batch of batch_size * world would
        sampler = DistributedSampler(rows, shuffle=False) if world > 1 else None
        return DataLoader(rows, batch_size=self.batch_size, sampler=sampler)

    def train_dataloader(self):
        return self._loader(self.task_dataset(self._task()))

    def val_dataloader(self):
        return self._loader(self._task_rows("val", set(range(self._task() + 1))))

    def test_dataloader(self):
        return DataLoader(self.rows["val"], batch_size=self.batch_size)


class Features(nn.Module):
    """A tiny backbone with batch norm, ``num_features`` 6."""

    num_features = 6

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(SIDE * SIDE, 6), nn.BatchNorm1d(6))

    def forward(self, image):
        return self.net(image)


def slca(**kwargs) -> SLCA:
    torch.manual_seed(0)
    defaults = dict(
        backbone=Features(),
        image_size=SIDE,
        in_channels=1,
        alignment_samples=16,
        alignment_epochs=2,
        alignment_batch_size=32,
        optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9),
    )
    return SLCA(**{**defaults, **kwargs})


def trainer(root, **kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        reload_dataloaders_every_n_epochs=1,
        use_distributed_sampler=False,  # Blobs' own
        default_root_dir=str(root),
    )
    return pl.Trainer(**{**defaults, **kwargs})


class Snapshots(Callback):
    """Heads and aligned heads after each task's end (a TaskHooks callback)."""

    def __init__(self):
        self.heads, self.aligned = {}, {}

    def on_task_end(self, trainer, pl_module, task):
        self.heads[task] = {k: v.clone() for k, v in pl_module.heads.state_dict().items()}
        if pl_module.hparams.classifier_alignment:
            self.aligned[task] = pl_module.aligned_weight.clone()


def features_of(module, rows):
    module.eval()
    with torch.no_grad():
        images = torch.stack([row["image"] for row in rows])
        return module.backbone(images), torch.stack([row["label"] for row in rows])


# ------------------------------------------------------------------- class statistics
@pytest.mark.parametrize("kind", ["full", "diagonal", "lowrank"])
def test_stored_statistics_are_those_of_the_features(tmp_path, kind):
    data = Blobs(task_classes=TASKS[:2])
    rank = 3 if kind == "lowrank" else None
    module = slca(backbone_lr_scale=0, covariance=kind, covariance_rank=rank)
    trainer(tmp_path, max_epochs=2).fit(module, datamodule=data)
    assert module.has_statistics.all()
    for t, classes in enumerate(data.task_classes):
        features, labels = features_of(module, data.task_dataset(t))
        start = module.offsets[t]
        rows = slice(start, start + len(classes))
        expected = class_statistics(features, labels, classes, kind, rank)
        torch.testing.assert_close(module.class_mean[rows], expected["mean"])
        for c, cls in enumerate(classes):  # numpy's unbiased covariance, + 1e-4 I
            x = features[labels == cls].double().numpy()
            np.testing.assert_allclose(module.class_mean[start + c], x.mean(0), rtol=1e-5)
            cov = np.cov(x, rowvar=False) + 1e-4 * np.eye(6)
            if kind == "full":
                np.testing.assert_allclose(module.class_covariance[start + c], cov, atol=1e-5)
            elif kind == "diagonal":
                np.testing.assert_allclose(module.class_variance[start + c], np.diag(cov), 1e-5)
        if kind == "lowrank":
            torch.testing.assert_close(module.class_factor[rows].abs(), expected["factor"].abs())
            torch.testing.assert_close(module.class_residual[rows], expected["residual"])


# --------------------------------------------------------------- classifier alignment
def test_alignment_fixes_a_head_biased_to_the_new_task():
    generator = torch.Generator().manual_seed(1)
    means = 3.0 * torch.randn(4, 5, generator=generator)
    stats = {"mean": means, "covariance": torch.eye(5).expand(4, 5, 5).clone()}
    weight, bias = means.clone() * 0.1, torch.tensor([0.0, 0.0, 5.0, 5.0])  # favours task 1

    x = means.repeat_interleave(500, 0) + torch.randn(2000, 5, generator=generator)
    y = torch.arange(4).repeat_interleave(500)

    def accuracy(w, b):
        logits = F.linear(x, w, b)
        return (logits.argmax(1) == y).float().mean().item(), F.cross_entropy(logits, y).item()

    bayes = (torch.cdist(x, means).argmin(1) == y).float().mean().item()  # nearest mean
    before, loss_before = accuracy(weight, bias)
    w, b, losses = align_linear_classifier(
        weight, bias, stats, [0, 0, 1, 1], [2, 2], samples_per_class=128, epochs=8, lr=0.2,
        batch_size=64, mean_shrink=0.0, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    after, loss_after = accuracy(w, b)
    assert before < bayes - 0.25 and after > bayes - 0.02 and loss_after < loss_before
    assert losses[-1] < losses[0]
    assert torch.equal(weight, means * 0.1)  # inputs untouched
    again = align_linear_classifier(
        weight, bias, stats, [0, 0, 1, 1], [2, 2], samples_per_class=128, epochs=8, lr=0.2,
        batch_size=64, mean_shrink=0.0, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert torch.equal(again[0], w) and torch.equal(again[1], b)  # seeded: repeatable


# ------------------------------------------------------------------ heads and learning rates
@pytest.mark.parametrize("alignment", [False, True])
def test_later_tasks_leave_old_heads_as_trained(tmp_path, alignment):
    data, snapshots = Blobs(), Snapshots()
    module = slca(classifier_alignment=alignment, covariance="diagonal", task_classes=TASKS)
    initial = {k: v.clone() for k, v in module.heads.state_dict().items()}
    trainer(tmp_path, max_epochs=3, callbacks=[snapshots]).fit(module, datamodule=data)
    final = module.heads.state_dict()
    for t in range(3):
        for key, value in final.items():
            head = int(key.split(".")[0])
            after_t = snapshots.heads[t][key]
            if head < t:  # old heads: bitwise as their task left them
                assert torch.equal(after_t, snapshots.heads[head][key]), (t, key)
            if head > t:  # future heads: untouched until their task
                assert torch.equal(after_t, initial[key]), (t, key)
            if head == t:
                assert not torch.equal(after_t, initial[key]), (t, key)
            assert torch.equal(value, snapshots.heads[head][key])
    if alignment:  # only the alignment moves the heads used for prediction (tasks 1 and 2)
        assert int(module.aligned_tasks) == 3
        assert not torch.equal(snapshots.aligned[1][:4], snapshots.aligned[2][:4])
        trained = torch.cat([module.heads[t].weight for t in range(3)])
        assert not torch.equal(module.aligned_weight, trained)


def test_slow_learner_groups_and_linear_probe(tmp_path):
    module = slca(backbone_lr_scale=0.01, task_classes=TASKS)
    optimizer = module.configure_optimizers()
    lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert lrs == pytest.approx(
        {"backbone": 5e-4, "backbone_no_decay": 5e-4, "heads": 0.05, "heads_no_decay": 0.05}
    )
    probe = slca(backbone_lr_scale=0, classifier_alignment=False)
    assert not any(p.requires_grad for p in probe.backbone.parameters())
    before = {k: v.clone() for k, v in probe.backbone.state_dict().items()}
    trainer(tmp_path, max_epochs=3).fit(probe, datamodule=Blobs())
    names = [group["name"] for group in probe.optimizers().optimizer.param_groups]
    assert names == ["heads", "heads_no_decay"]
    for name, value in probe.backbone.state_dict().items():
        assert torch.equal(value, before[name]), name  # weights and batch-norm statistics


# ------------------------------------------------------------------ training loss
def test_per_sample_loss_is_cross_entropy_on_the_current_head():
    module = slca(task_classes=TASKS).eval()
    module.on_task_start(1)
    batch = {"image": torch.randn(4, 1, SIDE, SIDE), "label": torch.tensor([5, 0, 0, 5])}
    with torch.no_grad():
        logits = module.heads[1](module.backbone(batch["image"]))
        expected = F.cross_entropy(logits, torch.tensor([1, 0, 0, 1]), reduction="none")
        torch.testing.assert_close(module.per_sample_loss(batch), expected)
        assert module(batch["image"]).shape == (4, 4)  # classes of tasks 0 and 1
        predicted = module.predict_classes(module(batch["image"]))
        assert set(predicted.tolist()) <= {4, 1, 0, 5}


# ------------------------------------------------------------------ evaluation
class Record(Callback):
    def __init__(self):
        self.metrics = []

    def on_validation_end(self, trainer, pl_module):
        self.metrics.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def test_validation_accuracy_matrix_and_saved_files(tmp_path):
    data, record = Blobs(), Record()
    module = slca(covariance="diagonal")
    fit = trainer(tmp_path, max_epochs=3, callbacks=[record])
    fit.fit(module, datamodule=data)
    assert [type(c).__name__ for c in fit.callbacks].count("TaskBoundaries") == 1
    assert module.task_classes == TASKS and module.hparams.task_classes == [list(c) for c in TASKS]
    # hand count over the validation data of all tasks, with the final model
    rows = data.rows["val"]
    module.eval()
    with torch.no_grad():
        images = torch.stack([row["image"] for row in rows])
        labels = torch.stack([row["label"] for row in rows])
        tasks = torch.stack([row["task"] for row in rows])
        predicted = module.predict_classes(module(images))
    hits = (predicted == labels).double()
    assert record.metrics[-1]["val/acc_top1"] == pytest.approx(hits.mean().item())
    result = module.continual_accuracy.compute()
    last_row = torch.stack([hits[tasks == j].mean() for j in range(3)])
    torch.testing.assert_close(result["accuracy_matrix"][2], last_row)
    assert record.metrics[-1]["val/average_accuracy"] == pytest.approx(last_row.mean().item())
    for name in ("average_incremental_accuracy", "forgetting", "backward_transfer"):
        assert record.metrics[-1][f"val/{name}"] == pytest.approx(result[name].item()), name
    assert not torch.isnan(result["accuracy_matrix"].tril()).any()
    csv, png = module.accuracy_matrix_paths
    assert os.path.dirname(csv) == str(tmp_path) and os.path.exists(png)
    assert open(csv).readline().strip() == "after_task,task_0,task_1,task_2"
    test = fit.test(module, datamodule=data, verbose=False)[0]
    assert test["test/acc_top1"] == pytest.approx(hits.mean().item())


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"backbone_lr_scale": -0.1}, ValueError, "backbone_lr_scale"),
        ({"covariance": "sparse"}, ValueError, "covariance"),
        ({"covariance": "full", "covariance_rank": 2}, ValueError, "covariance_rank"),
        ({"covariance": "lowrank"}, ValueError, "covariance_rank"),
        ({"covariance": "lowrank", "covariance_rank": 7}, ValueError, "covariance_rank"),
        ({"covariance": "lowrank", "covariance_rank": 0}, ValueError, "covariance_rank"),
        ({"alignment_samples": 0}, ValueError, "alignment_samples"),
        ({"alignment_epochs": 0}, ValueError, "alignment_epochs"),
        ({"alignment_batch_size": -1}, ValueError, "alignment_batch_size"),
        ({"statistics_batch_size": 0}, ValueError, "statistics_batch_size"),
        ({"logit_temperature": 0.0}, ValueError, "logit_temperature"),
        ({"mean_shrink": 1.5}, ValueError, "mean_shrink"),
        ({"classifier_alignment": "yes"}, TypeError, "classifier_alignment"),
        ({"task_classes": [[0, 1], [1, 2]]}, ValueError, "class 1 is in task 0 and task 1"),
        ({"task_classes": [[0, 1], []]}, ValueError, r"task_classes\[1\]` is empty"),
        ({"task_classes": [[0, -1]]}, ValueError, r"task_classes\[0\]\[1\]"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        slca(**kwargs)


def test_task_classes_that_differ_from_the_datamodule(tmp_path):
    module = slca(task_classes=[[4, 1], [0, 5], [2, 3]])
    with pytest.raises(ValueError, match=r"differ from the datamodule's Blobs.task_classes"):
        trainer(tmp_path, max_epochs=3).fit(module, datamodule=Blobs())


def test_a_label_outside_the_current_task(tmp_path):
    module = slca(task_classes=TASKS)
    module.on_task_start(1)
    batch = {"image": torch.randn(2, 1, SIDE, SIDE), "label": torch.tensor([0, 4])}
    with pytest.raises(ValueError, match=r"class 4, which is not in the current task 1 \(classes"):
        module.per_sample_loss(batch)
    batch = {**batch, "label": torch.tensor([0, 5]), "task": torch.tensor([1, 2])}
    with pytest.raises(ValueError, match=r"`train batch\['task'\]` holds task 2 while task 1"):
        module.per_sample_loss(batch)
    with pytest.raises(RuntimeError, match="SLCA has no heads yet"):
        slca().on_task_start(0)


def test_non_finite_features_stop_the_statistics(tmp_path):
    module = slca(task_classes=TASKS)
    with torch.no_grad():
        module.backbone.net[1].weight[0, 0] = float("nan")  # every feature NaN after batch norm
    with pytest.raises(
        ValueError, match=r"sample\(s\) of task 0 have non-finite backbone features"
    ):
        trainer(tmp_path, max_epochs=3).fit(module, datamodule=Blobs())
