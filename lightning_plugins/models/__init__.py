"""Image-text models (open_clip, timm + Hugging Face) and their tokenizers.

Importing this package registers the shipped configs (:func:`shipped_model_names`) with
open_clip, so ``open_clip.create_model("ViT-Tiny-P8-32")`` works after it.
"""

from lightning_plugins.models.image_text_model import (
    ImageTextTowers,
    create_image_text_model,
    create_tokenizer,
    list_model_names,
    resolve_path,
    shipped_model_names,
)
from lightning_plugins.models.layer_blocks import (
    BlockMapping,
    block_lists,
    block_positions,
    layer_blocks,
)
from lightning_plugins.models.lora_adapters import (
    RankGate,
    active_adapter_parameter_count,
    active_ranks,
    adapter_parameter_count,
    adapter_parameters,
    add_gated_lora,
    gates,
    lora_targets,
    merge_and_reset_,
    merge_lora_,
    parameter_count,
    prune_ranks_,
)
from lightning_plugins.models.small_convnet import SmallConvNet

__all__ = [
    "BlockMapping",
    "ImageTextTowers",
    "RankGate",
    "SmallConvNet",
    "active_adapter_parameter_count",
    "active_ranks",
    "adapter_parameter_count",
    "adapter_parameters",
    "add_gated_lora",
    "block_lists",
    "block_positions",
    "create_image_text_model",
    "create_tokenizer",
    "gates",
    "layer_blocks",
    "list_model_names",
    "lora_targets",
    "merge_and_reset_",
    "merge_lora_",
    "parameter_count",
    "prune_ranks_",
    "resolve_path",
    "shipped_model_names",
]
