"""Concept statistics: functional formulas vs. Python loops, and the logging callback."""

from __future__ import annotations

import csv
import json
import math
import os
from collections import Counter

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from lightning_plugins.callbacks import ConceptStatistics, plot_concept_frequencies
from lightning_plugins.functional import (
    concept_batch_statistics,
    concept_histogram,
    concept_histogram_statistics,
)
from lightning_plugins.functional.concept_statistics import concept_counts
from tests.helpers import run_ddp

NUM_CONCEPTS = 12
NAMES = (
    "coverage",
    "distinct",
    "entropy",
    "objects",
    "objects_per_sample",
    "no_concept_share",
    "max_count",
)


def random_concepts(batch, width, seed, num_concepts=NUM_CONCEPTS):
    """Padded concept lists with random lengths (some empty), duplicates and shuffled padding."""
    g = torch.Generator().manual_seed(seed)
    concepts = torch.randint(0, num_concepts, (batch, width), generator=g)
    lengths = torch.randint(0, width + 1, (batch,), generator=g)
    concepts[torch.arange(width) >= lengths[:, None]] = -1
    return concepts[:, torch.randperm(width, generator=g)]


def reference_statistics(concepts, num_concepts):
    rows = [[c for c in row if c >= 0] for row in concepts.tolist()]
    counts = Counter(c for row in rows for c in row)
    total = sum(counts.values())
    return {
        "histogram": [counts[c] for c in range(num_concepts)],
        "coverage": len(counts) / num_concepts,
        "distinct": len(counts),
        "entropy": -sum(n / total * math.log(n / total) for n in counts.values()),
        "objects": total,
        "objects_per_sample": total / len(rows),
        "no_concept_share": sum(not row for row in rows) / len(rows),
        "max_count": max(counts.values(), default=0),
    }


def assert_statistics(result, expected):
    assert set(NAMES) <= set(result)
    for name in NAMES:
        assert float(result[name]) == pytest.approx(expected[name], rel=1e-5, abs=1e-6), name


def pad_cat(parts):
    width = max(p.shape[1] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1]), value=-1) for p in parts])


# ---------------------------------------------------------------------------- functional


@pytest.mark.parametrize(("batch", "width", "seed"), [(16, 5, 0), (7, 1, 1), (32, 9, 2), (3, 4, 3)])
def test_functional_matches_reference(batch, width, seed):
    concepts = random_concepts(batch, width, seed)
    expected = reference_statistics(concepts, NUM_CONCEPTS)
    histogram = concept_histogram(concepts, NUM_CONCEPTS)
    assert histogram.dtype == torch.long and histogram.tolist() == expected["histogram"]
    stats = concept_batch_statistics(concepts, NUM_CONCEPTS)
    assert_statistics(stats, expected)
    assert stats["distinct"].dtype == stats["max_count"].dtype == torch.long
    assert stats["entropy"].is_floating_point()


def test_functional_edge_cases():
    empty = torch.full((4, 3), -1)
    stats = concept_batch_statistics(empty, 5)
    assert concept_histogram(empty, 5).tolist() == [0] * 5
    assert float(stats["entropy"]) == 0.0 and int(stats["distinct"]) == 0
    assert float(stats["no_concept_share"]) == 1.0 and int(stats["max_count"]) == 0
    # no object column at all, and a single concept: entropy 0, coverage 1/num_concepts
    assert concept_histogram(torch.empty(2, 0, dtype=torch.long), 3).tolist() == [0, 0, 0]
    one = concept_batch_statistics(torch.tensor([[2, 2], [2, -1]]), 4)
    assert float(one["entropy"]) == 0.0 and float(one["coverage"]) == 0.25
    assert int(one["max_count"]) == 3
    # uniform over all concepts: entropy log(num_concepts), full coverage
    uniform = concept_batch_statistics(torch.arange(6).view(3, 2), 6)
    assert float(uniform["entropy"]) == pytest.approx(math.log(6))
    assert float(uniform["coverage"]) == 1.0
    # other integer dtypes
    assert concept_histogram(torch.tensor([[1, -1]], dtype=torch.int32), 2).tolist() == [0, 1]


