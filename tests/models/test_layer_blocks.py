"""layer_blocks: blocks found from the module structure of timm, open_clip and transformers."""

import pytest
import timm
import torch
from torch import nn
from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

from lightning_plugins.models import (
    SmallConvNet,
    block_lists,
    block_positions,
    create_image_text_model,
    layer_blocks,
)


def expected_blocks(model: nn.Module, prefix: str) -> dict[str, int | None]:
    """Reference: the index right after ``prefix`` in each parameter name, else None."""
    out = {}
    for name, _ in model.named_parameters():
        rest = name[len(prefix) + 1 :] if name.startswith(prefix + ".") else None
        out[name] = int(rest.split(".")[0]) if rest is not None else None
    return out


def test_timm_vit():
    vit = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        depth=3,
        embed_dim=32,
        num_heads=2,
    )
    assert block_lists(vit) == {"blocks": 3}
    blocks = layer_blocks(vit)
    assert blocks == expected_blocks(vit, "blocks")
    assert list(blocks) == [name for name, _ in vit.named_parameters()]
    assert {blocks[n] for n in blocks if n.startswith("blocks.2.")} == {2}
    assert blocks["cls_token"] is None and blocks["norm.weight"] is None


def test_open_clip_towers_each_their_own_stack():
    torch.manual_seed(0)
    clip = create_image_text_model("ViT-Tiny-P8-32", init_logit_scale=2.0)  # 3 + 2 blocks
    assert block_lists(clip) == {"visual.transformer.resblocks": 3, "transformer.resblocks": 2}
    positions = block_positions(clip)
    visual = expected_blocks(clip, "visual.transformer.resblocks")
    text = expected_blocks(clip, "transformer.resblocks")
    for name, position in positions.items():
        if visual[name] is not None:
            assert position == (visual[name], 3), name
        elif text[name] is not None:
            assert position == (text[name], 2), name
        else:
            assert position is None, name
    assert positions["visual.conv1.weight"] is None and positions["logit_scale"] is None
    assert positions["token_embedding.weight"] is None
    # a single tower (the shipped 1-layer config)
    micro = create_image_text_model("ViT-Micro-P8-32", init_logit_scale=2.0)
    tower = layer_blocks(micro.visual)
    assert tower == expected_blocks(micro.visual, "transformer.resblocks")
    assert set(tower.values()) == {None, 0}


def test_transformers_layer_lists():
    gpt2 = GPT2Model(
        GPT2Config(
            n_layer=2,
            n_embd=16,
            n_head=2,
            vocab_size=64,
            n_positions=16,
            bos_token_id=0,
            eos_token_id=0,
        )
    )
    assert layer_blocks(gpt2) == expected_blocks(gpt2, "h")
    bert = BertModel(
        BertConfig(
            vocab_size=64,
            hidden_size=16,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=32,
        )
    )
    assert block_lists(bert) == {"encoder.layer": 3}
    assert layer_blocks(bert) == expected_blocks(bert, "encoder.layer")


class WithHeads(nn.Module):
    """Blocks holding an inner list, and a list of linear heads that are no blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 4)
        self.stages = nn.Sequential(*[self._block() for _ in range(4)])
        self.heads = nn.ModuleList([nn.Linear(4, 2) for _ in range(3)])

    @staticmethod
    def _block() -> nn.Module:
        block = nn.Module()
        block.experts = nn.ModuleList([nn.Sequential(nn.Linear(4, 4), nn.ReLU()) for _ in range(2)])
        return block


def test_outermost_lists_only_and_leaf_lists_ignored():
    model = WithHeads()
    assert block_lists(model) == {"stages": 4}
    blocks = layer_blocks(model)
    assert blocks["stages.3.experts.1.0.weight"] == 3
    assert blocks["heads.0.weight"] is None and blocks["stem.bias"] is None


def test_user_mapping_dict_and_function():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2), nn.Linear(2, 1))
    mapping = {"0": 0, "2": 1, "2.bias": 2}  # the longest prefix wins
    assert layer_blocks(model, mapping) == {
        "0.weight": 0,
        "0.bias": 0,
        "2.weight": 1,
        "2.bias": 2,
        "3.weight": None,
        "3.bias": None,
    }
    assert block_positions(model, mapping)["2.weight"] == (1, 3)
    by_function = layer_blocks(model, lambda name: 0 if name.startswith("3.") else None)
    assert by_function["3.weight"] == 0 and by_function["0.weight"] is None
    # a mapping overrides the structure (one stack across both towers of a CLIP, say)
    vit = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        depth=2,
        embed_dim=16,
        num_heads=2,
    )
    assert set(layer_blocks(vit, {"patch_embed": 0, "blocks": 1}).values()) == {None, 0, 1}


def test_bad_input():
    with pytest.raises(ValueError, match=r"Found no blocks in SmallConvNet: looked for .*timm"):
        layer_blocks(SmallConvNet())
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    with pytest.raises(ValueError, match=r"`mapping` entry 'encoder' names no module"):
        layer_blocks(model, {"encoder": 0})
    with pytest.raises(ValueError, match=r"`mapping\['0'\]` must be a non-negative integer"):
        layer_blocks(model, {"0": -1})
    with pytest.raises(TypeError, match="`mapping` must be a dict"):
        layer_blocks(model, ["0"])
    with pytest.raises(TypeError, match=r"`mapping\('0.weight'\)` must be an integer"):
        layer_blocks(model, lambda name: "zero")
    with pytest.raises(ValueError, match="assigns none of the 4 parameters"):
        layer_blocks(model, lambda name: None)
