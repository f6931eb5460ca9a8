import math

import lightning.pytorch as pl
import open_clip
import pytest
import torch
import torch.nn.functional as F

from lightning_plugins.datamodules import SyntheticShapes
from lightning_plugins.losses import ClipLoss, SigLipLoss
from lightning_plugins.metrics import DEFAULT_TEMPLATES, ZeroShotClasses
from lightning_plugins.models import ImageTextTowers
from lightning_plugins.modules import CLIP, ContrastiveImageText, SigLIP

MICRO = "ViT-Micro-P8-32"
CAPTIONS = ["a red circle", "two blue stars", "a green bar", "three white rings"]


def batch(size: int = 4) -> dict:
    torch.manual_seed(1)
    return {"image": torch.randn(size, 3, 32, 32), "caption": CAPTIONS[:size]}


def trainer(**kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return pl.Trainer(**{**defaults, **kwargs})


def test_defaults_match_papers():
    clip = CLIP(model_name=MICRO)
    assert clip.logit_scale.item() == pytest.approx(1 / 0.07)
    assert clip.logit_bias is None and isinstance(clip.loss, ClipLoss)
    siglip = SigLIP(model_name=MICRO)
    assert siglip.logit_scale.item() == pytest.approx(10.0)
    assert siglip.logit_bias.item() == pytest.approx(-10.0)
    assert isinstance(siglip.loss, SigLipLoss)


@pytest.mark.parametrize("module_cls", [CLIP, SigLIP])
def test_per_sample_loss_is_open_clip_loss(module_cls):
    module = module_cls(model_name=MICRO)
    b = batch()
    per_sample = module.per_sample_loss(b)
    assert per_sample.shape == (4,)
    image = F.normalize(module.model.encode_image(b["image"]), dim=-1)
    text = F.normalize(module.model.encode_text(module.tokenizer(CAPTIONS)), dim=-1)
    scale = module.model.logit_scale.exp()
    if module_cls is CLIP:
        expected = open_clip.loss.ClipLoss()(image, text, scale)
    else:
        expected = open_clip.loss.SigLipLoss()(image, text, scale, module.model.logit_bias)
    torch.testing.assert_close(per_sample.mean(), expected)
    # training_step reduces the very same per-sample loss
    module.log = lambda *args, **kwargs: None
    torch.testing.assert_close(module.training_step(b, 0), per_sample.mean())


def test_text_tokens_prefers_given_ids_and_rejects_missing_text():
    module = CLIP(model_name=MICRO)
    ids = module.tokenizer(CAPTIONS)
    assert module.text_tokens({"text": ids}) is ids
    torch.testing.assert_close(module.text_tokens({"caption": CAPTIONS}), ids)
    with pytest.raises(KeyError, match="`text`.*`caption`"):
        module.text_tokens({"image": torch.zeros(1)})


def test_weight_decay_groups_follow_open_clip_rule():
    module = CLIP(model_name=MICRO)
    decay, no_decay = module.parameter_groups()
    assert no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in module.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert "model.logit_scale" in no_decay_names
    assert any(n.endswith("ln_final.weight") for n in no_decay_names)
    assert any(n.endswith(".bias") for n in no_decay_names)
    assert "model.token_embedding.weight" in decay_names
    assert all(p.ndim >= 2 for p in decay["params"])
    assert len(decay_names) + len(no_decay_names) == len(list(module.parameters()))


def test_lock_image_freezes_tower_and_keeps_eval_mode():
    module = CLIP(model_name=MICRO, lock_image=True)
    module.train()
    assert not module.model.visual.training
    assert module.model.transformer.training
    assert all(not p.requires_grad for p in module.model.visual.parameters())
    assert module.model.logit_scale.requires_grad
    trainable = {id(p) for g in module.parameter_groups() for p in g["params"]}
    assert not any(id(p) in trainable for p in module.model.visual.parameters())
    before = {k: v.clone() for k, v in module.model.visual.state_dict().items()}
    dm = SyntheticShapes(batch_size=4, train_size=8, zero_shot_size=64, retrieval_size=8)
    trainer(max_steps=2, limit_val_batches=0).fit(module, dm)
    for key, value in module.model.visual.state_dict().items():
        torch.testing.assert_close(value, before[key], msg=key)


def test_lock_text_freezes_text_tower():
    module = SigLIP(model_name=MICRO, lock_text=True)
    frozen = [n for n, p in module.model.named_parameters() if not p.requires_grad]
    assert "token_embedding.weight" in frozen and "logit_bias" not in frozen
    assert all(p.requires_grad for p in module.model.visual.parameters())
    module.train()
    assert not module.model.transformer.training and module.model.visual.training


def test_logit_scale_clamped_after_optimizer_step():
    module = CLIP(model_name=MICRO, init_logit_scale=8.0)  # exp(8) far above 100
    dm = SyntheticShapes(batch_size=4, train_size=8, zero_shot_size=64, retrieval_size=8)
    trainer(max_steps=1, limit_val_batches=0).fit(module, dm)
    assert module.model.logit_scale.item() == pytest.approx(math.log(100.0))


def test_lr_scheduler_and_optimizer_factories():
    module = CLIP(
        model_name=MICRO,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.1, weight_decay=0.01),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
    )
    config = module.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.SGD)
    assert config["lr_scheduler"]["interval"] == "step"
    assert config["optimizer"].param_groups[1]["weight_decay"] == 0.0
    assert config["optimizer"].param_groups[0]["weight_decay"] == 0.01


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(model_name="ViT-Nope"), "`model_name`='ViT-Nope'"),
        (dict(towers=ImageTextTowers(model_name=MICRO, pretrained="/no/such/file.pt")), "`pret"),
        (dict(model_name=MICRO, zero_shot={"class_names": []}), "`class_names` is empty"),
        (dict(model_name=MICRO, zero_shot={"class_names": ["a"], "templates": ["a"]}), "`temp"),
        (dict(model_name=MICRO, max_logit_scale=1.0), "`max_logit_scale`"),
        (dict(model_name=MICRO, lr_scheduler_interval="batch"), "`lr_scheduler_interval`"),
        (dict(model_name=MICRO, lock_image=True, lock_text=True), "`lock_image` and `lock_text`"),
        (dict(model_name=MICRO, eval_chunk_size=0), "`eval_chunk_size`"),
        (dict(), "Give `model_name`.*or `towers`"),
        (dict(model_name=MICRO, towers=ImageTextTowers(model_name=MICRO)), "exactly one"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CLIP(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(lock_image="yes"), "`lock_image` must be .*'yes'"),
        (dict(lock_text=1), "`lock_text` must be .*True or False"),
        (dict(eval_chunk_size=2.5), "`eval_chunk_size` must be an integer"),
        (dict(max_logit_scale="100"), "`max_logit_scale` must be a number"),
        (dict(init_logit_scale=None), "`init_logit_scale` must be a number"),
        (dict(zero_shot=["a", "b"]), "`zero_shot` must be a ZeroShotClasses"),
    ],
)
def test_arguments_of_the_wrong_type(kwargs, match):
    with pytest.raises(TypeError, match=match):
        CLIP(**{"model_name": MICRO, **kwargs})
    with pytest.raises(TypeError, match="`model_name` must be a string"):
        CLIP(model_name=3)
    with pytest.raises(TypeError, match="`towers` must be an ImageTextTowers"):
        CLIP(towers="ViT-Micro-P8-32")


def test_towers_and_zero_shot_survive_a_checkpoint(tmp_path):
    towers = ImageTextTowers(model_name=MICRO, context_length=12)
    zero_shot = ZeroShotClasses(["red circle", "blue star"], class_groups={"stars": [1]})
    module = SigLIP(towers=towers, zero_shot=zero_shot, lock_image=True)
    assert module.tokenizer(["a red circle"]).shape == (1, 12)
    t = trainer(max_steps=0, limit_val_batches=0)
    t.fit(module, SyntheticShapes(batch_size=4, train_size=8, zero_shot_size=64, retrieval_size=8))
    path = tmp_path / "module.ckpt"
    t.save_checkpoint(path)
    hparams = torch.load(path, weights_only=True)["hyper_parameters"]  # primitives only
    assert hparams["towers"]["context_length"] == 12 and hparams["model_name"] is None
    assert hparams["zero_shot"]["class_groups"] == {"stars": [1]}
    loaded = SigLIP.load_from_checkpoint(path)
    assert loaded.zero_shot_classes == zero_shot and loaded.hparams.lock_image
    assert loaded.tokenizer(["a red circle"]).shape == (1, 12)
    for name, value in module.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0, msg=name)


def test_loss_must_be_module():
    with pytest.raises(TypeError, match="`loss` must be a torch.nn.Module"):
        ContrastiveImageText(loss="clip", init_logit_scale=1.0, model_name=MICRO)


def test_batch_size_one_fails_at_first_batch():
    module = CLIP(model_name=MICRO)
    dm = SyntheticShapes(batch_size=1, train_size=4, zero_shot_size=64, retrieval_size=4)
    with pytest.raises(ValueError, match="at least 2 image-text pairs.*batch size 1"):
        trainer(max_steps=1, limit_val_batches=0).fit(module, dm)


def test_non_finite_features_named():
    module = CLIP(model_name=MICRO)
    b = batch()
    b["image"][0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="`image_features` holds non-finite values"):
        module.per_sample_loss(b)


