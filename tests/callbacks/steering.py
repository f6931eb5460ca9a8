"""Small pieces for the sample-steering callback tests: data, a user module, a fit runner."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import Dataset

from lightning_plugins.datamodules.stateful_loader import stateful_loader
from lightning_plugins.sampling import CurriculumSampler

NUM_SAMPLES, NUM_CLASSES, BATCH = 48, 4, 8  # 6 steps per epoch


class Points(Dataset):
    """``NUM_SAMPLES`` noisy points in 8 dimensions with a class and a ``difficulty`` field."""

    def __init__(self, size: int = NUM_SAMPLES) -> None:
        g = torch.Generator().manual_seed(0)
        self.label = torch.randint(0, NUM_CLASSES, (size,), generator=g)
        centres = torch.randn(NUM_CLASSES, 8, generator=g)
        self.x = centres[self.label] + 0.8 * torch.randn(size, 8, generator=g)
        self.difficulty = torch.rand(size, generator=g)

    def __len__(self) -> int:
        return len(self.label)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "x": self.x[index],
            "label": self.label[index],
            "index": torch.tensor(index),
            "difficulty": self.difficulty[index],
        }


class PointsData(pl.LightningDataModule):
    def __init__(self, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        self.num_workers, self.seed = num_workers, seed
        self.dataset = Points()

    def train_dataloader(self):
        sampler = CurriculumSampler(len(self.dataset), BATCH, seed=self.seed)
        return stateful_loader(self.dataset, batch_sampler=sampler, num_workers=self.num_workers)


class UserClassifier(pl.LightningModule):
    """A user's module: implements the protocols, reduces ``weight`` itself, records batches."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(8, NUM_CLASSES)
        self.seen: list[tuple[list[int], list[float] | None]] = []

    def classification_logits(self, batch):
        return self.net(batch["x"]), batch["label"]

    def per_sample_loss(self, batch):
        logits, targets = self.classification_logits(batch)
        return F.cross_entropy(logits, targets, reduction="none")

    def training_step(self, batch, batch_idx):
        losses = self.per_sample_loss(batch)
        weight = batch.get("weight")
        self.seen.append((batch["index"].tolist(), None if weight is None else weight.tolist()))
        if weight is None:
            return losses.mean()
        return (weight * losses).sum() / weight.sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def fit(
    root,
    callbacks,
    max_steps: int,
    ckpt_path=None,
    save_every: int | None = None,
    num_workers: int = 0,
    module: pl.LightningModule | None = None,
    data: pl.LightningDataModule | None = None,
) -> UserClassifier:
    """Fit ``UserClassifier`` on ``PointsData`` (or ``data``); save every ``save_every`` steps."""
    pl.seed_everything(0, verbose=False)
    module = module or UserClassifier()
    extra = (
        [ModelCheckpoint(dirpath=root, every_n_train_steps=save_every, save_top_k=-1)]
        if save_every
        else []
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        callbacks=[*callbacks, *extra],
        enable_checkpointing=bool(save_every),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(module, data or PointsData(num_workers), ckpt_path=ckpt_path)
    return module


class Snapshots(pl.Callback):
    """Copies of the module's weights at every epoch start (put it before the callback tested)."""

    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_epoch_start(self, trainer, pl_module):
        self.weights[trainer.current_epoch] = {
            k: v.detach().clone() for k, v in pl_module.state_dict().items()
        }


def net_at(weights: dict[str, torch.Tensor]) -> nn.Linear:
    net = nn.Linear(8, NUM_CLASSES)
    net.load_state_dict({k.removeprefix("net."): v for k, v in weights.items()})
    return net


def batches_of_epoch(module: UserClassifier, epoch: int, steps_per_epoch: int = 6):
    return module.seen[epoch * steps_per_epoch : (epoch + 1) * steps_per_epoch]
