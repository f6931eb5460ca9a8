"""Loss modules with open_clip's call signature; plain PyTorch, no Lightning."""

from lightning_plugins.losses.clip import ClipLoss
from lightning_plugins.losses.contrastive_loss import ContrastiveLoss
from lightning_plugins.losses.cwcl import CWCLLoss
from lightning_plugins.losses.siglip import SigLipLoss

__all__ = ["CWCLLoss", "ClipLoss", "ContrastiveLoss", "SigLipLoss"]
