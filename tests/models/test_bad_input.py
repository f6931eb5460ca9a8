"""Bad input to the model builders: broken or foreign `pretrained` files, unknown tower
names, a `context_length` the text tower does not have, and settings of the wrong kind."""

from __future__ import annotations

import pytest
import torch

from lightning_plugins.models import (
    ImageTextTowers,
    create_image_text_model,
    create_tokenizer,
    resolve_path,
)
from tests.models.test_image_text_model import tiny_bert  # noqa: F401 - a fixture

MICRO = "ViT-Micro-P8-32"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Checkpoint files, each broken in its own way, keyed by what is wrong with them."""
    root = tmp_path_factory.mktemp("pretrained")
    tiny = create_image_text_model("ViT-Tiny-P8-32", init_logit_scale=1.0)
    torch.save(tiny.state_dict(), root / "other_architecture.pt")
    good = (root / "other_architecture.pt").read_bytes()
    (root / "empty.pt").write_bytes(b"")
    (root / "truncated.pt").write_bytes(good[: len(good) // 3])
    (root / "text.pt").write_text("weights: none\n")
    damaged = bytearray(good)
    damaged[3000:3400] = b"x" * 400  # inside the archive: its directory is still whole
    (root / "damaged.pt").write_bytes(bytes(damaged))
    torch.save({}, root / "empty_dict.pt")
    torch.save([1, 2], root / "list.pt")
    micro = create_image_text_model(MICRO, init_logit_scale=1.0)
    lightning = {"state_dict": {"model." + k: v for k, v in micro.state_dict().items()}}
    torch.save(lightning, root / "lightning_module.ckpt")
    return root


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("empty.pt", r"`pretrained`='.*empty.pt' is an empty file \(0 bytes\)"),
        ("truncated.pt", r"`pretrained`='.*truncated.pt' is no readable checkpoint.*truncated"),
        ("text.pt", r"`pretrained`='.*text.pt' is no readable checkpoint"),
        ("damaged.pt", r"`pretrained`='.*damaged.pt' could not be read as a checkpoint"),
        ("empty_dict.pt", r"`pretrained`='.*empty_dict.pt' holds dict \{\}, not a state dict"),
        ("list.pt", r"`pretrained`='.*list.pt' holds list \[1, 2\], not a state dict"),
        (
            "other_architecture.pt",
            r"another architecture than 'ViT-Micro-P8-32': \d+ unexpected keys such as .*"
            r"shapes differ, e.g. \['positional_embedding: \(32, 96\) in the file, \(16, 32\)",
        ),
        ("lightning_module.ckpt", r"missing keys .*start with 'model.'.*load_from_checkpoint"),
    ],
)
def test_a_broken_or_foreign_pretrained_file_is_named(files, name, match):
    towers = ImageTextTowers(model_name=MICRO, pretrained=str(files / name))
    with pytest.raises(ValueError, match=match):
        create_image_text_model(towers, init_logit_scale=1.0)


@pytest.mark.parametrize(
    ("image_tower", "close"),
    [("test_vitt", "'test_vit'"), ("resnet_18", "'resnet18'"), ("zzzz_qqqq", None)],
)
def test_an_unknown_timm_tower_lists_close_matches(image_tower, close):
    towers = ImageTextTowers(image_tower=image_tower, text_tower="/no/such/folder")
    match = rf"`image_tower`='{image_tower}' is not a timm model name\."
    match += rf" Close matches: \[.*{close}" if close else " See timm.list_models"
    with pytest.raises(ValueError, match=match):
        create_image_text_model(towers, init_logit_scale=1.0)


def test_a_context_length_beyond_the_configs_positions(tmp_path):
    towers = ImageTextTowers(model_name=MICRO, context_length=17)
    with pytest.raises(ValueError, match="`context_length`=17 is larger than .*has 16 positions"):
        create_image_text_model(towers, init_logit_scale=1.0)


def test_a_shorter_context_length_builds_a_model_that_reads_it():
    towers = ImageTextTowers(model_name=MICRO, context_length=12)
    model = create_image_text_model(towers, init_logit_scale=1.0)
    tokens = create_tokenizer(towers)(["a red circle"])
    assert tokens.shape == (1, 12) and model.encode_text(tokens).shape == (1, 32)


def test_a_context_length_beyond_the_hf_towers_positions(tiny_bert):  # noqa: F811
    towers = ImageTextTowers(
        image_tower="test_resnet", text_tower=tiny_bert, embed_dim=8, context_length=129
    )
    with pytest.raises(ValueError, match=r"`context_length`=129 .*which has 128 positions"):
        create_image_text_model(towers, init_logit_scale=1.0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"model_name": 3}, TypeError, "`model_name` must be a string or None, got 3"),
        ({"model_name": MICRO, "pretrained": 1}, TypeError, "`pretrained` must be a string"),
        ({"model_name": MICRO, "context_length": 0}, ValueError, "`context_length` must be a"),
        ({"model_name": MICRO, "image_size": True}, TypeError, "`image_size` must be an integer"),
        ({"model_name": MICRO, "embed_dim": -1}, ValueError, "`embed_dim` must be a positive"),
        ({}, ValueError, "Give `model_name`, or both `image_tower`"),
        ({"text_tower": "bert"}, ValueError, "Give `model_name`, or both"),
        ({"model_name": MICRO, "text_tower": "bert"}, ValueError, "not both"),
        (
            {"image_tower": "x", "text_tower": "y", "image_tower_weights": 2},
            TypeError,
            "`image_tower_weights` must be a string or None",
        ),
    ],
)
def test_towers_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        ImageTextTowers(**kwargs)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: create_image_text_model(3, init_logit_scale=1.0), TypeError, "`towers` must"),
        (lambda: create_image_text_model(MICRO, init_logit_scale=None), TypeError, "`init_l"),
        (
            lambda: create_image_text_model(MICRO, init_logit_scale=float("nan")),
            ValueError,
            "`init_logit_scale` must be a finite number",
        ),
        (
            lambda: create_image_text_model(MICRO, init_logit_scale=1.0, init_logit_bias="0"),
            TypeError,
            "`init_logit_bias` must be a number or None",
        ),
        (lambda: create_image_text_model("ViT-Micro", init_logit_scale=1.0), ValueError, MICRO),
        (lambda: create_tokenizer(None), TypeError, "`towers` must be an ImageTextTowers"),
        (lambda: create_tokenizer("ViT-Micro-P8"), ValueError, "Close matches"),
        (lambda: resolve_path("pkg:/x"), ValueError, "names no package"),
        (lambda: resolve_path("pkg:no_such_package_xyz/a"), ValueError, "is not installed"),
        (
            lambda: create_image_text_model(
                ImageTextTowers(model_name=MICRO, pretrained="laion_nope"), init_logit_scale=1.0
            ),
            ValueError,
            "neither an existing file nor a pretrained tag",
        ),
    ],
)
def test_builder_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_a_broken_image_tower_weights_file_is_named(files):
    towers = ImageTextTowers(
        image_tower="test_resnet",
        text_tower="/no/such/folder",
        image_tower_weights=str(files / "truncated.pt"),
    )
    with pytest.raises(ValueError, match=r"`image_tower_weights`='.*truncated.pt' is no readable"):
        create_image_text_model(towers, init_logit_scale=1.0)
