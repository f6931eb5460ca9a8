"""Self-distillation in ContrastiveImageText: against open_clip's DistillClipLoss, with an
EMA teacher in a Trainer, and bad input."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from open_clip.loss import ClipLoss as OpenClipLoss
from open_clip.loss import DistillClipLoss
from torch.distributions import Bernoulli, kl_divergence

from lightning_plugins.callbacks import EMATeacher
from lightning_plugins.datamodules import SyntheticShapes
from lightning_plugins.modules import CLIP, SigLIP

MICRO = "ViT-Micro-P8-32"
CAPTIONS = ["a red circle", "two blue stars", "a green bar", "three white rings", "a cross"]


def batch() -> dict:
    generator = torch.Generator().manual_seed(5)
    return {"image": torch.randn(5, 3, 32, 32, generator=generator), "caption": CAPTIONS}


def student_and_teacher(cls, **kwargs):
    torch.manual_seed(1)
    teacher = cls(model_name=MICRO).eval()
    torch.manual_seed(0)
    module = cls(model_name=MICRO, **kwargs)
    module.teacher = teacher
    return module, teacher


def test_clip_distillation_equals_open_clip_distill_clip_loss():
    module, teacher = student_and_teacher(CLIP, distill_weight=0.3)
    assert module.distill_kind == "softmax"
    data = batch()
    loss = module.per_sample_loss(data).mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}

    reference = copy.deepcopy(module)
    reference.zero_grad()
    tokens = reference.tokenizer(CAPTIONS)
    image, text = reference(data["image"], tokens)
    with torch.no_grad():
        teacher_image, teacher_text = teacher(data["image"], tokens)
    contrastive, distill = DistillClipLoss()(
        image, text, reference.logit_scale, teacher_image, teacher_text, teacher.logit_scale
    )
    expected = contrastive + 0.3 * distill
    expected.backward()
    torch.testing.assert_close(loss, expected)
    for name, param in reference.named_parameters():
        if name in grads:
            torch.testing.assert_close(grads[name], param.grad, rtol=1e-4, atol=1e-6, msg=name)
    # the distillation term is really there: without it the gradient differs
    module.zero_grad()
    module.hparams.distill_weight = 0.0
    plain = module.per_sample_loss(data).mean()
    torch.testing.assert_close(plain, OpenClipLoss()(image, text, reference.logit_scale))


def test_siglip_distils_by_bernoulli_kl():
    module, teacher = student_and_teacher(SigLIP, distill_weight=2.0)
    assert module.distill_kind == "sigmoid"
    data = batch()
    contrastive, distill = module.loss_terms(data)
    with torch.no_grad():
        tokens = module.tokenizer(CAPTIONS)
        image, text = module(data["image"], tokens)
        teacher_image, teacher_text = teacher(data["image"], tokens)
        student = module.logit_scale * image @ text.T + module.logit_bias
        target = teacher.logit_scale * teacher_image @ teacher_text.T + teacher.logit_bias
    expected = kl_divergence(Bernoulli(logits=target), Bernoulli(logits=student)).sum(1)
    torch.testing.assert_close(distill, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(module.per_sample_loss(data), contrastive + 2.0 * distill)


def test_distill_kind_can_be_chosen():
    module = CLIP(model_name=MICRO, distill_weight=1.0, distill_kind="sigmoid")
    assert module.distill_kind == "sigmoid"
    assert module.hparams.distill_kind == "sigmoid"
    assert CLIP(model_name=MICRO).hparams.distill_kind is None  # what the user wrote


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"distill_weight": -0.5}, r"`distill_weight` must be a finite number in \[0, inf\)"),
        ({"distill_weight": float("nan")}, "`distill_weight`"),
        ({"distill_kind": "kl"}, r"`distill_kind` must be one of \('softmax', 'sigmoid'\)"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CLIP(model_name=MICRO, **kwargs)


@pytest.mark.parametrize("weight", [True, "1", None])
def test_distill_weight_of_the_wrong_type(weight):
    with pytest.raises(TypeError, match="`distill_weight` must be a number"):
        CLIP(model_name=MICRO, distill_weight=weight)


def trainer(tmp_path, callbacks, max_steps=3):
    return pl.Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        limit_val_batches=0,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )


def shapes() -> SyntheticShapes:
    return SyntheticShapes(batch_size=4, train_size=16, zero_shot_size=64, retrieval_size=8)


def test_distillation_without_a_teacher_fails_when_fitting_starts(tmp_path):
    module = CLIP(model_name=MICRO, distill_weight=0.5)
    with pytest.raises(ValueError, match=r"`distill_weight`=0.5 needs a teacher.*EMATeacher"):
        trainer(tmp_path, []).fit(module, shapes())
    with pytest.raises(ValueError, match="needs a teacher"):
        module.per_sample_loss(batch())


class TeacherCheck(Callback):
    """Before each step: the module's distillation loss is the one of the EMA weights."""

    def __init__(self, ema: EMATeacher) -> None:
        self.ema = ema
        self.checked = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not self.ema.updated:
            return
        reference = CLIP(model_name=MICRO)
        reference.load_state_dict(pl_module.state_dict())
        reference.load_state_dict(self.ema.state_dict()["ema"], strict=False)
        reference.eval()
        with torch.no_grad():
            tokens = pl_module.text_tokens(batch)
            image, text = pl_module(batch["image"], tokens)
            teacher_image, teacher_text = reference(batch["image"], tokens)
            _, expected = DistillClipLoss()(
                image, text, pl_module.logit_scale, teacher_image, teacher_text,
                reference.logit_scale,
            )  # fmt: skip
            distill = pl_module.distillation_loss(batch["image"], tokens, image, text)
        torch.testing.assert_close(distill.mean(), expected, rtol=1e-5, atol=1e-6)
        self.checked += 1


def test_ema_teacher_distillation_trains_and_logs_both_terms(tmp_path):
    pl.seed_everything(0)
    module = CLIP(model_name=MICRO, distill_weight=0.5)
    ema = EMATeacher(decay=0.9)
    check = TeacherCheck(ema)
    run = trainer(tmp_path, [ema, check])
    run.fit(module, shapes())
    assert check.checked == 2  # steps 2 and 3 distil from an updated average
    metrics = run.callback_metrics
    assert {"train/loss", "train/contrastive_loss", "train/distill_loss"} <= set(metrics)
    total = metrics["train/contrastive_loss"] + 0.5 * metrics["train/distill_loss"]
    torch.testing.assert_close(metrics["train/loss"], total)
