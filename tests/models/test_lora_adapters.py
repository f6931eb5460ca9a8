"""Gated LoRA adapters through peft on a tiny timm ViT and an open_clip model (issue 16):
the adapted forward against W + s B diag(w) A written out, merging, exact pruning, fresh
adapters after a merge, gradients, and bad input."""

from __future__ import annotations

import copy
import re

import pytest
import timm
import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from lightning_plugins.functional import soft_threshold_
from lightning_plugins.models import (
    active_ranks,
    adapter_parameter_count,
    adapter_parameters,
    add_gated_lora,
    create_image_text_model,
    gates,
    lora_targets,
    merge_and_reset_,
    merge_lora_,
    parameter_count,
    prune_ranks_,
)

RANK, ALPHA = 4, 8.0


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        depth=2,
        embed_dim=32,
        num_heads=2,
        num_classes=0,
    ).eval()


def micro_clip() -> nn.Module:
    torch.manual_seed(0)
    return create_image_text_model("ViT-Micro-P8-32", init_logit_scale=1.0).eval()


IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
TOKENS = torch.randint(1, 49000, (2, 16), generator=torch.Generator().manual_seed(2))


def run(model: nn.Module) -> torch.Tensor:
    if hasattr(model, "encode_text"):
        return torch.cat([model.encode_image(IMAGES), model.encode_text(TOKENS)])
    return model(IMAGES)


MODELS = {"timm": tiny_vit, "open_clip": micro_clip}


def module_types(model: nn.Module) -> list[tuple[str, type]]:
    return [(name, type(module)) for name, module in model.named_modules()]


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> None:
    """Non-zero B (peft starts it at zero), and gates away from one, some negative."""
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in model.named_parameters():
        if ".lora_B." in name:
            parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    for gate in gates(model).values():
        gate.copy_(torch.randn(gate.shape, generator=generator))


def reference_weights(adapted: nn.Module, base: nn.Module) -> dict[str, torch.Tensor]:
    """base's state with W + (alpha / r) B diag(w) A added, read off peft's layers."""
    state = {name: tensor.clone() for name, tensor in base.state_dict().items()}
    for name, layer in adapted.named_modules():
        if not isinstance(layer, LoraLayer):
            continue
        lora_a = layer.lora_A["default"]
        if hasattr(lora_a, "parametrizations"):
            factor = lora_a.parametrizations.weight.original
            factor = lora_a.parametrizations.weight[0].gate[:, None] * factor
        else:
            factor = lora_a.weight
        delta = layer.scaling["default"] * layer.lora_B["default"].weight @ factor
        original = re.sub(r"\.base_layer", "", name)
        key = (
            f"{original}.in_proj_weight"
            if hasattr(layer, "in_proj_weight")
            else f"{original}.weight"
        )
        state[key] = state[key] + delta.detach()
    return state


def test_default_targets_timm():
    assert lora_targets(tiny_vit()) == [
        f"blocks.{b}.{m}" for b in (0, 1) for m in ("attn.proj", "attn.qkv", "mlp.fc1", "mlp.fc2")
    ]


def test_default_targets_open_clip():
    expected = [
        f"{tower}transformer.resblocks.0.{m}"
        for tower in ("", "visual.")
        for m in ("attn", "mlp.c_fc", "mlp.c_proj")
    ]
    assert lora_targets(micro_clip()) == expected


@pytest.mark.parametrize("kind", MODELS)
def test_adapted_forward_merge_and_fresh_adapters(kind):
    model = MODELS[kind]()
    base = copy.deepcopy(model)
    types_before = module_types(model)
    count_before = parameter_count(model)
    expected_out = run(model)

    add_gated_lora(model, rank=RANK, alpha=ALPHA)
    assert type(model) is type(base)
    torch.testing.assert_close(run(model), expected_out, rtol=0, atol=0)  # B = 0, gates = 1
    randomize_(model)
    adapted = run(model)
    assert not torch.allclose(adapted, expected_out, atol=1e-3)

    # the adapted forward is the base model with W + s B diag(w) A (each delta once)
    reference = copy.deepcopy(base)
    reference.load_state_dict(reference_weights(model, base))
    torch.testing.assert_close(adapted, run(reference), rtol=0, atol=1e-5)

    merge_lora_(model)
    assert module_types(model) == types_before
    assert not any(isinstance(m, LoraLayer) for m in model.modules())
    assert not hasattr(model, "peft_config")
    assert parameter_count(model) == count_before
    merged = run(model)
    torch.testing.assert_close(merged, adapted, rtol=0, atol=1e-5)

    # fresh adapters on the merged weights: the same output until they are trained (up to
    # rounding: a frozen nn.MultiheadAttention in eval takes torch's fused fast path, one with
    # adapters the composite path)
    add_gated_lora(model, rank=2, alpha=2.0)
    assert set(active_ranks(model).values()) == {2}
    torch.testing.assert_close(run(model), merged, rtol=0, atol=1e-5 if kind == "open_clip" else 0)