def test_histogram_statistics_of_summed_parts_equal_those_of_the_union():
    parts = [random_concepts(5, 4, seed) for seed in (10, 11, 12)]
    histogram = sum(concept_histogram(p, NUM_CONCEPTS) for p in parts)
    empty = sum(int(((p >= 0).sum(1) == 0).sum()) for p in parts)
    stats = concept_histogram_statistics(histogram, 15, empty)
    assert_statistics(stats, reference_statistics(torch.cat(parts), NUM_CONCEPTS))
    # concept_counts packs the same summable counts: histogram, samples, empty samples
    counts = sum(concept_counts(p, NUM_CONCEPTS) for p in parts)
    assert counts[:-2].tolist() == histogram.tolist() and counts[-2:].tolist() == [15, empty]


@pytest.mark.parametrize(
    ("concepts", "num_concepts", "error", "match"),
    [
        (torch.tensor([[0, 5]]), 5, ValueError, "concept id 5"),
        (torch.tensor([[0, -2]]), 5, ValueError, "concept id -2"),
        (torch.tensor([0, 1]), 5, ValueError, "2-D integer.*got shape \\(2,\\)"),
        (torch.tensor([[0.0, 1.0]]), 5, TypeError, "2-D integer.*got dtype torch.float32"),
        (torch.tensor([[True]]), 5, TypeError, "2-D integer"),
        ([[0, 1]], 5, TypeError, "2-D integer.*got a list"),
        (torch.tensor([[0, 1]]), 0, ValueError, "`num_concepts` must be .*, got 0"),
        (torch.tensor([[0, 1]]), 2.0, TypeError, "`num_concepts` must be an integer"),
        (torch.tensor([[0, 1]]), True, TypeError, "`num_concepts` must be an integer"),
    ],
)
def test_functional_bad_input(concepts, num_concepts, error, match):
    with pytest.raises(error, match=match):
        concept_histogram(concepts, num_concepts)
    with pytest.raises(error, match=match):
        concept_batch_statistics(concepts, num_concepts)


# ---------------------------------------------------------------------------- callback


class TinyModule(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch["x"]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def make_batches(num_batches, seed, batch=6, width=4, key="concepts"):
    return [
        {"x": torch.randn(batch, 4), key: random_concepts(batch, width, seed * 100 + i)}
        for i in range(num_batches)
    ]


def loader(batches):
    return DataLoader(batches, batch_size=None)


class ConceptData(pl.LightningDataModule):
    def __init__(self, batches, num_concepts=NUM_CONCEPTS, frequencies=None, names=None):
        super().__init__()
        self.batches = batches
        self.num_concepts = num_concepts
        if frequencies is not None:
            self.concept_frequencies = frequencies
        if names is not None:
            self.concept_names = names

    def train_dataloader(self):
        return loader(self.batches)


def make_trainer(root, max_steps=3, logger=True, **kwargs):
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        logger=CSVLogger(root, name="csv") if logger else False,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        **kwargs,
    )


