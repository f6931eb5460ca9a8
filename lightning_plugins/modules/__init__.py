"""LightningModules."""

from lightning_plugins.modules.clip import CLIP
from lightning_plugins.modules.contrastive_image_text import ContrastiveImageText
from lightning_plugins.modules.siglip import SigLIP

__all__ = ["CLIP", "ContrastiveImageText", "SigLIP"]
