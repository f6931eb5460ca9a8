"""Argument checks shared by the functional losses (private)."""

from __future__ import annotations

import torch

_REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> None:
    """Raise ``ValueError`` unless ``reduction`` is one of ``mean``, ``sum``, ``none``."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {_REDUCTIONS}, got {reduction!r}.")


def check_feature_pair(image_features: torch.Tensor, text_features: torch.Tensor) -> None:
    """Raise ``ValueError`` unless both features are 2-D with equal shape."""
    if image_features.ndim != 2 or text_features.ndim != 2:
        raise ValueError(
            "`image_features` and `text_features` must be 2-D [batch, dim], got shapes "
            f"{tuple(image_features.shape)} and {tuple(text_features.shape)}."
        )
    if image_features.shape != text_features.shape:
        raise ValueError(
            "`image_features` and `text_features` must have equal shapes (one caption per "
            f"image, one embedding size), got {tuple(image_features.shape)} and "
            f"{tuple(text_features.shape)}."
        )


def explain_non_finite(what: str, **tensors: torch.Tensor | float | None) -> None:
    """Raise ``ValueError`` for a non-finite ``what``, naming the input that caused it.

    Called once a result turned out non-finite, so the common finite path costs nothing
    beyond one check of the result.
    """
    for name, tensor in tensors.items():
        if tensor is not None and not bool(torch.isfinite(torch.as_tensor(tensor)).all()):
            raise ValueError(
                f"`{name}` holds non-finite values (NaN or inf), so the {what} is undefined. "
                "Check the towers' outputs and the learning rate."
            )
    raise ValueError(f"The {what} is non-finite although its inputs are finite.")


def apply_reduction(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce a ``[B]`` per-sample loss by ``mean``, ``sum`` or ``none``."""
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample
