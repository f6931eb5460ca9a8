"""SmallConvNet: output shape and size attribute, any image size and channels, bad sizes."""

import pytest
import torch

from lightning_plugins.models import SmallConvNet


@pytest.mark.parametrize(("channels", "size"), [(3, 32), (1, 8), (3, 17)])
def test_features_shape(channels, size):
    net = SmallConvNet(in_channels=channels, width=4, num_features=12)
    assert net(torch.randn(5, channels, size, size)).shape == (5, 12)
    assert net.num_features == 12


def test_trains_and_batch_norm_is_used():
    torch.manual_seed(0)
    net = SmallConvNet(width=4, num_features=8)
    image = torch.randn(4, 3, 32, 32)
    net(image).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    net.eval()
    torch.testing.assert_close(net(image[:1]), net(image)[:1])  # eval: per-sample


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"in_channels": 0}, ValueError, "`in_channels` must be a positive integer"),
        ({"width": 2.0}, TypeError, "`width` must be an integer"),
        ({"num_features": -1}, ValueError, "`num_features` must be a positive integer"),
    ],
)
def test_bad_sizes(kwargs, error, match):
    with pytest.raises(error, match=match):
        SmallConvNet(**kwargs)
