"""MixtureDataModule: mixed training batches tagged with source and index, held-out loaders."""

from __future__ import annotations

import sys
from collections import Counter

import pytest
import torch
from torch.utils.data import Dataset

from lightning_plugins.datamodules import Digits, LegoSkills, MixtureDataModule
from lightning_plugins.sampling import MixtureSampler, find_mixture_sampler


class Identity(Dataset):
    """Samples that say who they are: ``tag`` = 100 * ``code`` + position."""

    def __init__(self, code: int, size: int, with_index: bool = True) -> None:
        self.code, self.size, self.with_index = code, size, with_index

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        sample = {"tag": torch.tensor(100 * self.code + i)}
        if self.with_index:
            sample["index"] = torch.tensor(1000 + i)  # the source's own index, kept
        return sample


def identity_sources(sizes=(5, 3, 7)) -> dict[str, Identity]:
    return {f"s{code}": Identity(code, size) for code, size in enumerate(sizes)}


def all_batches(loader) -> list[dict[str, torch.Tensor]]:
    return list(loader)


def test_batches_carry_source_index_and_source_index():
    sizes = (5, 3, 7)
    offsets = [0, 5, 8]
    dm = MixtureDataModule(identity_sources(sizes), batch_size=4, steps_per_epoch=6)
    assert dm.source_names == ["s0", "s1", "s2"] and dm.num_sources == 3
    assert dm.source_sizes == list(sizes)
    assert dm.initial_weights.tolist() == pytest.approx([5 / 15, 3 / 15, 7 / 15])
    loader = dm.train_dataloader()
    sampler = find_mixture_sampler(loader)
    assert isinstance(sampler, MixtureSampler)
    expected_indices = list(MixtureSampler(list(sizes), 4, num_steps=6, seed=0))
    batches = all_batches(loader)
    assert len(batches) == 6
    for batch, indices in zip(batches, expected_indices, strict=True):
        assert batch["index"].dtype == torch.int64 and batch["source"].dtype == torch.int64
        assert batch["index"].tolist() == indices
        for g, s, own, tag in zip(
            indices, batch["source"], batch["source_index"], batch["tag"], strict=True
        ):
            source = max(i for i, off in enumerate(offsets) if off <= g)  # plain reference
            local = g - offsets[source]
            assert (int(s), int(own), int(tag)) == (source, 1000 + local, 100 * source + local)


def test_without_an_own_index_source_index_is_the_local_position():
    dm = MixtureDataModule({"a": Identity(0, 2, False), "b": Identity(1, 3, False)}, batch_size=5)
    batch = next(iter(dm.train_dataloader()))
    local = batch["index"] - torch.where(batch["source"] == 1, 2, 0)
    assert torch.equal(batch["source_index"], local)
    assert torch.equal(batch["tag"], 100 * batch["source"] + local)


def test_plain_lists_of_dicts_are_sources():
    dm = MixtureDataModule({"a": [{"x": 1.0}] * 3, "b": [{"x": 2.0}] * 2}, batch_size=2)
    batch = next(iter(dm.train_dataloader()))
    assert torch.equal(batch["x"], 1.0 + batch["source"].double())


def test_static_weights_give_the_source_frequencies():
    sources = identity_sources((20, 20, 20))
    dm = MixtureDataModule(
        sources,
        weights={"s0": 1, "s1": 2, "s2": 5},
        mode="static",
        batch_size=50,
        steps_per_epoch=40,
    )
    assert dm.initial_weights.tolist() == pytest.approx([1 / 8, 2 / 8, 5 / 8])
    counts = Counter()
    for batch in dm.train_dataloader():
        counts.update(batch["source"].tolist())
    total = sum(counts.values())
    assert total == 2000
    for source, weight in enumerate([1 / 8, 2 / 8, 5 / 8]):
        assert counts[source] / total == pytest.approx(weight, abs=0.03)


def test_weights_as_a_list_and_zero_excludes_a_source():
    dm = MixtureDataModule(identity_sources(), weights=[0, 1, 0], batch_size=6)
    for batch in dm.train_dataloader():
        assert set(batch["source"].tolist()) == {1}


def test_stratified_gives_each_source_its_share_in_every_batch():
    dm = MixtureDataModule(
        identity_sources((9, 4, 30)),
        weights=[100, 1, 1],  # ignored
        mode="stratified",
        batch_size=7,
        steps_per_epoch=12,
    )
    assert dm.initial_weights.tolist() == pytest.approx([1 / 3] * 3)
    for batch in dm.train_dataloader():
        counts = torch.bincount(batch["source"], minlength=3)
        assert int(counts.max() - counts.min()) <= 1 and int(counts.sum()) == 7


