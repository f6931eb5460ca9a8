"""Gated LoRA adapters (CoDyRA) on timm and open_clip models, through peft.

An adapted layer computes ``W x + s * B diag(w) A x`` with peft's LoRA factors ``A``
(``rank x in``), ``B`` (``out x rank``, zero at start), peft's scale ``s = alpha / rank`` and a
learnable gate ``w`` per rank (one at start). The gate is a parametrization of peft's
``lora_A`` weight (``torch.nn.utils.parametrize``: ``lora_A.weight`` reads ``diag(w) A``), so
every peft code path that uses ``A`` (the LoRA forward, ``get_delta_weight``, ``merge``) sees
the gated factor. Zero gates are pruned exactly (:func:`prune_ranks_`), and
:func:`merge_lora_` folds the gates into ``A``, merges with peft's merge and unloads the
adapters, leaving the model's own module classes.

Adapters are injected with ``peft.inject_adapter_in_model``, which replaces the target
layers in place and returns the model itself: its class, its ``forward`` and its other
attributes stay as they were (``get_peft_model`` would wrap it in a ``PeftModel``).

``nn.MultiheadAttention`` (open_clip's attention): peft's LoRA layer for it adapts the packed
``in_proj_weight`` (q, k, v) and ``out_proj`` together, by merging the deltas into the
weights before each forward and subtracting them after. In peft 0.21 that layer adds the
``out_proj`` delta twice (``W + 2 dW``, in the forward and in ``merge``; huggingface/peft PR
#3774), its subtract-after-forward changes the frozen base weights by float rounding on
every call, and it replaces the base ``Parameter`` objects on every forward, ``state_dict()``
and ``named_modules()``. So the attention targets are wrapped by a subclass of peft's layer
(registered through ``LoraConfig._register_custom_module``) that keeps peft's adapters,
scaling and unloading but runs the forward with ``torch.func.functional_call`` on
``W + dW`` (the base parameters are never modified nor re-registered) and merges each delta
once. LoRA dropout does not apply to attention targets (as in peft's layer).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from peft.tuners.lora.layer import MultiheadAttention as PeftMultiheadAttention
from peft.tuners.tuners_utils import check_adapters_to_merge
from torch import nn
from torch.nn.utils import parametrize

from lightning_plugins.functional._checks import check_bool, check_float, check_int

__all__ = [
    "RankGate",
    "active_adapter_parameter_count",
    "active_ranks",
    "adapter_parameter_count",
    "adapter_parameters",
    "add_gated_lora",
    "gates",
    "lora_targets",
    "merge_and_reset_",
    "merge_lora_",
    "parameter_count",
    "prune_ranks_",
]

ADAPTER = "default"
_TIMM_LINEARS = frozenset({"qkv", "proj", "fc1", "fc2"})
_OPEN_CLIP_LINEARS = frozenset({"c_fc", "c_proj"})
_SHOWN_NAMES = 8


class RankGate(nn.Module):
    """Parametrization ``A -> diag(gate) A`` of a LoRA ``A`` factor: one gate per rank.

    Args:
        rank: the number of rows of ``A``.

    Example:
        >>> gate = RankGate(2)
        >>> gate.gate.data = torch.tensor([2.0, 0.0])
        >>> gate(torch.ones(2, 3)).detach()
        tensor([[2., 2., 2.],
                [0., 0., 0.]])
    """

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.ones(check_int(rank, "rank", low=1)))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """The gated factor ``gate[:, None] * weight``."""
        return self.gate.unsqueeze(1).to(weight.dtype) * weight


class _MultiheadAttentionLora(PeftMultiheadAttention):
    """peft's ``nn.MultiheadAttention`` LoRA layer with an exact forward and a single merge.

    The forward calls the base attention through ``functional_call`` with
    ``in_proj_weight + dW_in`` and ``out_proj.weight + dW_out``; the base parameters are not
    modified. ``merge`` adds each delta once, in place.
    """

    def _deltas(self, adapters: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        base = self.get_base_layer()
        out_proj = base.out_proj
        delta_in = torch.zeros_like(base.in_proj_weight)
        delta_out = torch.zeros_like(out_proj.get_base_layer().weight)
        for adapter in adapters:
            delta_in = delta_in + self.get_delta_weight(adapter).to(delta_in.dtype)
            delta_out = delta_out + out_proj.get_delta_weight(adapter).to(delta_out.dtype)
        return delta_in, delta_out

    def forward(self, query: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """The attention with the active adapters' deltas added to its weights."""
        self._check_forward_args(query, *args, **kwargs)
        base = self.get_base_layer()
        if self.disable_adapters and self.merged:
            self.unmerge()
        adapters = [adapter for adapter in self.active_adapters if adapter in self.lora_A]
        if self.disable_adapters or self.merged or not adapters:
            return base(query, *args, **kwargs)
        delta_in, delta_out = self._deltas(adapters)
        weights = {
            "in_proj_weight": base.in_proj_weight + delta_in,
            "out_proj.base_layer.weight": base.out_proj.get_base_layer().weight + delta_out,
        }
        return torch.func.functional_call(base, weights, (query, *args), kwargs, strict=False)

    @torch.no_grad()
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Add the adapters' deltas to ``in_proj_weight`` and (through peft) ``out_proj``."""
        base = self.get_base_layer()
        for adapter in check_adapters_to_merge(self, adapter_names):
            if adapter not in self.lora_A:
                continue
            delta = self.get_delta_weight(adapter).to(base.in_proj_weight.dtype)
            if safe_merge and not torch.isfinite(base.in_proj_weight + delta).all():
                raise ValueError(
                    f"NaNs or infinities in the merged weights of adapter {adapter!r}."
                )
            base.in_proj_weight.add_(delta)
            base.out_proj.merge(safe_merge=safe_merge, adapter_names=[adapter])
            self.merged_adapters.append(adapter)

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the merged adapters' deltas again."""
        base = self.get_base_layer()
        while self.merged_adapters:
            adapter = self.merged_adapters.pop()
            if adapter in self.lora_A:
                base.in_proj_weight.sub_(
                    self.get_delta_weight(adapter).to(base.in_proj_weight.dtype)
                )
        base.out_proj.unmerge()

    def _restore_weights(self) -> None:
        """Nothing to restore: the base parameters are never unregistered here.

        peft's layer re-creates the base ``Parameter`` objects on every ``state_dict()`` and
        ``named_modules()`` call, since its forward unregisters them.
        """

    def unload_and_optionally_merge_module(
        self, merge: bool, safe_merge: bool, adapter_names: list[str] | None
    ) -> nn.MultiheadAttention:
        """Merge if asked, then return the base attention with its own ``out_proj``."""
        if merge:
            self.merge(safe_merge=safe_merge, adapter_names=adapter_names)
        base = self.get_base_layer()
        base.out_proj = base.out_proj.get_base_layer()
        return base


