"""LightningDataModules and the datasets behind them."""

from lightning_plugins.datamodules.synthetic_shapes import (
    ShapesClassification,
    ShapesPairs,
    SyntheticShapes,
)

__all__ = ["ShapesClassification", "ShapesPairs", "SyntheticShapes"]