def test_datamodules_as_sources_and_their_validation_sets():
    clean = Digits(batch_size=4, image_size=8)
    noisy = Digits(batch_size=4, image_size=8, label_noise=0.5, split_seed=1)
    dm = MixtureDataModule({"clean": clean, "noisy": noisy}, batch_size=6, eval_batch_size=50)
    assert dm.source_sizes == [len(clean.train_set), len(noisy.train_set)]
    assert dm.skill_names == ["clean", "noisy"]
    for batch in dm.train_dataloader():
        rows = zip(batch["source"], batch["source_index"], batch["label"], strict=True)
        for s, own, label in rows:
            source = (clean, noisy)[int(s)]
            assert int(label) == int(source.train_labels[own])
    val = dm.val_dataloader()
    assert len(val) == 2
    for source, (loader, data) in enumerate(zip(val, (clean, noisy), strict=True)):
        first = next(iter(loader))
        assert first["source"].tolist() == [source] * 50
        assert torch.equal(first["label"], data.val_set.labels[:50])


def test_a_datamodule_source_held_out_set_is_its_first_validation_loader():
    lego = LegoSkills(batch_size=4, train_size=3, val_size=2)
    dm = MixtureDataModule({"lego": lego}, batch_size=4)
    assert dm.source_sizes == [15] and dm.skill_names == ["lego"]
    (val,) = dm.val_dataloader()
    assert next(iter(val))["skill"].tolist() == [0, 0]  # LegoSkills' first loader: skill_0


def test_a_digits_source_alone_trains_with_images_and_labels():
    digits = Digits(batch_size=4, image_size=8)
    dm = MixtureDataModule({"digits": digits}, batch_size=4)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 8, 8)
    assert torch.equal(batch["label"], digits.train_set.labels[batch["source_index"]])
    assert torch.equal(batch["index"], batch["source_index"])


def test_lego_skills_give_one_source_per_skill():
    lego = LegoSkills(batch_size=4, train_size=6, val_size=3)
    dm = MixtureDataModule(lego, batch_size=10, target="skill_3", eval_batch_size=2)
    assert dm.source_names == lego.skill_names and dm.skill_names == lego.skill_names
    assert dm.source_sizes == [6] * 5
    for batch in dm.train_dataloader():
        assert torch.equal(batch["skill"], batch["source"])  # source s = skill s
    evals = dm.eval_dataloaders()
    assert list(evals) == lego.skill_names
    for source, loader in enumerate(evals.values()):
        batches = list(loader)
        assert [len(b["source"]) for b in batches] == [2, 1]  # eval_batch_size, in order
        assert all(b["source"].eq(source).all() and b["skill"].eq(source).all() for b in batches)
        assert torch.cat([b["index"] for b in batches]).tolist() == [0, 1, 2]
    assert len(dm.val_dataloader()) == 5 and len(dm.test_dataloader()) == 5
    target = list(dm.target_dataloader())
    assert torch.cat([b["skill"] for b in target]).tolist() == [3, 3, 3]
    reference = lego.skill_datasets("val")["skill_3"][1]["input_ids"]
    assert torch.equal(target[0]["input_ids"][1], reference)


def test_val_sources_and_a_target_dataset():
    target = [{"tag": torch.tensor(-1)}] * 3
    dm = MixtureDataModule(
        identity_sources(),
        val_sources={"s2": Identity(9, 2), "s0": Identity(8, 1)},
        target=target,
    )
    assert dm.skill_names == ["s0", "s2"]  # source order, not the mapping's
    assert list(dm.eval_dataloaders()) == ["s0", "s2"]
    val = [next(iter(loader)) for loader in dm.val_dataloader()]
    assert val[0]["tag"].tolist() == [800] and val[0]["source"].tolist() == [0]
    assert val[1]["tag"].tolist() == [900, 901] and val[1]["source"].tolist() == [2, 2]
    assert next(iter(dm.target_dataloader()))["tag"].tolist() == [-1, -1, -1]
    assert MixtureDataModule(identity_sources()).target_dataloader() is None
    assert MixtureDataModule(identity_sources()).val_dataloader() == []


def test_config_and_checked_resume():
    dm = MixtureDataModule(identity_sources(), batch_size=4, mode="static", steps_per_epoch=3)
    assert dm.config() == {
        "kind": "MixtureDataModule",
        "source_names": ["s0", "s1", "s2"],
        "source_sizes": [5, 3, 7],
        "batch_size": 4,
        "mode": "static",
        "steps_per_epoch": 3,
        "seed": 0,
        "num_workers": 0,
    }
    other = MixtureDataModule(identity_sources((5, 3, 8)), batch_size=4, mode="static")
    with pytest.raises(ValueError, match=r"source_sizes=\[5, 3, 7\].*steps_per_epoch=3"):
        other.load_state_dict(dm.state_dict())