def read_step_metrics(trainer):
    with open(os.path.join(trainer.log_dir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    out = {}
    for row in rows:
        values = {k: float(v) for k, v in row.items() if v not in ("", None)}
        if "concepts/entropy_step" in values:
            out[int(values["step"])] = values
    return out


def test_callback_logs_batch_statistics_and_writes_files(tmp_path):
    batches = make_batches(3, seed=1)
    callback = ConceptStatistics(num_concepts=NUM_CONCEPTS)
    trainer = make_trainer(tmp_path, callbacks=[callback])
    trainer.fit(TinyModule(), train_dataloaders=loader(batches))

    # callback_metrics hold the last batch's values and the epoch mean over all three
    last = reference_statistics(batches[-1]["concepts"], NUM_CONCEPTS)
    metrics = trainer.callback_metrics
    for name in NAMES:
        assert float(metrics[f"concepts/{name}_step"]) == pytest.approx(last[name], rel=1e-5)
        mean = sum(reference_statistics(b["concepts"], NUM_CONCEPTS)[name] for b in batches) / 3
        assert float(metrics[f"concepts/{name}_epoch"]) == pytest.approx(mean, rel=1e-5)
    # and the logger saw every batch's values
    logged = read_step_metrics(trainer)
    assert sorted(logged) == [0, 1, 2]
    for step, b in enumerate(batches):
        expected = reference_statistics(b["concepts"], NUM_CONCEPTS)
        for name in NAMES:
            assert logged[step][f"concepts/{name}_step"] == pytest.approx(expected[name], rel=1e-5)

    everything = reference_statistics(torch.cat([b["concepts"] for b in batches]), NUM_CONCEPTS)
    assert callback.histogram.tolist() == everything["histogram"]
    state = callback.state_dict()
    assert state["num_batches"] == 3 and state["num_samples"] == 18
    assert state["num_empty_samples"] == round(everything["no_concept_share"] * 18)

    saved = json.loads((tmp_path / "csv" / "version_0" / "concept_histogram.json").read_text())
    assert saved["counts"] == everything["histogram"] and saved["num_concepts"] == NUM_CONCEPTS
    assert saved["num_objects"] == everything["objects"]
    assert (tmp_path / "csv" / "version_0" / "concept_frequency.png").stat().st_size > 0


def test_callback_reads_datamodule_and_plots_reference(tmp_path):
    batches = make_batches(3, seed=2)
    frequencies = torch.arange(NUM_CONCEPTS, 0, -1)
    callback = ConceptStatistics(log_every_n_steps=2, prefix="c/")
    trainer = make_trainer(tmp_path, logger=False, callbacks=[callback])
    with pytest.warns(UserWarning, match="concept_frequencies"):
        callback._reference(ConceptData(batches, frequencies=torch.ones(3)))
    trainer.fit(TinyModule(), datamodule=ConceptData(batches, frequencies=frequencies))
    assert callback.num_concepts == NUM_CONCEPTS
    # only the second batch is logged: the epoch mean is that batch's value
    second = reference_statistics(batches[1]["concepts"], NUM_CONCEPTS)
    assert float(trainer.callback_metrics["c/coverage_epoch"]) == pytest.approx(second["coverage"])
    assert float(trainer.callback_metrics["c/entropy_step"]) == pytest.approx(second["entropy"])
    # without a logger the files go to default_root_dir
    assert json.loads((tmp_path / "concept_histogram.json").read_text())["num_batches"] == 3
    assert (tmp_path / "concept_frequency.png").stat().st_size > 0


def test_histogram_file_names_the_concepts_of_the_datamodule(tmp_path):
    batches = make_batches(2, seed=3)
    names = [f"concept {c}" for c in range(NUM_CONCEPTS)]
    callback = ConceptStatistics()
    trainer = make_trainer(tmp_path, max_steps=2, logger=False, callbacks=[callback])
    trainer.fit(TinyModule(), datamodule=ConceptData(batches, names=names))
    saved = json.loads((tmp_path / "concept_histogram.json").read_text())
    assert saved["names"] == names and len(saved["counts"]) == NUM_CONCEPTS
    assert (tmp_path / "concept_frequency.png").stat().st_size > 0
    with pytest.warns(UserWarning, match="ignoring `datamodule.concept_names`"):
        assert callback._names(ConceptData(batches, names=names[:-1])) is None
    with pytest.raises(ValueError, match="`names` must name each of the 12 concepts, got 2"):
        callback.save(tmp_path, names=["a", "b"])


def test_histogram_file_without_names_has_no_names_key(tmp_path):
    callback = ConceptStatistics(3, plot=False)
    trainer = make_trainer(tmp_path, max_steps=1, logger=False, callbacks=[callback])
    batch = {"x": torch.randn(1, 4), "concepts": torch.tensor([[0, 2]])}
    trainer.fit(TinyModule(), train_dataloaders=loader([batch]))
    assert "names" not in json.loads((tmp_path / "concept_histogram.json").read_text())


def test_shapes_name_their_concepts():
    from lightning_plugins.datamodules import SyntheticShapes

    dm = SyntheticShapes(train_size=8, batch_size=4)
    assert len(dm.concept_names) == dm.num_concepts == 64
    sample = dm.train_set[0]
    named = sorted({dm.concept_names[c] for c in sample["concepts"].tolist() if c >= 0})
    assert all(name.split()[-1].rstrip("s") in sample["caption"] for name in named)


def test_callback_without_plot_writes_json_only(tmp_path):
    callbacks = [ConceptStatistics(5, plot=False)]
    trainer = make_trainer(tmp_path, max_steps=2, logger=False, callbacks=callbacks)
    batches = [{"x": torch.randn(2, 4), "concepts": torch.tensor([[1, 4], [0, -1]])}] * 2
    trainer.fit(TinyModule(), train_dataloaders=loader(batches))
    counts = json.loads((tmp_path / "concept_histogram.json").read_text())["counts"]
    assert counts == [2, 2, 0, 0, 2]
    assert not (tmp_path / "concept_frequency.png").exists()


def test_callback_errors(tmp_path):
    with pytest.raises(ValueError, match="num_concepts"):
        make_trainer(tmp_path, logger=False, callbacks=[ConceptStatistics()]).fit(
            TinyModule(), train_dataloaders=loader(make_batches(1, seed=3))
        )
    with pytest.raises(ValueError, match=r"datamodule\.num_concepts"):
        make_trainer(tmp_path, logger=False, callbacks=[ConceptStatistics()]).fit(
            TinyModule(), datamodule=ConceptData(make_batches(1, seed=3), num_concepts=0)
        )
    with pytest.raises(KeyError, match=r"'concepts'.*\['objects', 'x'\]"):
        make_trainer(tmp_path, logger=False, callbacks=[ConceptStatistics(NUM_CONCEPTS)]).fit(
            TinyModule(), train_dataloaders=loader(make_batches(1, seed=3, key="objects"))
        )
    with pytest.raises(ValueError, match="concept id"):
        make_trainer(tmp_path, logger=False, callbacks=[ConceptStatistics(3)]).fit(
            TinyModule(), train_dataloaders=loader(make_batches(1, seed=3))
        )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_concepts": 0}, ValueError, r"`num_concepts`.*got 0"),
        ({"num_concepts": 2.5}, TypeError, r"`num_concepts` must be an integer.*got 2\.5"),
        ({"log_every_n_steps": 0}, ValueError, r"`log_every_n_steps` must be .*, got 0"),
        ({"log_every_n_steps": "1"}, TypeError, r"`log_every_n_steps` must be an integer"),
        ({"key": ""}, ValueError, "`key`"),
        ({"key": 3}, TypeError, "`key` must be a string"),
        ({"prefix": None}, TypeError, "`prefix` must be a string"),
        ({"plot": "no"}, TypeError, "`plot` must be a bool"),
    ],
)
def test_callback_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        ConceptStatistics(**kwargs)


