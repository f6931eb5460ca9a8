"""A user's mixture datamodule (the MixtureData protocol over a MixtureSampler) for the tests."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_plugins.datamodules.stateful_loader import stateful_loader
from lightning_plugins.sampling import MixtureSampler
from tests.callbacks.steering import fit

NAMES, BATCH, STEPS = ("a", "b", "c"), 8, 4  # 4 steps an epoch


def source(seed: int, size: int, flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(size, 8, generator=g)
    label = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    return x, (3 - label) if flip else label


class Mixed(Dataset):
    """Samples of several sources, in order; ``index`` is the global index."""

    def __init__(self, parts: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.x = torch.cat([x for x, _ in parts])
        self.label = torch.cat([y for _, y in parts])
        self.source = torch.cat([torch.full((len(y),), i) for i, (_, y) in enumerate(parts)])

    def __len__(self) -> int:
        return len(self.label)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "x": self.x[i],
            "label": self.label[i],
            "source": self.source[i],
            "index": torch.tensor(i),
        }


class UserMixture(pl.LightningDataModule):
    """Three sources ("c" has flipped labels), held-out data per source, a target set."""

    def __init__(self, num_workers: int = 0, mode: str = "dynamic") -> None:
        super().__init__()
        self.num_workers, self.mode = num_workers, mode
        self.source_names = list(NAMES)
        self.train = [source(i, 40, flip=i == 2) for i in range(3)]
        self.held_out = [source(10 + i, 32, flip=i == 2) for i in range(3)]
        self.target = source(20, 32, flip=False)

    def train_dataloader(self):
        sampler = MixtureSampler([40, 40, 40], BATCH, mode=self.mode, num_steps=STEPS, seed=0)
        return stateful_loader(
            Mixed(self.train), batch_sampler=sampler, num_workers=self.num_workers
        )

    def eval_dataloaders(self) -> dict[str, DataLoader]:
        return {
            name: DataLoader(Mixed([part]), batch_size=16)
            for name, part in zip(self.source_names, self.held_out, strict=True)
        }

    def target_dataloader(self) -> DataLoader:
        return DataLoader(Mixed([self.target]), batch_size=16)


def fit_mixture(
    root, callbacks, max_steps, ckpt_path=None, save_every=None, num_workers=0, module=None
):
    """``steering.fit`` on a ``UserMixture``; returns the module and the datamodule."""
    data = UserMixture(num_workers)
    module = fit(root, callbacks, max_steps, ckpt_path, save_every, num_workers, module, data)
    return module, data
