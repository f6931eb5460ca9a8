"""The README's recipes (bf16-mixed, gradient checkpointing, torch.compile) and run facts.

Each runs on CPU with the 1.6 M-parameter ``ViT-Micro-P8-32`` on a few ``SyntheticShapes``
pairs. ``torch.compile`` builds its kernels in the first step (10-25 s on a cold CPU
cache), so that test is marked ``slow``.
"""

from __future__ import annotations

import lightning.pytorch as pl
import open_clip
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

import lightning_plugins.models
from lightning_plugins.datamodules import SyntheticShapes
from lightning_plugins.modules import CLIP

MODEL = "ViT-Micro-P8-32"


def _data(**kwargs) -> SyntheticShapes:
    kwargs = {
        "batch_size": 8,
        "train_size": 16,
        "zero_shot_size": 64,
        "retrieval_size": 16,
    } | kwargs
    return SyntheticShapes(**kwargs)


def _batch() -> dict:
    data = _data()
    data.setup("fit")
    return next(iter(data.train_dataloader()))


def _trainer(tmp_path, **kwargs) -> pl.Trainer:
    kwargs = {
        "max_steps": 1,
        "limit_val_batches": 0,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": tmp_path,
    } | kwargs
    return pl.Trainer(**kwargs)


def _loss_and_grads(module: CLIP, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    module.zero_grad(set_to_none=True)
    loss = module.per_sample_loss(batch).mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize(
    ("name", "embed_dim", "context_length", "millions"),
    [("ViT-Micro-P8-32", 32, 16, 1.6), ("ViT-Tiny-P8-32", 96, 32, 5.3)],
)
def test_shipped_configs_are_registered_with_open_clip(name, embed_dim, context_length, millions):
    assert name in lightning_plugins.models.shipped_model_names()
    model = open_clip.create_model(name)
    total = sum(p.numel() for p in model.parameters())
    assert round(total / 1e6, 1) == millions
    assert model.token_embedding.weight.shape == (49408, model.token_embedding.weight.shape[1])
    assert model.token_embedding.weight.numel() > total / 2  # most of it is the vocabulary
    assert model.text_projection.shape[1] == embed_dim
    assert model.context_length == context_length


def test_cabs_epoch_is_shorter_by_one_over_one_minus_filter_ratio():
    iid = _data(batch_size=8, train_size=400)
    cabs = _data(batch_size=8, train_size=400, sampling="cabs", filter_ratio=0.8)
    for data in (iid, cabs):
        data.setup("fit")
    assert len(iid.train_dataloader()) == 50
    assert len(cabs.train_dataloader()) == 10  # 400 // (8 / (1 - 0.8))


def test_bf16_mixed_trains_a_step_on_cpu(tmp_path):
    torch.manual_seed(0)
    module = CLIP(model_name=MODEL)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    trainer = _trainer(tmp_path, precision="bf16-mixed")
    trainer.fit(module, _data())
    assert trainer.global_step == 1
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    # the weights stay float32 (autocast computes in bf16) and were updated
    assert all(p.dtype == torch.float32 for p in module.parameters())
    assert any(not torch.equal(before[n], p) for n, p in module.named_parameters())


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    torch.manual_seed(0)
    module = CLIP(model_name=MODEL)
    module.train()
    batch = _batch()
    loss, grads = _loss_and_grads(module, batch)
    module.model.set_grad_checkpointing(True)
    assert module.model.visual.transformer.grad_checkpointing
    assert module.model.transformer.grad_checkpointing
    loss_ckpt, grads_ckpt = _loss_and_grads(module, batch)
    torch.testing.assert_close(loss_ckpt, loss, rtol=0, atol=0)
    assert grads_ckpt.keys() == grads.keys()
    assert len(grads) == len(list(module.parameters()))
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-6, atol=1e-7, msg=name)


def test_gradient_checkpointing_trains_under_the_trainer(tmp_path):
    module = CLIP(model_name=MODEL)
    module.model.set_grad_checkpointing(True)
    trainer = _trainer(tmp_path, precision="bf16-mixed")
    trainer.fit(module, _data())
    assert trainer.global_step == 1


def test_resume_with_a_named_version_logs_into_one_folder(tmp_path):
    def fit(max_steps: int, ckpt_path: str | None) -> pl.Trainer:
        logger = CSVLogger(tmp_path / "runs", name="clip", version="main")
        trainer = _trainer(tmp_path, max_steps=max_steps, logger=logger, enable_checkpointing=True)
        trainer.log_every_n_steps = 1
        trainer.fit(CLIP(model_name=MODEL), _data(), ckpt_path=ckpt_path)
        return trainer

    fit(2, None)
    folder = tmp_path / "runs" / "clip" / "main"
    (first,) = (folder / "checkpoints").glob("*.ckpt")
    with pytest.warns(UserWarning, match="will be deleted"):
        fit(4, str(first))
    assert sorted(p.name for p in (tmp_path / "runs" / "clip").iterdir()) == ["main"]
    assert len(list((folder / "checkpoints").glob("*.ckpt"))) == 2
    rows = (folder / "metrics.csv").read_text().splitlines()[1:]
    # CSVLogger deletes the earlier metrics.csv: the resumed run's file starts at step 2
    assert [row.split(",")[1] for row in rows] == ["2", "3"]


@pytest.mark.slow
def test_torch_compile_of_the_module_compiles_the_towers():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    module = CLIP(model_name=MODEL)
    batch = _batch()
    loss, grads = _loss_and_grads(module, batch)
    keys = list(module.state_dict())

    module.compile()  # in place: the forward (both towers) runs compiled
    loss_compiled, grads_compiled = _loss_and_grads(module, batch)
    assert counters["stats"]["unique_graphs"] == 1  # one graph, no graph break
    assert list(module.state_dict()) == keys  # checkpoints load into an uncompiled model
    torch.testing.assert_close(loss_compiled, loss, rtol=1e-5, atol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_compiled[name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_compiling_the_open_clip_model_alone_compiles_nothing():
    # The module calls model.encode_image / encode_text, never the model's forward, so
    # torch.compile(module.model) (or module.model.compile()) leaves training eager, and
    # the wrapper renames every state-dict key (`model._orig_mod.…`).
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    module = CLIP(model_name=MODEL)
    module.model = torch.compile(module.model)
    module.per_sample_loss(_batch()).mean().backward()
    assert counters["stats"]["unique_graphs"] == 0
    assert next(iter(module.state_dict())).startswith("model._orig_mod.")