class Delivered(pl.Callback):
    def __init__(self):
        self.concepts = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.concepts.append(batch["concepts"].clone())


def test_state_dict_round_trip_and_resume(tmp_path):
    batches = make_batches(3, seed=4)
    callback = ConceptStatistics(NUM_CONCEPTS, plot=False)
    trainer = make_trainer(tmp_path, logger=False, callbacks=[callback])
    trainer.fit(TinyModule(), train_dataloaders=loader(batches))
    checkpoint = tmp_path / "last.ckpt"
    trainer.save_checkpoint(checkpoint)
    state = torch.load(checkpoint, weights_only=True)["callbacks"][callback.state_key]

    restored = ConceptStatistics()
    restored.load_state_dict(state)
    assert restored.state_dict().keys() == callback.state_dict().keys()
    assert torch.equal(restored.histogram, callback.histogram)
    assert restored.num_concepts == NUM_CONCEPTS and restored.num_batches == 3
    with pytest.raises(ValueError, match="num_concepts"):
        ConceptStatistics(NUM_CONCEPTS + 1).load_state_dict(state)

    # resuming a run continues the accumulated histogram with the batches delivered after it
    resumed, delivered = ConceptStatistics(NUM_CONCEPTS, plot=False), Delivered()
    trainer = make_trainer(tmp_path, max_steps=6, logger=False, callbacks=[resumed, delivered])
    trainer.fit(TinyModule(), train_dataloaders=loader(batches), ckpt_path=checkpoint)
    assert len(delivered.concepts) == 3
    after = concept_histogram(pad_cat(delivered.concepts), NUM_CONCEPTS)
    assert torch.equal(resumed.histogram, callback.histogram + after)
    assert resumed.state_dict()["num_samples"] == 36 and resumed.num_batches == 6


