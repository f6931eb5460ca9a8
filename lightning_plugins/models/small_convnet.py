"""SmallConvNet: a tiny convolutional feature extractor, fast on one CPU core for small images."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from lightning_plugins.functional._checks import check_int

__all__ = ["SmallConvNet"]


class SmallConvNet(nn.Module):
    """Three conv-BN-ReLU blocks with max pooling, then a global average pool.

    Widths ``width``, ``2 * width`` and ``num_features``; each block halves the image
    (32x32 → 4x4 before the pool). About 56k parameters at the defaults: a backbone for
    :class:`~lightning_plugins.modules.ImageClassifier` on 32x32 ``Digits`` that trains in
    seconds on a CPU, in examples and tests.

    Args:
        in_channels: image channels.
        width: channels of the first block.
        num_features: channels of the last block, the size of the returned features.

    Raises:
        TypeError: for a size that is no integer.
        ValueError: for a size below 1.

    Example:
        >>> net = SmallConvNet(in_channels=3, width=8, num_features=16)
        >>> net(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 16])
        >>> net.num_features
        16
    """

    def __init__(self, in_channels: int = 3, width: int = 32, num_features: int = 64) -> None:
        super().__init__()
        in_channels = check_int(in_channels, "in_channels", low=1)
        width = check_int(width, "width", low=1)
        self.num_features = check_int(num_features, "num_features", low=1)
        widths = (in_channels, width, 2 * width, self.num_features)
        blocks: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise(widths):
            blocks += [
                nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
        self.features = nn.Sequential(*blocks)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Features ``[B, num_features]`` of images ``[B, in_channels, H, W]``."""
        return self.features(image).mean(dim=(2, 3))
