"""SigLIP: contrastive image-text training with the pairwise sigmoid loss."""

from __future__ import annotations

import math
from typing import Any

from lightning_plugins.losses import ContrastiveLoss, SigLipLoss
from lightning_plugins.modules.contrastive_image_text import ContrastiveImageText

__all__ = ["SigLIP"]


class SigLIP(ContrastiveImageText):
    """SigLIP training: :class:`ContrastiveImageText` with ``SigLipLoss``, scale 10, bias -10.

    Args:
        loss: the contrastive loss; default ``SigLipLoss()``.
        init_logit_scale: initial logit scale in log space; default ``log(10)``.
        init_logit_bias: initial logit bias; default -10.
        **kwargs: the model, optimizer and evaluation arguments of
            :class:`ContrastiveImageText`.

    Example:
        >>> module = SigLIP(model_name="ViT-Micro-P8-32")
        >>> round(module.logit_scale.item(), 4), module.logit_bias.item()
        (10.0, -10.0)
    """

    def __init__(
        self,
        loss: ContrastiveLoss | None = None,
        init_logit_scale: float = math.log(10.0),
        init_logit_bias: float | None = -10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            loss=loss if loss is not None else SigLipLoss(),
            init_logit_scale=init_logit_scale,
            init_logit_bias=init_logit_bias,
            **kwargs,
        )
