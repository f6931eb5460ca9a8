"""``SigLipLoss`` against open_clip, in a single process and under 2-process gloo DDP.

Spawned DDP workers re-import this module: keep its imports light (open_clip is imported
lazily by the ``open_clip_loss`` fixture, in the main process only).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_plugins.functional import siglip_loss
from lightning_plugins.losses import SigLipLoss
from tests.helpers import run_ddp

TOL64 = {"rtol": 1e-9, "atol": 1e-12}
TOL32 = {"rtol": 1e-5, "atol": 1e-6}
SCALE, BIAS = 10.0, -5.0
DDP_BATCHES = (1, 3)  # rows per rank; 1 row per rank is still a global batch of 2
TOWER_BATCH = 4
IN_DIM, DIM = 6, 5


def paired_features(
    batch: int, dim: int = 8, seed: int = 0, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised image features and noisy captions; captions 0 and 1 are swapped."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    text = image + torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    text[[0, 1]] = text[[1, 0]]
    return F.normalize(image, dim=-1).to(dtype), F.normalize(text, dim=-1).to(dtype)


def leaves(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.detach().clone().requires_grad_() for t in tensors]


def scalars(dtype: torch.dtype = torch.float64, scale: float = SCALE, bias: float = BIAS):
    return torch.tensor(scale, dtype=dtype), torch.tensor(bias, dtype=dtype)


class Tower(nn.Module):
    """A tiny two-tower model: linear projections, a learnable log-scale and bias."""

    def __init__(self) -> None:
        super().__init__()
        self.image_proj = nn.Linear(IN_DIM, DIM)
        self.text_proj = nn.Linear(IN_DIM, DIM)
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.bias = nn.Parameter(torch.tensor(-3.0))

    def forward(self, images: torch.Tensor, texts: torch.Tensor):
        return (
            F.normalize(self.image_proj(images), dim=-1),
            F.normalize(self.text_proj(texts), dim=-1),
            self.log_scale.exp(),
            self.bias,
        )


def make_tower_and_inputs(world_size: int) -> tuple[Tower, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    tower = Tower().double()
    gen = torch.Generator().manual_seed(2)
    images = torch.randn(TOWER_BATCH * world_size, IN_DIM, generator=gen, dtype=torch.float64)
    texts = images + 0.5 * torch.randn(images.shape, generator=gen, dtype=torch.float64)
    return tower, images, texts


def _ddp_worker(rank: int, world_size: int) -> dict:
    """Per-rank SigLipLoss results on this rank's slice of a global batch."""
    results: dict = {}
    for batch in DDP_BATCHES:
        image, text = paired_features(batch * world_size, seed=batch)  # same on every rank
        rows = slice(rank * batch, (rank + 1) * batch)
        img, txt, scale, bias = leaves(image[rows], text[rows], *scalars())
        loss = SigLipLoss()(img, txt, scale, bias)
        loss.backward()
        with torch.no_grad():
            per_sample = SigLipLoss()(image[rows], text[rows], scale, bias, reduction="none")
        results[batch] = {
            "loss": loss.detach(),
            "image_grad": img.grad,
            "text_grad": txt.grad,
            "scale_grad": scale.grad,
            "bias_grad": bias.grad,
            "per_sample": per_sample,
        }
    tower, images, texts = make_tower_and_inputs(world_size)
    model = nn.parallel.DistributedDataParallel(tower)
    rows = slice(rank * TOWER_BATCH, (rank + 1) * TOWER_BATCH)
    SigLipLoss()(*model(images[rows], texts[rows])).backward()
    results["tower"] = {name: p.grad.clone() for name, p in tower.named_parameters()}
    return results


@pytest.fixture(scope="module")
def open_clip_loss():
    from open_clip.loss import SigLipLoss as OpenSigLipLoss

    return OpenSigLipLoss()


def single_process(open_clip_loss, image, text, scale, bias) -> dict:
    """open_clip's loss and gradients on the whole batch in one process."""
    img, txt, s, b = leaves(image, text, scale, bias)
    loss = open_clip_loss(img, txt, s, b)
    loss.backward()
    return {
        "loss": loss.detach(),
        "image_grad": img.grad,
        "text_grad": txt.grad,
        "scale_grad": s.grad,
        "bias_grad": b.grad,
    }


# ---------------------------------------------------------------- single process


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch", [2, 5, 16])
@pytest.mark.parametrize(("scale", "bias"), [(1.0, 0.0), (10.0, -10.0), (100.0, 2.0)])
def test_matches_open_clip(open_clip_loss, batch, scale, bias, dtype) -> None:
    image, text = paired_features(batch, seed=batch, dtype=dtype)
    logit_scale, logit_bias = scalars(dtype, scale, bias)
    expected = single_process(open_clip_loss, image, text, logit_scale, logit_bias)
    img, txt, s, b = leaves(image, text, logit_scale, logit_bias)
    loss = SigLipLoss()(img, txt, s, b)
    loss.backward()
    tol = TOL64 if dtype == torch.float64 else TOL32
    torch.testing.assert_close(loss, expected["loss"], **tol)
    torch.testing.assert_close(img.grad, expected["image_grad"], **tol)
    torch.testing.assert_close(txt.grad, expected["text_grad"], **tol)
    torch.testing.assert_close(s.grad, expected["scale_grad"], **tol)
    torch.testing.assert_close(b.grad, expected["bias_grad"], **tol)


