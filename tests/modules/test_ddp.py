"""The module under 2-process CPU DDP (gloo): exact gradients, and a full Trainer run."""

import pytest
import torch
import torch.distributed as dist

from tests.helpers import run_ddp

MICRO = "ViT-Micro-P8-32"
CAPTIONS = [
    "a red circle",
    "two blue stars",
    "a green bar",
    "three white rings",
    "a cyan cross and a purple square",
    "an image with a yellow diamond",
    "four orange triangles",
    "a picture of a red bar",
]


KINDS = ("clip", "siglip", "clip_distill", "siglip_distill")


def make_module(kind: str):
    """The module of ``kind``; ``*_distill`` distils from a differently seeded teacher."""
    from lightning_plugins.modules import CLIP, SigLIP

    cls = SigLIP if kind.startswith("siglip") else CLIP
    if not kind.endswith("_distill"):
        torch.manual_seed(0)
        return cls(model_name=MICRO)
    torch.manual_seed(1)
    teacher = cls(model_name=MICRO).eval()
    torch.manual_seed(0)
    module = cls(model_name=MICRO, distill_weight=0.5)
    module.teacher = teacher  # any module giving (image, text) features and logit scale/bias
    return module


def global_batch() -> dict:
    generator = torch.Generator().manual_seed(3)
    return {"image": torch.randn(8, 3, 32, 32, generator=generator), "caption": CAPTIONS}


def _ddp_grads(rank: int, world_size: int) -> dict:
    return {kind: _ddp_grads_of(kind, rank, world_size) for kind in KINDS}


def _ddp_grads_of(kind: str, rank: int, world_size: int) -> dict:
    module = make_module(kind)
    full = global_batch()
    size = 8 // world_size
    local = {
        "image": full["image"][rank * size : (rank + 1) * size],
        "caption": full["caption"][rank * size : (rank + 1) * size],
    }
    loss = module.per_sample_loss(local).mean()
    loss.backward()
    grads = {}
    for name, param in module.named_parameters():
        if name.startswith("teacher."):
            continue
        grad = param.grad.clone() if param.grad is not None else torch.zeros_like(param)
        dist.all_reduce(grad)  # what DDP does: average gradients over ranks
        grads[name] = grad / world_size
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    return {"loss": mean_loss / world_size, "grads": grads}


@pytest.fixture(scope="module")
def ddp_results() -> list[dict]:
    return run_ddp(_ddp_grads)


@pytest.mark.ddp
@pytest.mark.parametrize("kind", KINDS)
def test_ddp_gradients_equal_single_process_global_batch(kind, ddp_results):
    module = make_module(kind)
    loss = module.per_sample_loss(global_batch()).mean()
    loss.backward()
    for result in (r[kind] for r in ddp_results):
        torch.testing.assert_close(result["loss"], loss.detach(), rtol=1e-5, atol=1e-6)
        for name, param in module.named_parameters():
            if name.startswith("teacher."):
                continue
            expected = param.grad if param.grad is not None else torch.zeros_like(param)
            torch.testing.assert_close(
                result["grads"][name], expected, rtol=1e-4, atol=1e-6, msg=name
            )


@pytest.mark.ddp
@pytest.mark.slow
def test_trainer_ddp_spawn_fits_and_validates(tmp_path):
    import lightning.pytorch as pl

    from lightning_plugins.datamodules import SyntheticShapes

    module = make_module("clip")
    dm = SyntheticShapes(batch_size=4, train_size=16, zero_shot_size=64, retrieval_size=12)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_steps=2,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, dm)
    metrics = trainer.callback_metrics
    assert {"val/zero_shot_top1", "val/i2t_R@1", "train/loss"} <= set(metrics)