def _in_blocks(name: str, containers: tuple[str, ...]) -> bool:
    parts = name.split(".")
    return any(part in containers and index.isdigit() for part, index in itertools.pairwise(parts))


def _adaptable(model: nn.Module) -> dict[str, nn.Module]:
    """The modules that can carry an adapter: Linear layers and MultiheadAttention."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, nn.MultiheadAttention)) and name
    }


def _describe(names: Sequence[str]) -> str:
    shown = ", ".join(repr(name) for name in names[:_SHOWN_NAMES])
    more = f", ... ({len(names)} in all)" if len(names) > _SHOWN_NAMES else f" ({len(names)})"
    return (shown + more) if names else "none"


def lora_targets(model: nn.Module, targets: str | Sequence[str] | None = None) -> list[str]:
    """The full names of the modules of ``model`` to adapt.

    Without ``targets`` they are found from the structure: in timm models the Linear layers
    ``qkv``, ``proj``, ``fc1`` and ``fc2`` inside ``blocks.N``; in open_clip towers the
    ``nn.MultiheadAttention`` of each ``resblocks.N`` (its q/k/v in-projection and
    out-projection) and the MLP Linear layers ``c_fc`` and ``c_proj``. A name in
    ``targets`` selects every Linear or MultiheadAttention module whose full name equals it
    or ends with ``"." + name`` (peft's rule).

    Args:
        model: the model.
        targets: module names (or one name); ``None`` for the defaults.

    Returns:
        The sorted, distinct module names.

    Raises:
        TypeError: for ``targets`` that are not strings.
        ValueError: for a name that matches no Linear or MultiheadAttention module, for the
            ``out_proj`` of a MultiheadAttention (target the attention instead), or when the
            defaults find nothing; the message lists the modules that exist.

    Example:
        >>> import timm
        >>> vit = timm.create_model(
        ...     "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1,
        ...     embed_dim=32, num_heads=2, num_classes=0,
        ... )
        >>> lora_targets(vit)
        ['blocks.0.attn.proj', 'blocks.0.attn.qkv', 'blocks.0.mlp.fc1', 'blocks.0.mlp.fc2']
        >>> lora_targets(vit, ["qkv"])
        ['blocks.0.attn.qkv']
    """
    modules = _adaptable(model)
    if targets is None:
        found = [
            name
            for name, module in modules.items()
            if (isinstance(module, nn.MultiheadAttention) and _in_blocks(name, ("resblocks",)))
            or (
                isinstance(module, nn.Linear)
                and name.rpartition(".")[2] in _TIMM_LINEARS
                and _in_blocks(name, ("blocks",))
            )
            or (
                isinstance(module, nn.Linear)
                and name.rpartition(".")[2] in _OPEN_CLIP_LINEARS
                and _in_blocks(name, ("resblocks",))
            )
        ]
        if not found:
            raise ValueError(
                f"`targets` is None but {type(model).__name__} has no timm blocks "
                "(`blocks.N` with qkv/proj/fc1/fc2) or open_clip blocks (`resblocks.N` with "
                "attention and c_fc/c_proj); pass module names. Linear and MultiheadAttention "
                f"modules: {_describe(sorted(modules))}."
            )
        return sorted(found)
    names = [targets] if isinstance(targets, str) else list(targets)
    if not names or not all(isinstance(name, str) and name for name in names):
        raise TypeError(f"`targets` must be None or non-empty module names, got {targets!r}.")
    attention = {
        name for name, module in modules.items() if isinstance(module, nn.MultiheadAttention)
    }
    found: set[str] = set()
    for target in names:
        matches = [name for name in modules if name == target or name.endswith("." + target)]
        if not matches:
            raise ValueError(
                f"`targets` entry {target!r} matches no nn.Linear or nn.MultiheadAttention "
                f"module of {type(model).__name__}; the modules are: {_describe(sorted(modules))}."
            )
        for name in matches:
            if name.rpartition(".")[0] in attention:
                raise ValueError(
                    f"`targets` entry {target!r} selects {name!r}, the out-projection of a "
                    "MultiheadAttention, which its attention calls without its forward; "
                    f"target the attention {name.rpartition('.')[0]!r} instead (it adapts the "
                    "in- and out-projections)."
                )
        found.update(matches)
    return sorted(found)


def _lora_layers(model: nn.Module) -> Iterator[tuple[str, LoraLayer]]:
    """(readable name, peft layer) for each layer holding our adapter's A and B.

    The name is the adapted weight's module name in the base model: ``.base_layer`` dropped,
    ``.in_proj`` appended for the packed q/k/v projection of a MultiheadAttention.
    """
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and ADAPTER in module.lora_A:
            readable = re.sub(r"(^|\.)base_layer(?=\.|$)", "", name).lstrip(".")
            if isinstance(module, PeftMultiheadAttention):
                readable = f"{readable}.in_proj"
            yield readable, module


def _rank_gate(layer: LoraLayer) -> RankGate | None:
    lora_a = layer.lora_A[ADAPTER]
    if not parametrize.is_parametrized(lora_a, "weight"):
        return None
    return lora_a.parametrizations.weight[0]


def add_gated_lora(
    model: nn.Module,
    targets: str | Sequence[str] | None = None,
    rank: int = 8,
    alpha: float | None = None,
    dropout: float = 0.0,
    gated: bool = True,
    freeze_base: bool = True,
) -> nn.Module:
    """Add LoRA adapters with peft, each with a gate per rank, to ``model`` in place.

    Each target layer then computes ``W x + (alpha / rank) * B diag(w) A x``; ``B`` starts at
    zero and the gates ``w`` at one (so the output is unchanged), ``A`` as peft initialises
    it. The model keeps its class and forward (``peft.inject_adapter_in_model``).

    Args:
        model: the model, changed in place.
        targets: module names for :func:`lora_targets`; ``None`` for the defaults.
        rank: the adapters' rank, at least 1.
        alpha: peft's ``lora_alpha``; ``None`` for ``rank`` (scale 1).
        dropout: peft's ``lora_dropout`` on the input of Linear targets, in ``[0, 1)``.
        gated: add the per-rank gates; ``False`` for plain LoRA.
        freeze_base: make only the adapters trainable (peft's default); ``False`` keeps every
            other parameter's ``requires_grad`` as it was.

    Returns:
        ``model``.

    Raises:
        ValueError: for ``rank < 1``, a bad ``alpha`` or ``dropout``, targets that match no
            module (see :func:`lora_targets`), or a model that already has adapters (call
            :func:`merge_lora_` first).

    Example:
        >>> import timm
        >>> vit = timm.create_model(
        ...     "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1,
        ...     embed_dim=32, num_heads=2, num_classes=0,
        ... )
        >>> vit = add_gated_lora(vit, ["qkv"], rank=4)
        >>> type(vit).__name__, active_ranks(vit)
        ('VisionTransformer', {'blocks.0.attn.qkv': 4})
        >>> adapter_parameter_count(vit)  # A: 4 x 32, B: 96 x 4, gate: 4
        516
    """
    rank = check_int(rank, "rank", low=1)
    alpha = float(rank) if alpha is None else check_float(alpha, "alpha", low=0.0, low_open=True)
    dropout = check_float(dropout, "dropout", low=0.0, high=1.0, high_open=True)
    gated = check_bool(gated, "gated")
    freeze_base = check_bool(freeze_base, "freeze_base")
    if any(isinstance(module, LoraLayer) for module in model.modules()):
        raise ValueError(
            "`model` already has LoRA adapters; merge them with `merge_lora_(model)` (or remove "
            "them) before adding new ones."
        )
    names = lora_targets(model, targets)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules="|".join(re.escape(name) for name in names),
        bias="none",
    )
    config._register_custom_module({nn.MultiheadAttention: _MultiheadAttentionLora})
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    if not freeze_base:
        for name, parameter in model.named_parameters():
            original = re.sub(r"(^|\.)base_layer(?=\.|$)", "", name).lstrip(".")
            if name in flags or original in flags:
                parameter.requires_grad_(flags.get(name, flags.get(original, False)))
    if gated:
        for _, layer in _lora_layers(model):
            lora_a = layer.lora_A[ADAPTER]
            gate = RankGate(rank).to(device=lora_a.weight.device, dtype=lora_a.weight.dtype)
            parametrize.register_parametrization(lora_a, "weight", gate)
    return model


def gates(model: nn.Module) -> dict[str, nn.Parameter]:
    """The rank gates of ``model``'s gated adapters, by adapted layer.

    The values are the gate ``Parameter`` objects themselves: soft-thresholding them in place
    (:func:`~lightning_plugins.functional.soft_threshold_`) changes the model. Layer names
    are the adapted modules' names in the base model (``….attn.in_proj`` for the packed q/k/v
    projection of a MultiheadAttention).

    Example:
        >>> layer = nn.Sequential(nn.Linear(3, 3))
        >>> gates(add_gated_lora(layer, ["0"], rank=2))
        {'0': Parameter containing:
        tensor([1., 1.], requires_grad=True)}
    """
    found = {}
    for name, layer in _lora_layers(model):
        gate = _rank_gate(layer)
        if gate is not None:
            found[name] = gate.gate
    return found


def active_ranks(model: nn.Module) -> dict[str, int]:
    """The number of ranks with a non-zero gate per adapted layer (the rank for ungated ones).

    Example:
        >>> layer = add_gated_lora(nn.Sequential(nn.Linear(3, 3)), ["0"], rank=2)
        >>> gates(layer)["0"].data[0] = 0.0
        >>> active_ranks(layer)
        {'0': 1}
    """
    ranks = {}
    for name, layer in _lora_layers(model):
        gate = _rank_gate(layer)
        ranks[name] = int(layer.r[ADAPTER]) if gate is None else int(gate.gate.count_nonzero())
    return ranks


@torch.no_grad()
def prune_ranks_(model: nn.Module) -> dict[str, int]:
    """Remove the ranks whose gate is exactly zero from every gated adapter, in place.

    The rows of ``A``, the columns of ``B`` and the entries of the gate of those ranks are
    dropped (peft's scale ``alpha / rank`` stays that of the adapter as created), so the
    forward is unchanged: the removed terms were exact zeros (up to float rounding, about
    1e-7 here, since the shorter matmuls may sum in another order). A layer whose gates are all
    zero keeps an adapter of rank 0. New ``Parameter`` objects replace the pruned ones, so an
    optimizer holding the old ones must be rebuilt (prune at the end of a task).

    Returns:
        The remaining rank per gated layer.

    Example:
        >>> layer = add_gated_lora(nn.Sequential(nn.Linear(3, 3)), ["0"], rank=3)
        >>> gates(layer)["0"].data[1] = 0.0
        >>> prune_ranks_(layer)
        {'0': 2}
        >>> tuple(layer[0].lora_B["default"].weight.shape)
        (3, 2)
    """
    remaining = {}
    for name, layer in _lora_layers(model):
        rank_gate = _rank_gate(layer)
        if rank_gate is None:
            continue
        keep = rank_gate.gate.ne(0).nonzero().squeeze(1)
        remaining[name] = int(keep.numel())
        if keep.numel() == rank_gate.gate.numel():
            continue
        lora_a, lora_b = layer.lora_A[ADAPTER], layer.lora_B[ADAPTER]
        original = lora_a.parametrizations.weight.original
        lora_a.parametrizations.weight.original = nn.Parameter(
            original[keep].clone(), requires_grad=original.requires_grad
        )
        rank_gate.gate = nn.Parameter(
            rank_gate.gate[keep].clone(), requires_grad=rank_gate.gate.requires_grad
        )
        lora_b.weight = nn.Parameter(
            lora_b.weight[:, keep].clone(), requires_grad=lora_b.weight.requires_grad
        )
        lora_a.out_features = lora_b.in_features = int(keep.numel())
        layer.r[ADAPTER] = int(keep.numel())
    return remaining


@torch.no_grad()
def merge_lora_(model: nn.Module) -> nn.Module:
    """Merge every adapter into its base weights and remove the adapters, in place.

    The gates are folded into ``A`` first (``diag(w) A``), then peft merges
    ``W <- W + (alpha / rank) * B A`` and the adapted layers are replaced by their base
    modules, so the model has its original module classes and no peft layer; its forward
    equals the adapted forward up to float rounding. ``requires_grad`` of the base
    parameters is left as it is. Merging a deepcopy leaves the original model intact.
    :func:`add_gated_lora` can then add fresh adapters.

    Returns:
        ``model``.

    Example:
        >>> layer = add_gated_lora(nn.Sequential(nn.Linear(3, 3)), ["0"], rank=2)
        >>> type(merge_lora_(layer)[0]).__name__
        'Linear'
    """
    for _, layer in list(_lora_layers(model)):
        if _rank_gate(layer) is not None:
            lora_a = layer.lora_A[ADAPTER]
            # torch deletes the property from the parametrized class, which a deepcopy of the
            # model shares with the original: give this module a class of its own first
            cls = type(lora_a)
            own = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
            lora_a.__class__ = type(cls.__name__, cls.__bases__, own)
            parametrize.remove_parametrizations(lora_a, "weight")
    tuner_names = [name for name, module in model.named_modules() if isinstance(module, LoraLayer)]
    outermost = [
        name
        for name in tuner_names
        if not any(name.startswith(other + ".") for other in tuner_names if other != name)
    ]
    for name in outermost:
        layer = model.get_submodule(name)
        if hasattr(layer, "unload_and_optionally_merge_module"):
            base = layer.unload_and_optionally_merge_module(
                merge=True, safe_merge=False, adapter_names=None
            )
        else:
            layer.merge(adapter_names=None)
            base = layer.get_base_layer()
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, base)
    if hasattr(model, "peft_config"):
        del model.peft_config
    return model


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapter parameters (``A``, ``B`` and gates) of ``model``, in module order.

    Example:
        >>> layer = add_gated_lora(nn.Sequential(nn.Linear(3, 5)), ["0"], rank=2)
        >>> [tuple(p.shape) for p in adapter_parameters(layer)]
        [(2, 3), (2,), (5, 2)]
    """
    return [
        parameter
        for name, parameter in model.named_parameters()
        if ".lora_A." in f".{name}" or ".lora_B." in f".{name}"
    ]


def adapter_parameter_count(model: nn.Module) -> int:
    """The number of adapter parameters (``A``, ``B`` and gates) in ``model``.

    Example:
        >>> adapter_parameter_count(add_gated_lora(nn.Sequential(nn.Linear(3, 5)), ["0"], rank=2))
        18
    """
    return sum(parameter.numel() for parameter in adapter_parameters(model))


def active_adapter_parameter_count(model: nn.Module) -> int:
    """The adapter parameters of the ranks with a non-zero gate (all ranks when ungated).

    What :func:`prune_ranks_` would leave: per active rank one row of ``A``, one column of
    ``B`` and its gate.

    Example:
        >>> layer = add_gated_lora(nn.Sequential(nn.Linear(3, 5)), ["0"], rank=2)
        >>> gates(layer)["0"].data[0] = 0.0
        >>> active_adapter_parameter_count(layer)  # one rank: 3 + 5 + 1
        9
    """
    total = 0
    for _, layer in _lora_layers(model):
        rank_gate = _rank_gate(layer)
        lora_a, lora_b = layer.lora_A[ADAPTER], layer.lora_B[ADAPTER]
        per_rank = lora_a.in_features + lora_b.out_features
        if rank_gate is None:
            total += per_rank * int(layer.r[ADAPTER])
        else:
            total += (per_rank + 1) * int(rank_gate.gate.count_nonzero())
    return total


@torch.no_grad()
def merge_and_reset_(
    model: nn.Module,
    optimizers: Iterable[torch.optim.Optimizer] = (),
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Fold every adapter's ``ΔW`` into its base weights and reset the same adapters, in place.

    The continual-learning form of :func:`merge_lora_`: each adapted layer's base weight
    becomes ``W + (alpha / rank) * B diag(w) A`` (peft's merge, in place: the base
    ``Parameter`` objects stay), then the adapter's own parameters are reset as peft
    initialises them (``A`` Kaiming-uniform with ``a = sqrt(5)``, ``B = 0``, gates ``1``),
    so the forward is unchanged (up to float rounding) and training continues on fresh
    adapters. No ``Parameter`` is created or removed: a DDP wrapper and an optimizer keep
    holding the same objects; the optimizers' state of the adapter parameters (Adam's
    moments and step, SGD's momentum) is dropped, so each optimizer starts them afresh.
    Ranks with a zero gate contribute nothing to ``ΔW``: folding them is pruning them. Read
    :func:`active_ranks` before calling this; afterwards every gate is ``1`` again.

    Args:
        model: a model with adapters from :func:`add_gated_lora`.
        optimizers: optimizers whose state of the adapter parameters is cleared.
        generator: the CPU generator that draws the new ``A`` (``None``: torch's global
            one); ``A`` is drawn on the CPU and copied, so a seeded generator gives the same
            adapters on every device and every process.

    Returns:
        ``model``.

    Raises:
        ValueError: for a model without adapters.

    Example:
        >>> torch.manual_seed(0) and None
        >>> layer = add_gated_lora(nn.Sequential(nn.Linear(3, 3)), ["0"], rank=2)
        >>> _ = layer[0].lora_B["default"].weight.data.fill_(0.5)
        >>> x = torch.randn(4, 3)
        >>> before = layer(x)
        >>> base = layer[0].get_base_layer().weight
        >>> merge_and_reset_(layer) is layer, layer[0].get_base_layer().weight is base
        (True, True)
        >>> torch.allclose(layer(x), before, atol=1e-6)
        True
        >>> lora_b = layer[0].lora_B["default"].weight.detach()
        >>> lora_b.abs().sum().item(), gates(layer)["0"].tolist()
        (0.0, [1.0, 1.0])
    """
    tuners = [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]
    if not any(ADAPTER in layer.lora_A for _, layer in tuners):
        raise ValueError(
            "`model` has no LoRA adapters to merge and reset; add them with `add_gated_lora`."
        )
    names = [name for name, _ in tuners]
    for name, layer in tuners:  # the outermost layers: a MultiheadAttention merges its out_proj
        if ADAPTER in layer.lora_A and not any(
            name.startswith(other + ".") for other in names if other != name
        ):
            layer.merge(adapter_names=[ADAPTER])
    for _, layer in tuners:  # merged into the base weights for good: nothing to unmerge
        layer.merged_adapters.clear()
    for _, layer in _lora_layers(model):
        lora_a = layer.lora_A[ADAPTER]
        rank_gate = _rank_gate(layer)
        weight = lora_a.weight if rank_gate is None else lora_a.parametrizations.weight.original
        fresh = torch.empty(weight.shape, dtype=weight.dtype, device="cpu")
        nn.init.kaiming_uniform_(fresh, a=math.sqrt(5), generator=generator)  # peft's init
        weight.copy_(fresh)
        layer.lora_B[ADAPTER].weight.zero_()
        if rank_gate is not None:
            rank_gate.gate.fill_(1.0)
    parameters = adapter_parameters(model)
    for optimizer in optimizers:
        for parameter in parameters:
            optimizer.state.pop(parameter, None)
    return model


def parameter_count(model: nn.Module) -> int:
    """The number of parameters of ``model`` (each shared parameter once).

    Example:
        >>> parameter_count(nn.Linear(3, 5))
        20
    """
    return sum(parameter.numel() for parameter in model.parameters())
