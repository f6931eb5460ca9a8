"""torchmetrics metrics; plain PyTorch, no Lightning."""

from lightning_plugins.metrics.image_text_retrieval import ImageTextRetrieval
from lightning_plugins.metrics.zero_shot_accuracy import ZeroShotAccuracy

__all__ = ["ImageTextRetrieval", "ZeroShotAccuracy"]
