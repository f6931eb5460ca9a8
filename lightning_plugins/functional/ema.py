"""Exponential moving average of tensors, updated in place with fused foreach kernels."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lightning_plugins.functional._checks import check_float

__all__ = ["ema_update_"]


@torch.no_grad()
def ema_update_(
    ema_tensors: Sequence[torch.Tensor],
    model_tensors: Sequence[torch.Tensor],
    decay: float,
) -> None:
    """Move each EMA tensor towards its model tensor: ``ema = decay * ema + (1 - decay) * model``.

    Floating-point (and complex) tensors are averaged with ``torch._foreach_lerp_(ema, model,
    1 - decay)`` (timm's ``ModelEmaV3`` update), one fused call per device and dtype of the
    EMA tensors. Other tensors (integer or bool buffers such as BatchNorm's
    ``num_batches_tracked``) cannot be averaged and are copied. A model tensor on another
    device or with another dtype than its EMA tensor (an EMA kept on the CPU, or in float32
    for a bfloat16 model) is converted first. ``decay = 0`` copies the model exactly,
    ``decay = 1`` leaves the EMA unchanged. Runs without autograd.

    Args:
        ema_tensors: the averages, updated in place.
        model_tensors: the current values, one per EMA tensor and of the same shape.
        decay: weight of the old average, in ``[0, 1]``.

    Raises:
        ValueError: for lists of unequal length, a shape mismatch, or ``decay`` outside
            ``[0, 1]``.

    Example:
        >>> ema = [torch.tensor([0.0, 10.0]), torch.tensor([3])]
        >>> ema_update_(ema, [torch.tensor([1.0, 0.0]), torch.tensor([5])], decay=0.9)
        >>> ema
        [tensor([0.1000, 9.0000]), tensor([5])]
    """
    decay = check_float(decay, "decay", low=0.0, high=1.0)
    if len(ema_tensors) != len(model_tensors):
        raise ValueError(
            f"`ema_tensors` and `model_tensors` must have equal lengths, got {len(ema_tensors)} "
            f"and {len(model_tensors)}."
        )
    groups: dict[tuple[torch.device, torch.dtype], tuple[list, list]] = {}
    for ema, model in zip(ema_tensors, model_tensors, strict=True):
        if ema.shape != model.shape:
            raise ValueError(
                f"An EMA tensor of shape {tuple(ema.shape)} was paired with a model tensor of "
                f"shape {tuple(model.shape)}."
            )
        if not (ema.is_floating_point() or ema.is_complex()):
            ema.copy_(model)
            continue
        if model.device != ema.device or model.dtype != ema.dtype:
            model = model.to(device=ema.device, dtype=ema.dtype)
        emas, models = groups.setdefault((ema.device, ema.dtype), ([], []))
        emas.append(ema)
        models.append(model)
    weight = 1.0 - float(decay)
    for emas, models in groups.values():
        torch._foreach_lerp_(emas, models, weight)