def test_plot_concept_frequencies(tmp_path):
    runs = {"iid": torch.tensor([9, 5, 0, 1]), "cabs": [3, 3, 3, 2], "other": torch.ones(4)}
    path = plot_concept_frequencies(runs, tmp_path / "a" / "f.png", reference=[9, 5, 1, 1])
    assert path.stat().st_size > 0
    with pytest.raises(ValueError, match="lengths"):
        plot_concept_frequencies({"a": [1, 2], "b": [1, 2, 3]}, tmp_path / "g.png")
    with pytest.raises(ValueError, match="at least one"):
        plot_concept_frequencies({}, tmp_path / "g.png")
    with pytest.raises(ValueError, match="negative"):
        plot_concept_frequencies({"a": [1, -2]}, tmp_path / "g.png")


# ---------------------------------------------------------------------------- DDP

DDP_STEPS = 3


def ddp_rank_batches(rank):
    # ranks differ in padding width, so the global batch is the padded concatenation
    return make_batches(DDP_STEPS, seed=10 + rank, batch=4 + rank, width=3 + 2 * rank)


class LastStepMetrics(pl.Callback):
    def __init__(self):
        self.values = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx > 0:  # what the previous batch logged
            self.values.append(
                {k: float(v) for k, v in trainer.callback_metrics.items() if "_step" in k}
            )


def _ddp_fit(rank, world_size, root):
    os.environ["LOCAL_RANK"] = str(rank)  # this process group was made outside Lightning
    callback = ConceptStatistics(NUM_CONCEPTS)
    recorder = LastStepMetrics()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=world_size,
        strategy="ddp",
        max_steps=DDP_STEPS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        default_root_dir=root,
        callbacks=[callback, recorder],
    )
    trainer.fit(TinyModule(), train_dataloaders=loader(ddp_rank_batches(rank)))
    last = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("concepts/")}
    return {"state": callback.state_dict(), "steps": [*recorder.values, last]}


@pytest.mark.ddp
def test_ddp_statistics_are_those_of_the_global_batch(tmp_path):
    results = run_ddp(_ddp_fit, str(tmp_path), world_size=2)
    per_rank = [ddp_rank_batches(rank) for rank in range(2)]
    global_batches = [pad_cat([b[step]["concepts"] for b in per_rank]) for step in range(3)]
    everything = reference_statistics(pad_cat(global_batches), NUM_CONCEPTS)
    for result in results:
        assert result["state"]["histogram"].tolist() == everything["histogram"]
        assert result["state"]["num_samples"] == 3 * (4 + 5)
        assert result["state"]["num_batches"] == DDP_STEPS
        assert len(result["steps"]) == DDP_STEPS
        for step, values in enumerate(result["steps"]):
            expected = reference_statistics(global_batches[step], NUM_CONCEPTS)
            for name in NAMES:
                got = values[f"concepts/{name}_step"]
                assert got == pytest.approx(expected[name], rel=1e-5), (step, name)
    assert results[0]["steps"] == results[1]["steps"]
    saved = json.loads((tmp_path / "concept_histogram.json").read_text())
    assert saved["counts"] == everything["histogram"]
