"""torchmetrics metrics and the evaluation built on them; plain PyTorch, no Lightning."""

from lightning_plugins.metrics.continual_accuracy import ContinualAccuracy
from lightning_plugins.metrics.image_text_evaluation import ImageTextEvaluation
from lightning_plugins.metrics.image_text_retrieval import ImageTextRetrieval
from lightning_plugins.metrics.zero_shot_accuracy import ZeroShotAccuracy
from lightning_plugins.metrics.zero_shot_data import (
    DEFAULT_TEMPLATES,
    ZeroShotClasses,
    ZeroShotData,
    read_zero_shot_data,
)

__all__ = [
    "DEFAULT_TEMPLATES",
    "ContinualAccuracy",
    "ImageTextEvaluation",
    "ImageTextRetrieval",
    "ZeroShotAccuracy",
    "ZeroShotClasses",
    "ZeroShotData",
    "read_zero_shot_data",
]