@pytest.mark.parametrize("kind", MODELS)
def test_prune_zero_gates_exactly(kind):
    model = add_gated_lora(MODELS[kind](), rank=RANK, alpha=ALPHA)
    randomize_(model)
    layer_gates = gates(model)
    names = sorted(layer_gates)
    for i, name in enumerate(names):  # zero 0, 1, 2, ... ranks; the fifth layer all of them
        layer_gates[name].data[: i % (RANK + 1)] = 0.0
    kept = {name: layer_gates[name].detach()[layer_gates[name] != 0].clone() for name in names}
    before = run(model)
    count_before = adapter_parameter_count(model)

    remaining = prune_ranks_(model)
    assert remaining == {name: RANK - i % (RANK + 1) for i, name in enumerate(names)}
    assert active_ranks(model) == remaining
    for name, gate in gates(model).items():
        torch.testing.assert_close(gate.detach(), kept[name], rtol=0, atol=0)
    assert adapter_parameter_count(model) < count_before
    # the removed terms are exact zeros; shorter matmuls may sum in another order
    torch.testing.assert_close(run(model), before, rtol=0, atol=1e-6)

    # pruned adapters still merge to the same function
    merged = run(merge_lora_(model))
    torch.testing.assert_close(merged, before, rtol=0, atol=1e-5)


def test_soft_threshold_on_gates_and_pruned_shapes():
    model = add_gated_lora(tiny_vit(), ["blocks.0.attn.qkv"], rank=RANK)
    gate = gates(model)["blocks.0.attn.qkv"]
    gate.data = torch.tensor([1.0, 0.1, -0.05, -2.0])
    soft_threshold_(gate, 0.2)
    assert active_ranks(model) == {"blocks.0.attn.qkv": 2}
    prune_ranks_(model)
    layer = model.blocks[0].attn.qkv
    assert tuple(layer.lora_A["default"].weight.shape) == (2, 32)
    assert tuple(layer.lora_B["default"].weight.shape) == (96, 2)
    assert layer.r["default"] == 2
    assert layer.scaling["default"] == 1.0  # alpha / rank of the adapter as created


@pytest.mark.parametrize("kind", MODELS)
def test_gradients_reach_adapters_only_and_base_untouched(kind):
    model = add_gated_lora(MODELS[kind](), rank=RANK)
    randomize_(model)
    base = {
        name: (p, p.detach().clone())
        for name, p in model.named_parameters()
        if ".lora_" not in name
    }
    for _ in range(3):  # forwards must not change the frozen weights (peft's MHA layer does)
        run(model)
    run(model).square().sum().backward()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {name for name, p in model.named_parameters() if ".lora_" in name}
    kinds = {"original": 0, "gate": 0, "lora_B": 0}
    for name, parameter in model.named_parameters():
        if ".lora_" in name:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
            kinds[
                "gate" if name.endswith(".gate") else "lora_B" if ".lora_B." in name else "original"
            ] += 1
        else:
            assert parameter.grad is None, name
    assert min(kinds.values()) > 0
    current = dict(model.named_parameters())
    for name, (parameter, value) in base.items():
        assert current[name] is parameter, name
        torch.testing.assert_close(parameter.detach(), value, rtol=0, atol=0)


def test_freeze_base_false_keeps_flags_and_plain_lora():
    model = tiny_vit()
    model.blocks[0].norm1.weight.requires_grad_(False)
    add_gated_lora(model, rank=3, gated=False, freeze_base=False)
    flags = dict((n, p.requires_grad) for n, p in model.named_parameters())
    assert flags["blocks.0.norm1.weight"] is False
    assert flags["blocks.1.norm1.weight"] is True
    assert flags["blocks.0.attn.qkv.base_layer.weight"] is True
    assert gates(model) == {}
    assert set(active_ranks(model).values()) == {3}
    # A: 3 x in, B: out x 3 per layer; qkv 32->96, proj 32->32, fc1 32->128, fc2 128->32
    assert adapter_parameter_count(model) == 2 * 3 * (
        (32 + 96) + (32 + 32) + (32 + 128) + (128 + 32)
    )


