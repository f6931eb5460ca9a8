"""find_steerable_sampler, the SteerableSampler protocol, CurriculumSampler under Lightning DDP."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_plugins.sampling import (
    CurriculumSampler,
    ShuffleSampler,
    SteerableSampler,
    find_steerable_sampler,
)


def loader(sampler=None, size=8):
    if sampler is None:
        return DataLoader(range(size), batch_size=2)
    return DataLoader(range(size), batch_sampler=sampler)


def test_protocol():
    assert isinstance(CurriculumSampler(8, 2), SteerableSampler)
    assert not isinstance(ShuffleSampler(8), SteerableSampler)


def test_found_in_batch_sampler_lists_dicts_and_iterables():
    sampler = CurriculumSampler(8, 2)
    assert find_steerable_sampler(loader(sampler)) is sampler
    assert find_steerable_sampler([loader(), loader(sampler)]) is sampler
    assert find_steerable_sampler({"a": loader(), "b": (loader(sampler),)}) is sampler
    assert find_steerable_sampler(SimpleNamespace(iterables={"b": loader(sampler)})) is sampler
    from lightning.pytorch.utilities import CombinedLoader

    combined = CombinedLoader({"plain": loader(), "steered": loader(sampler)}, "max_size_cycle")
    assert find_steerable_sampler(combined) is sampler


def test_found_in_sampler():
    class Steerable(ShuffleSampler):  # a user's per-index sampler with the protocol
        num_samples = 8

        def set_subset(self, subset):
            pass

        def set_weights(self, weights):
            pass

        def set_pacing(self, ranking, fractions):
            pass

    sampler = Steerable(8)
    assert find_steerable_sampler(DataLoader(range(8), sampler=sampler)) is sampler


@pytest.mark.parametrize(
    ("dataloader", "found"),
    [
        (
            DataLoader(range(8), shuffle=True),
            "DataLoader(batch_sampler=BatchSampler, sampler=RandomSampler)",
        ),
        (
            [DataLoader(range(8))],
            "[DataLoader(batch_sampler=BatchSampler, sampler=SequentialSampler)]",
        ),
        (None, "found None"),
        ({"a": 3}, "{'a': int}"),
    ],
)
def test_none_found_names_what_was_there(dataloader, found):
    with pytest.raises(ValueError, match="No steerable sampler") as error:
        find_steerable_sampler(dataloader)
    assert found in str(error.value) and "CurriculumSampler" in str(error.value)


def test_two_found_is_refused():
    a, b = CurriculumSampler(8, 2), CurriculumSampler(8, 2)
    with pytest.raises(ValueError, match=r"Found 2 steerable samplers.*\[0\].batch_sampler"):
        find_steerable_sampler([loader(a), loader(b)])


# ------------------------------------------------------------------ Lightning under DDP
class IndexDataset(Dataset):
    def __len__(self) -> int:
        return 40

    def __getitem__(self, index: int) -> int:
        return index


class IndexModel(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.weight * batch.float()).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self):
        return DataLoader(IndexDataset(), batch_sampler=CurriculumSampler(40, 4, seed=3))


class SteerAndRecord(pl.Callback):
    """Epoch 1 draws from the first half only; writes what each rank saw to `<rank>.json`."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.seen: dict[str, list] = {"batches": [], "world": [], "sampler": []}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        sampler = find_steerable_sampler(trainer.train_dataloader)
        self.seen["world"].append(list(sampler.world()))
        self.seen["sampler"].append(type(sampler.sampler).__name__)
        if trainer.current_epoch == 1:
            sampler.set_subset(torch.arange(20))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen["batches"].append(batch.tolist())

    def on_train_end(self, trainer, pl_module) -> None:
        path = Path(self.folder) / f"{trainer.global_rank}.json"
        path.write_text(json.dumps(self.seen))


@pytest.mark.ddp
@pytest.mark.slow
def test_lightning_ddp_reinstantiates_with_a_distributed_sampler(tmp_path):
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[SteerAndRecord(str(tmp_path))],
    )
    trainer.fit(IndexModel())
    seen = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    for rank, record in enumerate(seen):
        assert record["world"] == [[2, rank], [2, rank]]
        assert record["sampler"] == ["DistributedSampler"] * 2
        assert len(record["batches"]) == 10  # 5 steps of 2 x 4 per epoch
    for epoch in (0, 1):
        for step in range(5 * epoch, 5 * epoch + 5):
            a, b = seen[0]["batches"][step], seen[1]["batches"][step]
            assert len(a) == len(b) == 4 and not set(a) & set(b)
    assert all(i < 20 for record in seen for batch in record["batches"][5:] for i in batch)
    for rank in (0, 1):
        reference = CurriculumSampler(40, 4, seed=3, num_replicas=2, rank=rank)
        epoch0 = list(reference)
        reference.set_subset(torch.arange(20))
        reference.set_epoch(1)
        assert seen[rank]["batches"] == epoch0 + list(reference)