@pytest.mark.parametrize("module_cls", [CLIP, SigLIP])
def test_fit_and_validate_logs_zero_shot_and_retrieval(module_cls):
    module = module_cls(model_name=MICRO)
    dm = SyntheticShapes(batch_size=8, train_size=16, zero_shot_size=64, retrieval_size=16)
    t = trainer(max_steps=2, num_sanity_val_steps=0)
    t.fit(module, dm)
    metrics = t.callback_metrics
    for key in ("val/zero_shot_top1", "val/zero_shot_top5_rare", "val/i2t_R@1", "val/t2i_R@10"):
        assert key in metrics, sorted(metrics)
        assert 0.0 <= float(metrics[key]) <= 1.0
    assert float(metrics["val/i2t_R@10"]) >= float(metrics["val/i2t_R@1"])
    results = t.test(module, dm, verbose=False)
    assert "test/zero_shot_top1" in results[0]


def test_zero_shot_classifier_is_open_clips():
    module = CLIP(model_name=MICRO).eval()
    classes, templates = ["red circle", "blue star", "green bar"], ["a {}", "one {}"]
    classifier = module.zero_shot_classifier(classes, templates)
    expected = open_clip.build_zero_shot_classifier(
        module.model, module.tokenizer, classes, templates, num_classes_per_batch=2
    )
    torch.testing.assert_close(classifier, expected.T)
    with pytest.raises(ValueError, match="`class_names` is empty"):
        module.zero_shot_classifier([], templates)


def test_zero_shot_uses_given_classes_over_datamodule():
    given = ZeroShotClasses([f"class {i}" for i in range(64)])
    module = CLIP(model_name=MICRO, zero_shot=given)
    dm = SyntheticShapes(batch_size=8, train_size=8, zero_shot_size=64, retrieval_size=8)
    t = trainer(max_steps=1, num_sanity_val_steps=0)
    t.fit(module, dm)
    assert "val/zero_shot_top1" in t.callback_metrics
    assert "val/zero_shot_top1_rare" not in t.callback_metrics  # the datamodule's group
    module.eval()
    expected = module.zero_shot_classifier(given.class_names, DEFAULT_TEMPLATES)
    torch.testing.assert_close(module.evaluation.classifier, expected)
    assert not torch.allclose(expected, module.zero_shot_classifier(dm.class_names, dm.templates))


class ShapesWithoutGroups(SyntheticShapes):
    """A datamodule with class names and templates but no `class_groups` attribute."""

    def __getattribute__(self, name):
        if name == "class_groups":
            raise AttributeError(name)
        return super().__getattribute__(name)


def test_datamodule_must_provide_the_whole_zero_shot_protocol():
    module = CLIP(model_name=MICRO)
    dm = ShapesWithoutGroups(batch_size=8, train_size=8, zero_shot_size=64, retrieval_size=8)
    with pytest.raises(TypeError, match="ShapesWithoutGroups has `class_names` but no `class_gr"):
        trainer(max_steps=1, num_sanity_val_steps=0).fit(module, dm)


def test_datamodule_zero_shot_data_is_read_whole():
    """Zero-shot classes, templates and groups come from the datamodule's protocol."""
    module = CLIP(model_name=MICRO)
    dm = SyntheticShapes(batch_size=8, train_size=8, zero_shot_size=64, retrieval_size=8)
    t = trainer(max_steps=1, num_sanity_val_steps=0)
    t.fit(module, dm)
    module.eval()
    expected = module.zero_shot_classifier(dm.class_names, dm.templates)
    torch.testing.assert_close(module.evaluation.classifier, expected)
    assert module.evaluation.zero_shot.groups == {"rare": sorted(dm.class_groups["rare"])}


def test_cwcl_needs_its_frozen_tower_locked():
    from lightning_plugins.losses import CWCLLoss

    with pytest.raises(ValueError, match="`lock_text` is False"):
        CLIP(model_name=MICRO, loss=CWCLLoss(frozen="text"))
    with pytest.raises(ValueError, match="`lock_image` is False"):
        CLIP(model_name=MICRO, loss=CWCLLoss(frozen="image"), lock_text=True)
    module = CLIP(model_name=MICRO, loss=CWCLLoss(frozen="text"), lock_text=True)
    assert module.per_sample_loss(batch()).shape == (4,)


def test_model_help_lists_our_losses_only(capsys, monkeypatch):
    """`loss` is typed ContrastiveLoss: help lists the losses that fit, not every nn.Module."""
    from lightning_plugins.cli import main

    monkeypatch.setattr("sys.argv", ["lightning-plugins"])
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model=CLIP", "--model.help=CLIP"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for loss in ("ClipLoss", "SigLipLoss", "CWCLLoss"):
        assert f"lightning_plugins.losses.{loss}" in help_text
    assert "torch.nn.Linear" not in help_text and "timm" not in help_text
    assert len(help_text.splitlines()) < 300
