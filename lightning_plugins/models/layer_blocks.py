"""Which block of a network's stack of layers each parameter belongs to, from its structure.

A *block list* is an ``nn.ModuleList`` or ``nn.Sequential`` whose children are all
modules of one class that hold parameters and are no leaves (not a list of ``nn.Linear``
heads): timm's ViT ``blocks``, open_clip's ``transformer.resblocks`` (in
``VisionTransformer``, ``TextTransformer``, and both towers of a ``CLIP``), Hugging Face's
layer lists (``encoder.layer`` of BERT, ``transformer.h`` of GPT-2, ``model.layers`` of
Llama, ``encoder.block`` / ``decoder.block`` of T5). Children that are ``nn.Sequential``
count when they all have the same layer types in the same order. Only the outermost lists
are taken (a list inside a block is part of that block). Names are never matched.

**Several lists** (the two towers of a CLIP, an encoder and a decoder) are each their own
stack: block ``l`` of a list of ``L`` is at depth ``l / (L - 1)`` of that list, so a
3-block image tower and a 2-block text tower each start at the first block and end at the
last. For one numbering across lists, give a ``mapping``. A stack split over several lists
of one parent (a ResNet's stages) is found as several stacks: give a mapping there too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from torch import nn

from lightning_plugins.functional._checks import check_int

__all__ = ["BlockMapping", "block_lists", "block_positions", "layer_blocks"]

BlockMapping = Mapping[str, int] | Callable[[str], "int | None"]
_CONTAINERS = (nn.ModuleList, nn.Sequential, nn.ModuleDict)
_LOOKED_FOR = (
    "an nn.ModuleList or nn.Sequential of modules of one class holding parameters (timm "
    "`blocks`, open_clip `transformer.resblocks`, Hugging Face `encoder.layer`, "
    "`transformer.h`, `model.layers`)"
)


def _layout(module: nn.Module) -> tuple:
    """What makes two children of a list the same kind of block."""
    if isinstance(module, nn.Sequential):
        return (nn.Sequential, tuple(type(child) for child in module))
    return (type(module),)


def _is_block_list(module: nn.Module) -> bool:
    if not isinstance(module, nn.ModuleList | nn.Sequential) or len(module) == 0:
        return False
    children = list(module)
    layouts = {_layout(child) for child in children}
    if len(layouts) != 1:
        return False
    for child in children:
        if isinstance(child, nn.ModuleList | nn.ModuleDict):
            return False
        has_parameters = next(child.parameters(), None) is not None
        has_submodules = next(child.children(), None) is not None
        if not (has_parameters and has_submodules):
            return False
    return True


def block_lists(model: nn.Module) -> dict[str, int]:
    """The outermost block lists of ``model`` (module name -> number of blocks), in order.

    Example:
        >>> block = lambda: nn.Sequential(nn.Linear(4, 4), nn.GELU())
        >>> net = nn.Module()
        >>> net.embed = nn.Linear(2, 4)
        >>> net.blocks = nn.ModuleList([block() for _ in range(3)])
        >>> net.heads = nn.ModuleList([nn.Linear(4, 2) for _ in range(2)])  # leaves: no blocks
        >>> block_lists(net)
        {'blocks': 3}
    """
    found: dict[str, int] = {}
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in found):
            continue  # inside a block
        if _is_block_list(module):
            found[name] = len(module)
            if not name:  # the model itself is the stack
                break
    return found


def block_positions(
    model: nn.Module, mapping: BlockMapping | None = None
) -> dict[str, tuple[int, int] | None]:
    """Each parameter's ``(block index, number of blocks of its stack)``, or ``None``.

    Like :func:`layer_blocks`, with the depth ``L`` of the stack that the block index counts
    in (each block list is its own stack; a ``mapping`` is one stack of ``max index + 1``
    blocks), which the LiNeS scale of the parameter needs.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
        >>> block_positions(net, mapping={"0": 0, "1": 1})
        {'0.weight': (0, 2), '0.bias': (0, 2), '1.weight': (1, 2), '1.bias': (1, 2)}
    """
    names = [name for name, _ in model.named_parameters()]
    if mapping is not None:
        indices = _from_mapping(model, names, mapping)
        assigned = [i for i in indices.values() if i is not None]
        if not assigned:
            raise ValueError(
                f"`mapping` assigns none of the {len(names)} parameters of "
                f"{type(model).__name__} to a block."
            )
        depth = max(assigned) + 1
        return {name: None if i is None else (i, depth) for name, i in indices.items()}
    lists = block_lists(model)
    if not lists:
        raise ValueError(
            f"Found no blocks in {type(model).__name__}: looked for {_LOOKED_FOR}. Pass "
            "`mapping` ({module name or prefix: block index}, or a parameter name -> block "
            "index function) to assign parameters to blocks."
        )
    positions: dict[str, tuple[int, int] | None] = dict.fromkeys(names)
    for list_name, depth in lists.items():
        blocks = model.get_submodule(list_name)
        for index, block in enumerate(blocks):
            prefix = f"{list_name}.{index}" if list_name else str(index)
            for name, _ in block.named_parameters(prefix=prefix):
                if name in positions:  # a parameter shared with an earlier place keeps it
                    positions[name] = (index, depth)
    return positions


def layer_blocks(model: nn.Module, mapping: BlockMapping | None = None) -> dict[str, int | None]:
    """The block (0-based) of each parameter of ``model``, ``None`` outside the blocks.

    Found from the module structure (module docstring), or from ``mapping``: a dict
    ``{module name or name prefix: block index}`` (a parameter takes the entry of the
    longest prefix that ends at a dot of its name; parameters under no entry are outside
    the blocks), or a function ``parameter name -> block index or None``.

    Args:
        model: the network.
        mapping: the assignment to use instead of the structure.

    Returns:
        ``{parameter name (as in named_parameters): block index or None}``, in the order of
        ``named_parameters``. With several block lists each counts from 0.

    Raises:
        ValueError: for a model without recognisable blocks and no ``mapping`` (saying what
            was looked for); a mapping entry that names no module or parameter (listing
            some that exist), or that assigns no parameter at all.
        TypeError: for a mapping of the wrong type or a block index that is no integer.

    Example:
        >>> import timm
        >>> vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,
        ...                         patch_size=8, depth=2, embed_dim=16, num_heads=2)
        >>> blocks = layer_blocks(vit)
        >>> blocks["patch_embed.proj.weight"], blocks["blocks.0.attn.qkv.weight"]
        (None, 0)
        >>> blocks["blocks.1.mlp.fc2.bias"], blocks["head.weight"]
        (1, None)
    """
    return {
        name: None if position is None else position[0]
        for name, position in block_positions(model, mapping).items()
    }


def _from_mapping(
    model: nn.Module, names: list[str], mapping: BlockMapping
) -> dict[str, int | None]:
    if callable(mapping) and not isinstance(mapping, Mapping):
        indices = {}
        for name in names:
            index = mapping(name)
            indices[name] = None if index is None else check_int(index, f"mapping({name!r})", low=0)
        return indices
    if not isinstance(mapping, Mapping):
        raise TypeError(
            "`mapping` must be a dict {module name or prefix: block index} or a function "
            f"parameter name -> block index, got {mapping!r} ({type(mapping).__name__})."
        )
    modules = {name for name, _ in model.named_modules()}
    entries = {}
    for key, index in mapping.items():
        if not isinstance(key, str):
            raise TypeError(f"`mapping` keys must be module names, got {key!r}.")
        entries[key] = check_int(index, f"mapping[{key!r}]", low=0)
        if key not in modules and key not in names:
            known = [m for m in modules if m][:8]
            raise ValueError(
                f"`mapping` entry {key!r} names no module or parameter of "
                f"{type(model).__name__}; modules include {known}."
            )
    indices: dict[str, int | None] = {}
    for name in names:
        matches = [k for k in entries if k == "" or name == k or name.startswith(k + ".")]
        indices[name] = entries[max(matches, key=len)] if matches else None
    return indices
