"""LightningModules."""

from lightning_plugins.modules.clip import CLIP
from lightning_plugins.modules.contrastive_image_text import ContrastiveImageText
from lightning_plugins.modules.image_classifier import ImageClassifier
from lightning_plugins.modules.sample_weights import reduce_sample_losses, sample_reducer
from lightning_plugins.modules.siglip import SigLIP

__all__ = [
    "CLIP",
    "ContrastiveImageText",
    "ImageClassifier",
    "SigLIP",
    "reduce_sample_losses",
    "sample_reducer",
]
