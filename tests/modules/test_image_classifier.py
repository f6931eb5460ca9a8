"""ImageClassifier: the loss against torch's cross-entropy, the weighted reduction against a
hand sum (and one process under DDP), backbones (timm, checkpoint of a CLIP, module), the
backbone's learning rate, validation metrics against a hand count, and a short fit."""

from __future__ import annotations

import functools

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from lightning_plugins.models import SmallConvNet
from lightning_plugins.modules import CLIP, ContrastiveImageText, ImageClassifier
from lightning_plugins.schedulers import WarmupCosineLR
from tests.helpers import run_ddp
from tests.modules.test_contrastive_image_text import trainer as contrastive_trainer

MICRO = "ViT-Micro-P8-32"
NUM_CLASSES = 6


def batch(size: int = 8, seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(size, 3, 32, 32, generator=generator),
        "label": torch.randint(0, NUM_CLASSES, (size,), generator=generator),
    }


def classifier(**kwargs) -> ImageClassifier:
    torch.manual_seed(0)
    kwargs = {"backbone": SmallConvNet(width=4, num_features=8), **kwargs}
    return ImageClassifier(num_classes=NUM_CLASSES, **kwargs)


def quiet(module):
    """The module with ``log`` a no-op, to call steps outside a Trainer."""
    module.log = lambda *args, **kwargs: None
    return module


def trainer(**kwargs) -> pl.Trainer:
    return contrastive_trainer(**{"num_sanity_val_steps": 0, **kwargs})


def loader(size: int = 16, batch_size: int = 4, seed: int = 1) -> DataLoader:
    data = batch(size, seed)
    rows = [{key: value[i] for key, value in data.items()} for i in range(size)]
    return DataLoader(rows, batch_size=batch_size)


# ------------------------------------------------------------------------------- loss
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_per_sample_loss_is_torch_cross_entropy(label_smoothing):
    module = classifier(label_smoothing=label_smoothing)
    data = batch()
    logits, targets = module.classification_logits(data)
    assert logits.shape == (8, NUM_CLASSES) and torch.equal(targets, data["label"])
    expected = F.cross_entropy(
        logits, data["label"], reduction="none", label_smoothing=label_smoothing
    )
    torch.testing.assert_close(module.per_sample_loss(data), expected, rtol=0, atol=0)


