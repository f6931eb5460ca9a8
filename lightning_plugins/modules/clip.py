"""CLIP: contrastive image-text training with the softmax (InfoNCE) loss."""

from __future__ import annotations

import math
from typing import Any

from lightning_plugins.losses import ClipLoss, ContrastiveLoss
from lightning_plugins.modules.contrastive_image_text import ContrastiveImageText

__all__ = ["CLIP"]


class CLIP(ContrastiveImageText):
    """CLIP training: :class:`ContrastiveImageText` with ``ClipLoss`` and scale 1/0.07.

    Args:
        loss: the contrastive loss; default ``ClipLoss()``.
        init_logit_scale: initial logit scale in log space; default ``log(1 / 0.07)``.
        init_logit_bias: initial logit bias; default none.
        **kwargs: the model, optimizer and evaluation arguments of
            :class:`ContrastiveImageText`.

    Example:
        >>> module = CLIP(model_name="ViT-Micro-P8-32")
        >>> round(module.logit_scale.item(), 4)
        14.2857
    """

    def __init__(
        self,
        loss: ContrastiveLoss | None = None,
        init_logit_scale: float = math.log(1 / 0.07),
        init_logit_bias: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            loss=loss if loss is not None else ClipLoss(),
            init_logit_scale=init_logit_scale,
            init_logit_bias=init_logit_bias,
            **kwargs,
        )
