"""LightningDataModules and the datasets behind them."""

from lightning_plugins.datamodules.class_incremental import ClassIncremental
from lightning_plugins.datamodules.digits import Digits
from lightning_plugins.datamodules.image_text import ImageTextDataModule
from lightning_plugins.datamodules.indexed_shards import IndexedShards
from lightning_plugins.datamodules.lego_skills import LegoDataset, LegoSkills
from lightning_plugins.datamodules.mixture import MixtureDataModule
from lightning_plugins.datamodules.synthetic_shapes import (
    ShapesClassification,
    ShapesPairs,
    SyntheticShapes,
)
from lightning_plugins.datamodules.task_stream import TaskStream

__all__ = [
    "ClassIncremental",
    "Digits",
    "ImageTextDataModule",
    "IndexedShards",
    "LegoDataset",
    "LegoSkills",
    "MixtureDataModule",
    "ShapesClassification",
    "ShapesPairs",
    "SyntheticShapes",
    "TaskStream",
]