def test_without_bias_matches_open_clip(open_clip_loss) -> None:
    image, text = paired_features(6, seed=1)
    scale = torch.tensor(SCALE, dtype=torch.float64)
    expected = open_clip_loss(image, text, scale, None)
    torch.testing.assert_close(SigLipLoss()(image, text, scale), expected, **TOL64)


def test_reductions_agree_with_functional() -> None:
    image, text = paired_features(7, seed=2)
    scale, bias = scalars()
    per_sample = SigLipLoss()(image, text, scale, bias, reduction="none")
    assert per_sample.shape == (7,)
    torch.testing.assert_close(per_sample, siglip_loss(image, text, scale, bias, reduction="none"))
    torch.testing.assert_close(SigLipLoss()(image, text, scale, bias), per_sample.mean(), **TOL64)
    torch.testing.assert_close(
        SigLipLoss()(image, text, scale, bias, reduction="sum"), per_sample.sum()
    )


@pytest.mark.parametrize(
    ("image", "text", "match"),
    [
        (torch.randn(4, 8), torch.randn(4, 6), "`image_features` and `text_features`"),
        (torch.randn(4, 8), torch.randn(3, 8), "`image_features` and `text_features`"),
        (torch.randn(8), torch.randn(8), "`image_features` and `text_features` must be 2-D"),
        (torch.randn(1, 8), torch.randn(1, 8), "at least 2 image-text pairs in the global batch"),
    ],
)
def test_bad_features_raise(image, text, match) -> None:
    with pytest.raises(ValueError, match=match):
        SigLipLoss()(image, text, *scalars(torch.float32))


def test_unknown_reduction_raises() -> None:
    image, text = paired_features(4)
    with pytest.raises(ValueError, match=r"`reduction`.*'mena'"):
        SigLipLoss()(image, text, *scalars(), reduction="mena")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("name", ["image_features", "text_features", "logit_scale", "logit_bias"])
def test_non_finite_input_is_named(name: str, bad: float) -> None:
    image, text = paired_features(4)
    scale, bias = scalars()
    inputs = {"image_features": image, "text_features": text, "logit_scale": scale}
    inputs["logit_bias"] = bias
    inputs[name] = inputs[name].clone()
    inputs[name].view(-1)[-1] = bad
    with pytest.raises(ValueError, match=f"^`{name}` holds non-finite values"):
        SigLipLoss()(**inputs)


# ---------------------------------------------------------------- DDP


@pytest.fixture(scope="module")
def ddp_results() -> list[dict]:
    return run_ddp(_ddp_worker, world_size=2)


@pytest.mark.ddp
@pytest.mark.parametrize("batch", DDP_BATCHES)
def test_ddp_loss_and_gradients_equal_single_process(ddp_results, open_clip_loss, batch) -> None:
    world_size = len(ddp_results)
    image, text = paired_features(batch * world_size, seed=batch)
    expected = single_process(open_clip_loss, image, text, *scalars())
    ranks = [r[batch] for r in ddp_results]
    mean_loss = torch.stack([r["loss"] for r in ranks]).mean()
    torch.testing.assert_close(mean_loss, expected["loss"], **TOL64)
    # backward all-reduces SUM over ranks; DDP's averaging divides by world_size later
    for key in ("image_grad", "text_grad"):
        grads = torch.cat([r[key] for r in ranks]) / world_size
        torch.testing.assert_close(grads, expected[key], **TOL64)
    for key in ("scale_grad", "bias_grad"):
        mean_grad = torch.stack([r[key] for r in ranks]).mean()
        torch.testing.assert_close(mean_grad, expected[key], **TOL64)


@pytest.mark.ddp
@pytest.mark.parametrize("batch", DDP_BATCHES)
def test_ddp_per_sample_losses_are_the_global_ones(ddp_results, batch) -> None:
    world_size = len(ddp_results)
    image, text = paired_features(batch * world_size, seed=batch)
    expected = siglip_loss(image, text, SCALE, BIAS, reduction="none")
    got = torch.cat([r[batch]["per_sample"] for r in ddp_results])
    torch.testing.assert_close(got, expected, **TOL64)


@pytest.mark.ddp
def test_ddp_tower_parameter_grads_equal_single_process(ddp_results, open_clip_loss) -> None:
    tower, images, texts = make_tower_and_inputs(len(ddp_results))
    open_clip_loss(*tower(images, texts)).backward()
    for rank_result in ddp_results:
        assert rank_result["tower"].keys() == dict(tower.named_parameters()).keys()
        for name, param in tower.named_parameters():
            torch.testing.assert_close(rank_result["tower"][name], param.grad, **TOL64)