def test_training_step_is_mean_or_weighted_hand_sum():
    module = quiet(classifier())
    data = batch()
    losses = module.per_sample_loss(data).detach().tolist()
    torch.testing.assert_close(
        module.training_step(data, 0).item(), sum(losses) / 8, rtol=1e-6, atol=0
    )
    weight = torch.tensor([0.5, 2.0, 0.0, 1.0, 3.0, 0.25, 1.0, 0.0])
    expected = sum(w * x for w, x in zip(weight.tolist(), losses, strict=True)) / sum(
        weight.tolist()
    )
    loss = module.training_step({**data, "weight": weight}, 0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_bad_weight_is_named_as_for_contrastive_modules():
    module = quiet(classifier())
    with pytest.raises(ValueError, match=r"train batch\['weight'\]` must be finite and non-neg"):
        module.training_step({**batch(), "weight": torch.zeros(8)}, 0)


# ------------------------------------------------------------------- weighted under DDP
WEIGHT = torch.tensor([0.5, 2.0, 0.0, 1.0, 3.0, 0.25])
SIZES = (2, 4)  # unequal local batches


def _ddp_weighted(rank: int, world_size: int) -> dict:
    module = quiet(classifier()).eval()  # eval: batch norm statistics of the local batch
    full = {**batch(6), "weight": WEIGHT}
    start, stop = sum(SIZES[:rank]), sum(SIZES[: rank + 1])
    loss = module.training_step({key: value[start:stop] for key, value in full.items()}, 0)
    loss.backward()
    grads = {}
    for name, param in module.named_parameters():
        dist.all_reduce(param.grad)  # what DDP does: average gradients over ranks
        grads[name] = param.grad / world_size
    return grads


@pytest.mark.ddp
def test_ddp_weighted_training_step_equals_one_process_on_the_global_batch():
    results = run_ddp(_ddp_weighted)
    module = quiet(classifier()).eval()
    module.training_step({**batch(6), "weight": WEIGHT}, 0).backward()
    for result in results:
        for name, param in module.named_parameters():
            torch.testing.assert_close(result[name], param.grad, rtol=1e-4, atol=1e-6, msg=name)


# ------------------------------------------------------------------------- optimizer
def test_backbone_lr_scale_sets_group_lrs_and_no_decay_of_norms_and_biases():
    module = classifier(backbone_lr_scale=0.1, optimizer=functools.partial(torch.optim.SGD, lr=0.5))
    optimizer = module.configure_optimizers()
    lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert lrs == pytest.approx(
        {"backbone": 0.05, "backbone_no_decay": 0.05, "head": 0.5, "head_no_decay": 0.5}
    )
    decays = {group["name"]: group["weight_decay"] for group in optimizer.param_groups}
    assert decays["backbone_no_decay"] == decays["head_no_decay"] == 0.0
    no_decay = {
        id(p) for g in optimizer.param_groups if "no_decay" in g["name"] for p in g["params"]
    }
    for name, param in module.named_parameters():
        assert (id(param) in no_decay) == (param.ndim < 2), name


def test_backbone_lr_scale_zero_freezes_the_backbone():
    module = classifier(backbone_lr_scale=0)
    optimizer = module.configure_optimizers()
    assert [group["name"] for group in optimizer.param_groups] == ["head", "head_no_decay"]
    assert not any(p.requires_grad for p in module.backbone.parameters())
    module.train()
    assert module.head.training and not module.backbone.training
    before = {k: v.clone() for k, v in module.backbone.state_dict().items()}
    trainer(max_steps=2, limit_val_batches=0).fit(module, loader())
    for name, value in module.backbone.state_dict().items():
        assert torch.equal(value, before[name]), name  # weights and BN statistics


def test_scheduler_gets_total_steps_and_the_scaled_backbone_lr():
    module = classifier(
        backbone_lr_scale=0.5,
        optimizer=functools.partial(torch.optim.SGD, lr=1.0),
        lr_scheduler=functools.partial(WarmupCosineLR, warmup_steps=0),
    )
    t = trainer(max_steps=3, limit_val_batches=0)
    t.fit(module, loader())
    scheduler = t.lr_scheduler_configs[0].scheduler
    assert scheduler.total_steps == 3
    base = {
        g["name"]: lr
        for g, lr in zip(scheduler.optimizer.param_groups, scheduler.base_lrs, strict=True)
    }
    assert base["backbone"] == pytest.approx(0.5) and base["head"] == pytest.approx(1.0)


# -------------------------------------------------------------------------- backbones
def test_built_in_and_timm_backbones():
    module = ImageClassifier("small_convnet", num_classes=3)
    assert isinstance(module.backbone, SmallConvNet) and module.head.in_features == 64
    assert module.hparams.backbone == "small_convnet"
    timm_module = ImageClassifier("test_resnet", num_classes=4)
    assert timm_module(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    assert timm_module.head.in_features == timm_module.backbone.num_features


def test_backbone_weights_are_loaded(tmp_path):
    torch.manual_seed(3)
    source = ImageClassifier("test_resnet", num_classes=4).backbone
    path = tmp_path / "resnet.pt"
    torch.save({**source.state_dict(), "fc.weight": torch.zeros(2, 2)}, path)  # a head: skipped
    module = ImageClassifier("test_resnet", num_classes=4, backbone_weights=str(path))
    for name, value in source.state_dict().items():
        assert torch.equal(module.backbone.state_dict()[name], value), name
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="does not fit `backbone`='test_resnet'"):
        ImageClassifier("test_resnet", num_classes=4, backbone_weights=str(tmp_path / "other.pt"))


def test_checkpoint_of_a_clip_gives_its_image_tower(tmp_path):
    torch.manual_seed(0)
    clip = CLIP(model_name=MICRO)
    rows = [{"image": torch.randn(3, 32, 32), "caption": f"a shape {i}"} for i in range(4)]
    t = trainer(max_steps=1, limit_val_batches=0)
    t.fit(clip, DataLoader(rows, batch_size=4))
    path = tmp_path / "clip.ckpt"
    t.save_checkpoint(path)
    module = ImageClassifier(str(path), num_classes=5)
    assert module.hparams.backbone == str(path)
    for name, value in clip.model.visual.state_dict().items():
        assert torch.equal(module.backbone.state_dict()[name], value), name
    image = torch.randn(2, 3, 32, 32)
    clip.eval(), module.eval()
    torch.testing.assert_close(module.backbone(image), clip.model.encode_image(image))
    assert module.head.in_features == 32
    loaded = ImageClassifier.load_from_checkpoint(_saved(module, tmp_path))
    assert torch.equal(loaded.head.weight, module.head.weight)


def _saved(module: ImageClassifier, tmp_path) -> str:
    t = trainer(max_steps=0, limit_val_batches=0)
    t.fit(module, loader())
    path = str(tmp_path / "classifier.ckpt")
    t.save_checkpoint(path)
    return path


def test_module_backbone_is_no_hyperparameter(tmp_path):
    class Features(nn.Module):  # no size attribute: found by a probe forward
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 7))

        def forward(self, image):
            return self.net(image)

    module = ImageClassifier(Features(), num_classes=3, image_size=16)
    assert module.head.in_features == 7 and module.hparams.backbone is None
    hparams = torch.load(_saved_small(module, tmp_path), weights_only=True)["hyper_parameters"]
    assert hparams["backbone"] is None and hparams["num_classes"] == 3
    assert "optimizer" not in hparams