def test_bad_targets_list_the_modules():
    with pytest.raises(ValueError, match=r"`targets` entry 'q_proj'.*'blocks.0.attn.qkv'.*\(8\)"):
        add_gated_lora(tiny_vit(), ["qkv", "q_proj"])
    with pytest.raises(
        ValueError, match=r"out-projection.*attention '(visual\.)?transformer.resblocks.0.attn'"
    ):
        lora_targets(micro_clip(), ["transformer.resblocks.0.attn.out_proj"])
    with pytest.raises(ValueError, match=r"`targets` is None.*'0', '1'"):
        lora_targets(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))
    with pytest.raises(TypeError, match="`targets`"):
        lora_targets(tiny_vit(), [3])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rank": 0}, ValueError, r"`rank` must be a positive integer, got 0"),
        ({"rank": 2.5}, TypeError, r"`rank`"),
        ({"alpha": 0.0}, ValueError, r"`alpha`"),
        ({"dropout": 1.0}, ValueError, r"`dropout`"),
        ({"gated": "yes"}, TypeError, r"`gated`"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        add_gated_lora(nn.Sequential(nn.Linear(2, 2)), ["0"], **kwargs)


def test_adding_twice_without_merge_is_an_error():
    model = add_gated_lora(nn.Sequential(nn.Linear(2, 2)), ["0"], rank=1)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        add_gated_lora(model, ["0"], rank=1)


@pytest.mark.parametrize("kind", MODELS)
def test_state_dict_round_trip_and_deepcopy(kind):
    """A mid-task checkpoint: gates and adapters load into a freshly adapted model."""
    model = add_gated_lora(MODELS[kind](), rank=RANK)
    randomize_(model, seed=3)
    expected = run(model)
    state = model.state_dict()
    assert any(key.endswith(".gate") for key in state)
    fresh = add_gated_lora(MODELS[kind](), rank=RANK)
    fresh.load_state_dict(state)
    torch.testing.assert_close(run(fresh), expected, rtol=0, atol=0)
    torch.testing.assert_close(run(copy.deepcopy(model)), expected, rtol=0, atol=0)


@pytest.mark.parametrize("kind", MODELS)
def test_merge_and_reset_keeps_the_forward_and_resets_in_place(kind):
    model = add_gated_lora(MODELS[kind](), rank=RANK, alpha=ALPHA)
    randomize_(model)
    gates(model)[sorted(gates(model))[0]].data[0] = 0.0  # a zero gate folds as nothing
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    run(model).square().sum().backward()
    optimizer.step()
    before, parameters = run(model).detach(), dict(model.named_parameters())
    base = copy.deepcopy(model)
    merged_copy = merge_lora_(copy.deepcopy(model))  # a merged deepcopy leaves model intact
    torch.testing.assert_close(run(merged_copy), before, rtol=0, atol=1e-5)

    merge_and_reset_(model, [optimizer], torch.Generator().manual_seed(3))
    torch.testing.assert_close(run(model), before, rtol=0, atol=1e-5)
    assert dict(model.named_parameters()) == parameters  # the same Parameter objects
    adapters = adapter_parameters(model)
    assert adapters and not any(p in optimizer.state for p in adapters)
    for name, value in model.state_dict().items():
        if ".lora_B." in name:
            assert not value.any(), name
    assert all(torch.equal(g.detach(), torch.ones(RANK)) for g in gates(model).values())
    assert set(active_ranks(model).values()) == {RANK}
    again = merge_and_reset_(copy.deepcopy(base), generator=torch.Generator().manual_seed(3))
    state, other_state = model.state_dict(), again.state_dict()
    for (name, value), other in zip(state.items(), other_state.values(), strict=True):
        if ".lora_A." in name:  # A drawn from the generator: the same for the same seed
            assert torch.equal(value, other), name
    # merged weights: the reference fold W + s B diag(w) A of the adapted model
    reference = copy.deepcopy(MODELS[kind]())
    reference.load_state_dict(reference_weights(base, reference))
    torch.testing.assert_close(run(model), run(reference), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        merge_and_reset_(MODELS[kind]())
