"""CausalLM: a transformers causal LM trained and evaluated on answer tokens (LEGO)."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from lightning_plugins.datamodules import LegoSkills
from lightning_plugins.modules import CausalLM
from tests.modules.test_contrastive_image_text import trainer

TINY = {"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 64}


@pytest.fixture(scope="module")
def dm() -> LegoSkills:
    return LegoSkills(batch_size=16, train_size=32, val_size=8)


@pytest.fixture
def module(dm) -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(config=TINY, vocab_size=dm.vocab_size).eval()


def lego_batch(dm, size=8):
    return next(iter(DataLoader(dm.train_set, batch_size=size)))


def reference_answer_losses(module, batch):
    """Per sample, the mean of F.cross_entropy at each answer position, one at a time."""
    logits = module.model(input_ids=batch["input_ids"]).logits
    losses = []
    for row in range(batch["input_ids"].shape[0]):
        terms = [
            F.cross_entropy(logits[row, t][None], batch["input_ids"][row, t + 1][None])
            for t in torch.nonzero(batch["answer_mask"][row]).flatten().tolist()
        ]
        losses.append(torch.stack(terms).mean())
    return torch.stack(losses)


def test_default_model_and_hyperparameters():
    module = CausalLM(vocab_size=36)
    assert type(module.model).__name__ == "GPT2LMHeadModel"
    assert module.model.config.n_layer == 2 and module.model.config.n_embd == 64
    assert module.vocab_size == 36
    assert module.model.config.bos_token_id is None  # 50256 is outside 36 tokens
    assert dict(module.hparams) == {
        "config": None,
        "checkpoint": None,
        "vocab_size": 36,
        "lr_scheduler_interval": "step",
    }


def test_per_sample_loss_equals_cross_entropy_at_the_answer_positions(module, dm):
    batch = lego_batch(dm)
    with torch.no_grad():
        losses = module.per_sample_loss(batch)
        expected = reference_answer_losses(module, batch)
        logits = module.model(input_ids=batch["input_ids"]).logits
    assert losses.shape == (8,)
    torch.testing.assert_close(losses, expected)
    # LEGO: one answer token, the prediction at the question's "=" of the answer
    rows = torch.arange(8)
    at = batch["answer_mask"].long().argmax(1)
    direct = F.cross_entropy(logits[rows, at], batch["answer"], reduction="none")
    torch.testing.assert_close(losses, direct)


def test_several_answer_tokens_per_sample_are_averaged(module):
    ids = torch.randint(3, 36, (3, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[0, [2, 5, 8]] = True
    mask[1, 0] = True
    mask[2, [6, 7]] = True
    batch = {"input_ids": ids, "answer_mask": mask, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        torch.testing.assert_close(
            module.per_sample_loss(batch), reference_answer_losses(module, batch)
        )


def test_classification_logits_are_the_answer_rows(module, dm):
    batch = lego_batch(dm)
    with torch.no_grad():
        logits, targets = module.classification_logits(batch)
        full = module.model(input_ids=batch["input_ids"]).logits
    at = batch["answer_mask"].long().argmax(1)
    assert torch.equal(targets, batch["answer"])
    torch.testing.assert_close(logits, full[torch.arange(8), at])


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_training_step_reduces_with_the_batch_weights(module, dm):
    batch = lego_batch(dm)
    with torch.no_grad():
        losses = module.per_sample_loss(batch)
        plain = module.training_step(batch, 0)
        weight = torch.linspace(0.0, 2.0, 8)
        weighted = module.training_step({**batch, "weight": weight}, 0)
    torch.testing.assert_close(plain, losses.mean())
    torch.testing.assert_close(weighted, (weight * losses).sum() / weight.sum())


def test_short_fit_logs_per_skill_validation_metrics(dm, tmp_path):
    torch.manual_seed(0)
    optimizer = functools.partial(torch.optim.AdamW, lr=3e-3)
    module = CausalLM(config=TINY, vocab_size=dm.vocab_size, optimizer=optimizer)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    fit = trainer(max_epochs=2, num_sanity_val_steps=0, default_root_dir=tmp_path)
    fit.fit(module, datamodule=dm)
    assert fit.global_step == 20  # 160 samples in batches of 16, 2 epochs
    metrics = fit.callback_metrics
    for key in ("loss", "answer_accuracy"):
        per_skill = [float(metrics[f"val/{key}/skill_{i}"]) for i in range(5)]
        assert float(metrics[f"val/{key}"]) == pytest.approx(sum(per_skill) / 5)
    assert not any("dataloader_idx" in key for key in metrics)
    assert "train/loss" in metrics
    assert any(not torch.equal(before[k], v) for k, v in module.state_dict().items())
    # a Lightning checkpoint: primitives only, and the same weights after loading
    path = tmp_path / "last.ckpt"
    fit.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)
    assert saved["hyper_parameters"]["config"] == TINY
    loaded = CausalLM.load_from_checkpoint(path)
    for key, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_validation_metrics_equal_a_direct_computation(module, dm):
    results = trainer().validate(module, datamodule=dm, verbose=False)
    logged = {k: v for result in results for k, v in result.items()}
    module.eval()
    accuracies, losses = [], []
    with torch.no_grad():
        for skill, dataset in enumerate(dm.skill_datasets("val").values()):
            batch = next(iter(DataLoader(dataset, batch_size=len(dataset))))
            logits = module.model(input_ids=batch["input_ids"]).logits[:, -3]  # the "="
            accuracy = (logits.argmax(-1) == batch["answer"]).float().mean()
            loss = F.cross_entropy(logits, batch["answer"])
            assert logged[f"val/answer_accuracy/skill_{skill}"] == pytest.approx(float(accuracy))
            assert logged[f"val/loss/skill_{skill}"] == pytest.approx(float(loss), rel=1e-5)
            accuracies.append(float(accuracy))
            losses.append(float(loss))
    assert logged["val/answer_accuracy"] == pytest.approx(sum(accuracies) / 5)
    assert logged["val/loss"] == pytest.approx(sum(losses) / 5, rel=1e-5)


def test_dataloaders_without_skill_names_are_numbered(module, dm):
    loaders = [DataLoader(ds, batch_size=4) for ds in list(dm.skill_datasets("val").values())[:2]]
    results = trainer().validate(module, dataloaders=loaders, verbose=False)
    keys = {k for result in results for k in result}
    assert {"val/answer_accuracy/dataloader_0", "val/loss/dataloader_1"} <= keys
    single = trainer().validate(module, dataloaders=loaders[0], verbose=False)[0]
    assert set(single) == {"val/loss", "val/answer_accuracy"}
    tested = trainer().test(module, dataloaders=dm.val_dataloader(), verbose=False)
    assert {"test/answer_accuracy/dataloader_4", "test/answer_accuracy"} <= set(tested[0])


def test_local_checkpoint_folder_round_trip(module, tmp_path):
    module.model.save_pretrained(tmp_path / "lm")
    loaded = CausalLM(checkpoint=str(tmp_path / "lm"))
    assert loaded.vocab_size == 36 and loaded.hparams.checkpoint == str(tmp_path / "lm")
    reference = module.model.state_dict()
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, reference[key]), key
    assert CausalLM(checkpoint=str(tmp_path / "lm"), vocab_size=36).vocab_size == 36


def test_another_model_type_and_a_type_name():
    llama = CausalLM(
        config={
            "model_type": "llama",
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
        },
        vocab_size=36,
    )
    ids = torch.randint(3, 36, (2, 6))
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[:, 3] = True
    assert llama.per_sample_loss({"input_ids": ids, "answer_mask": mask}).shape == (2,)
    assert type(llama.model).__name__ == "LlamaForCausalLM"


def test_optimizer_groups_leave_norms_and_biases_without_decay(module):
    groups = module.parameter_groups()
    assert [g["name"] for g in groups] == ["model", "model_no_decay"]
    assert all(p.ndim >= 2 for p in groups[0]["params"])
    assert all(p.ndim < 2 for p in groups[1]["params"]) and groups[1]["weight_decay"] == 0.0
    count = sum(p.numel() for g in groups for p in g["params"])
    assert count == sum(p.numel() for p in module.parameters())