def _saved_small(module: ImageClassifier, tmp_path) -> str:
    rows = [{"image": torch.randn(3, 16, 16), "label": torch.tensor(i % 3)} for i in range(4)]
    t = trainer(max_steps=0, limit_val_batches=0)
    t.fit(module, DataLoader(rows, batch_size=2))
    path = str(tmp_path / "module.ckpt")
    t.save_checkpoint(path)
    return path


# ------------------------------------------------------------------------- evaluation
def test_validation_metrics_are_the_hand_count():
    module = classifier()
    t = trainer(limit_val_batches=2)
    results = t.validate(module, loader(size=8, batch_size=4), verbose=False)[0]
    data = batch(8)
    module.eval()
    with torch.no_grad():
        logits = module(data["image"])
    labels = data["label"]
    top1 = (logits.argmax(1) == labels).float().mean().item()
    top5 = (logits.topk(5, dim=1).indices == labels[:, None]).any(1).float().mean().item()
    assert results["val/acc_top1"] == pytest.approx(top1)
    assert results["val/acc_top5"] == pytest.approx(top5)
    loss = F.cross_entropy(logits, labels).item()
    assert results["val/loss"] == pytest.approx(loss, rel=1e-5)
    for c in range(NUM_CLASSES):
        of_class = labels == c
        hand = (logits.argmax(1)[of_class] == c).float().mean().item() if of_class.any() else 0.0
        assert results[f"val/acc_class/{c}"] == pytest.approx(hand), c


def test_metrics_depend_on_the_number_of_classes():
    assert set(ImageClassifier("small_convnet", num_classes=4).metrics) == {"acc_top1", "acc_class"}
    many = ImageClassifier(nn.Flatten(), num_classes=101, image_size=2)
    assert set(many.metrics) == {"acc_top1", "acc_top5"}


def test_short_fit_learns_a_toy_dataset():
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32).repeat(8, 1, 1, 1) + 0.1 * torch.randn(16, 3, 32, 32)
    rows = [{"image": images[i], "label": torch.tensor(i % 2)} for i in range(16)]
    module = ImageClassifier(
        "small_convnet", num_classes=2, optimizer=functools.partial(torch.optim.Adam, lr=1e-2)
    )
    t = trainer(max_epochs=5, val_check_interval=None)
    t.fit(module, DataLoader(rows, batch_size=8, shuffle=True), DataLoader(rows, batch_size=8))
    assert t.global_step == 10
    assert t.callback_metrics["val/acc_top1"].item() == 1.0
    assert torch.isfinite(t.callback_metrics["train/loss"])


# ------------------------------------------------- classification_logits of CLIP / SigLIP
@pytest.mark.parametrize("bias", [None, -2.0])
def test_contrastive_classification_logits_are_the_in_batch_rows(bias):
    torch.manual_seed(0)
    module = ContrastiveImageText(
        CLIP(model_name=MICRO).loss, init_logit_scale=2.0, init_logit_bias=bias, model_name=MICRO
    )
    data = {"image": torch.randn(4, 3, 32, 32), "caption": ["a", "b c", "d", "e f g"]}
    logits, targets = module.classification_logits(data)
    image = module.encode_image(data["image"])
    text = module.encode_text(module.text_tokens(data))
    expected = module.logit_scale * image @ text.T + (0.0 if bias is None else bias)
    torch.testing.assert_close(logits, expected)
    assert torch.equal(targets, torch.arange(4))