@pytest.mark.parametrize("num_workers", [0, 2])
def test_exact_mid_epoch_resume_of_the_train_loader(num_workers):
    def make():
        dm = MixtureDataModule(
            identity_sources((6, 5, 9)),
            weights=[1, 2, 3],
            batch_size=3,
            steps_per_epoch=7,
            seed=4,
            num_workers=num_workers,
        )
        return dm.train_dataloader()

    loader = make()
    iterator = iter(loader)
    for _ in range(3):
        next(iterator)
    state = loader.state_dict()
    rest = [b["index"].tolist() for b in iterator]
    assert len(rest) == 4
    resumed = make()
    resumed.load_state_dict(state)
    assert [b["index"].tolist() for b in resumed] == rest


def test_weights_set_on_the_sampler_apply_from_the_next_epoch():
    dm = MixtureDataModule(identity_sources(), batch_size=6, steps_per_epoch=2)
    loader = dm.train_dataloader()
    first = [b["source"] for b in loader]
    find_mixture_sampler(loader).set_weights([0, 0, 1])
    assert any(set(b.tolist()) != {2} for b in first)
    second = [b["source"] for b in loader]
    assert all(set(b.tolist()) == {2} for b in second)


def test_short_fit_of_causal_lm_logs_per_source_validation_metrics(tmp_path):
    import lightning.pytorch as pl

    from lightning_plugins.modules import CausalLM

    torch.manual_seed(0)
    lego = LegoSkills(batch_size=8, train_size=8, val_size=4)
    dm = MixtureDataModule(lego, weights=[1, 1, 1, 2, 4], batch_size=8, steps_per_epoch=3)
    config = {"model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2}
    module = CausalLM(config=config, vocab_size=lego.vocab_size)
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 6
    metrics = trainer.callback_metrics
    for i in range(5):
        assert f"val/answer_accuracy/skill_{i}" in metrics
        assert f"val/loss/skill_{i}" in metrics
    assert not any("dataloader_idx" in key for key in metrics)


YAML = """
model:
  class_path: CausalLM
  init_args:
    config: {model_type: gpt2, n_layer: 1, n_embd: 32, n_head: 2}
    vocab_size: 36
data:
  class_path: MixtureDataModule
  init_args:
    sources:
      class_path: lightning_plugins.datamodules.LegoSkills
      init_args: {batch_size: 4, train_size: 4, val_size: 2}
    weights: [1, 1, 1, 1, 4]
    mode: static
    batch_size: 4
    steps_per_epoch: 2
trainer:
  logger: false
  enable_checkpointing: false
  enable_progress_bar: false
  enable_model_summary: false
"""

YAML_MAPPING = """
data:
  class_path: MixtureDataModule
  init_args:
    sources:
      easy: {class_path: LegoDataset, init_args: {num_variables: 3, size_per_skill: 4, seed: 0,
             stream: 0, skill: 0}}
      digits: {class_path: Digits, init_args: {batch_size: 4, image_size: 8}}
    weights: {easy: 1, digits: 3}
    val_sources:
      easy: {class_path: LegoDataset, init_args: {num_variables: 3, size_per_skill: 2, seed: 0,
             stream: 1, skill: 0}}
    target: easy
"""


def test_yaml_with_a_skill_datamodule_runs_fast_dev_run(tmp_path, monkeypatch):
    from lightning_plugins.cli import main

    monkeypatch.setattr(sys, "argv", ["lightning-plugins"])
    path = tmp_path / "mixture.yaml"
    path.write_text(YAML)
    cli = main(
        [
            "fit",
            "--config",
            str(path),
            "--trainer.fast_dev_run=true",
            f"--trainer.default_root_dir={tmp_path}",
        ]
    )
    dm = cli.datamodule
    assert isinstance(dm, MixtureDataModule) and dm.source_names == [f"skill_{i}" for i in range(5)]
    assert dm.initial_weights.tolist() == pytest.approx([0.125] * 4 + [0.5])
    assert cli.trainer.global_step == 1
    assert "val/answer_accuracy/skill_4" in cli.trainer.callback_metrics


def test_yaml_with_a_mapping_of_sources_and_weights_by_name(tmp_path, monkeypatch):
    from lightning_plugins.cli import main

    monkeypatch.setattr(sys, "argv", ["lightning-plugins"])
    path = tmp_path / "mixture.yaml"
    path.write_text(YAML_MAPPING)
    cli = main(
        [
            "--model=CausalLM",
            "--model.vocab_size=36",
            "--config",
            str(path),
            "--trainer.logger=false",
            f"--trainer.default_root_dir={tmp_path}",
        ],
        run=False,
    )
    dm = cli.datamodule
    assert dm.source_names == ["easy", "digits"] and dm.source_sizes == [4, 1079]
    assert dm.initial_weights.tolist() == pytest.approx([0.25, 0.75])
    assert dm.skill_names == ["easy"]  # val_sources replace the defaults (digits' val set)
    assert [int(b["skill"].sum()) for b in dm.target_dataloader()] == [0]
