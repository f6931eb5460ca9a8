"""CUDA runs of the module: bf16 mixed precision and DDP (skipped without a GPU).

Each run is compared with a reference computed outside Lightning: the loss of the first
step with the loss under ``torch.autocast`` on the same batch and weights, the validation
metrics with open_clip's zero-shot classifier and a full ranking, and a DDP step with one
device stepping on the global batch. The helpers take the accelerator, so that the same
checks can be tried on CPU (``bf16-mixed`` runs there too).
"""

import copy
import functools
import math

import lightning.pytorch as pl
import open_clip
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from lightning_plugins.datamodules import SyntheticShapes
from lightning_plugins.modules import CLIP, SigLIP

TINY = "ViT-Tiny-P8-32"


def fixed_batch(size: int = 32) -> dict:
    """The first training batch of SyntheticShapes: images, captions and indices."""
    dm = SyntheticShapes(batch_size=size, train_size=4 * size, zero_shot_size=64)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    return {"image": batch["image"], "caption": list(batch["caption"])}


def repeated(*batches: dict, times: int = 1) -> DataLoader:
    """A loader that yields the given batches as they are (no collation)."""
    return DataLoader(list(batches) * times, batch_size=None)


class LossRecorder(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].detach().float().cpu())


def trainer(accelerator: str, **kwargs) -> pl.Trainer:
    defaults = dict(
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return pl.Trainer(accelerator=accelerator, **{**defaults, **kwargs})


def check_bf16_training(module_cls, accelerator: str) -> None:
    device = torch.device("cuda" if accelerator == "gpu" else "cpu")
    torch.manual_seed(0)
    module = module_cls(model_name=TINY)
    batch = fixed_batch()
    reference = copy.deepcopy(module).to(device)
    on_device = {"image": batch["image"].to(device), "caption": batch["caption"]}
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        assert reference.encode_image(on_device["image"]).dtype == torch.bfloat16
        expected = reference.per_sample_loss(on_device).mean().float().cpu()
    recorder = LossRecorder()
    trainer(accelerator, precision="bf16-mixed", max_steps=8, callbacks=[recorder]).fit(
        module, train_dataloaders=repeated(batch, times=8)
    )
    # the first step's loss is the loss under autocast with the initial weights
    torch.testing.assert_close(recorder.losses[0], expected, rtol=1e-3, atol=1e-3)
    # it trains: eight AdamW steps on one batch lower that batch's loss
    assert recorder.losses[-1] < recorder.losses[0] - 0.05, recorder.losses
    # master weights stay float32 and the logit scale is clamped after every step
    assert all(p.dtype == torch.float32 for p in module.parameters())
    assert module.model.logit_scale.item() <= math.log(100.0) + 1e-6


def reference_metrics(module, dm, device: torch.device) -> dict[str, float]:
    """Zero-shot top-1 with open_clip's classifier and Recall@1 by full ranking, in bf16."""
    model = module.model.to(device).eval()
    classifier = open_clip.build_zero_shot_classifier(
        model, module.tokenizer, dm.class_names, dm.templates, num_classes_per_batch=None,
        device=device,
    )  # fmt: skip
    correct, images, texts = [], [], []
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        for loader in dm.val_dataloader():
            for batch in loader:
                features = F.normalize(model.encode_image(batch["image"].to(device)), dim=-1)
                if "label" in batch:
                    logits = features.float() @ classifier
                    correct.append(logits.argmax(1).cpu() == batch["label"])
                else:
                    tokens = module.tokenizer(list(batch["caption"])).to(device)
                    images.append(features.float())
                    texts.append(F.normalize(model.encode_text(tokens), dim=-1).float())
    images, texts = torch.cat(images), torch.cat(texts)
    target = torch.arange(len(images), device=device)
    return {
        "val/zero_shot_top1": torch.cat(correct).float().mean().item(),
        "val/i2t_R@1": ((images @ texts.T).argmax(1) == target).float().mean().item(),
        "val/t2i_R@1": ((texts @ images.T).argmax(1) == target).float().mean().item(),
    }


def check_bf16_validation(accelerator: str) -> None:
    device = torch.device("cuda" if accelerator == "gpu" else "cpu")
    torch.manual_seed(0)
    module = CLIP(model_name=TINY)
    dm = SyntheticShapes(batch_size=32, train_size=64, zero_shot_size=64, retrieval_size=64)
    t = trainer(accelerator, precision="bf16-mixed")
    t.validate(module, dm, verbose=False)
    got = {key: float(value) for key, value in t.callback_metrics.items()}
    expected = reference_metrics(module, dm, device)
    for key, value in expected.items():
        # bf16 round-off may flip a near tie: at most 2 of the 64 samples
        assert abs(got[key] - value) <= 2 / 64 + 1e-6, (key, got[key], value)


@pytest.mark.gpu
@pytest.mark.parametrize("module_cls", [CLIP, SigLIP])
def test_bf16_mixed_step_is_the_autocast_loss_and_trains(module_cls):
    check_bf16_training(module_cls, "gpu")


@pytest.mark.gpu
def test_bf16_mixed_validation_matches_open_clip_reference():
    check_bf16_validation("gpu")


def _trained_one_step(batches: list[dict], devices: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    module = CLIP(model_name=TINY, optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    trainer(
        "gpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        max_steps=1,
        limit_val_batches=0,
    ).fit(module, train_dataloaders=repeated(*batches))
    return {name: value.detach().cpu() for name, value in module.state_dict().items()}


@pytest.mark.gpu
@pytest.mark.ddp
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_ddp_step_on_two_gpus_is_one_gpu_step_on_the_global_batch():
    """Each rank holds half of the batch; the update is that of the whole batch on one GPU."""
    torch.manual_seed(0)
    initial = {k: v.clone() for k, v in CLIP(model_name=TINY).state_dict().items()}
    batch = fixed_batch(size=16)
    halves = [{key: value[i * 8 : (i + 1) * 8] for key, value in batch.items()} for i in (0, 1)]
    single = _trained_one_step([batch], devices=1)
    ddp = _trained_one_step(halves, devices=2)  # the distributed sampler: rank r gets half r
    assert any(not torch.equal(single[k], initial[k]) for k in initial)
    for name, value in single.items():
        torch.testing.assert_close(
            ddp[name] - initial[name], value - initial[name], rtol=1e-2, atol=1e-6, msg=name
        )
