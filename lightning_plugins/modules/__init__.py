"""LightningModules."""

from lightning_plugins.modules.backbone_module import BackboneModule
from lightning_plugins.modules.causal_lm import CausalLM
from lightning_plugins.modules.clip import CLIP
from lightning_plugins.modules.contrastive_image_text import ContrastiveImageText
from lightning_plugins.modules.image_classifier import ImageClassifier
from lightning_plugins.modules.lora_continual import LoRAContinual
from lightning_plugins.modules.sample_weights import reduce_sample_losses, sample_reducer
from lightning_plugins.modules.siglip import SigLIP
from lightning_plugins.modules.skill_data import SkillData, read_skill_names
from lightning_plugins.modules.slca import SLCA

__all__ = [
    "CLIP",
    "SLCA",
    "BackboneModule",
    "CausalLM",
    "ContrastiveImageText",
    "ImageClassifier",
    "LoRAContinual",
    "SigLIP",
    "SkillData",
    "read_skill_names",
    "reduce_sample_losses",
    "sample_reducer",
]
