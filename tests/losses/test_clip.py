"""``ClipLoss`` against open_clip, in a single process and under 2-process gloo DDP.

Spawned DDP workers re-import this module: keep its imports light (open_clip is imported
lazily by the ``open_clip_loss`` fixture, in the main process only).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_plugins.functional import clip_loss
from lightning_plugins.losses import ClipLoss
from tests.helpers import run_ddp

TOL64 = {"rtol": 1e-9, "atol": 1e-12}
TOL32 = {"rtol": 1e-5, "atol": 1e-6}
SCALE = 20.0
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


class Tower(nn.Module):
    """A tiny two-tower model: linear projections and a learnable log-scale."""

    def __init__(self) -> None:
        super().__init__()
        self.image_proj = nn.Linear(IN_DIM, DIM)
        self.text_proj = nn.Linear(IN_DIM, DIM)
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def forward(self, images: torch.Tensor, texts: torch.Tensor):
        return (
            F.normalize(self.image_proj(images), dim=-1),
            F.normalize(self.text_proj(texts), dim=-1),
            self.log_scale.exp(),
        )


def make_tower_and_inputs(world_size: int) -> tuple[Tower, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    tower = Tower().double()
    gen = torch.Generator().manual_seed(2)
    images = torch.randn(TOWER_BATCH * world_size, IN_DIM, generator=gen, dtype=torch.float64)
    texts = images + 0.5 * torch.randn(images.shape, generator=gen, dtype=torch.float64)
    return tower, images, texts


def _ddp_worker(rank: int, world_size: int) -> dict:
    """Per-rank ClipLoss results on this rank's slice of a global batch."""
    results: dict = {}
    for batch in DDP_BATCHES:
        image, text = paired_features(batch * world_size, seed=batch)  # same on every rank
        rows = slice(rank * batch, (rank + 1) * batch)
        img, txt, scale = leaves(image[rows], text[rows], torch.tensor(SCALE, dtype=torch.float64))
        loss = ClipLoss()(img, txt, scale)
        loss.backward()
        with torch.no_grad():
            per_sample = ClipLoss()(image[rows], text[rows], scale, reduction="none")
        results[batch] = {
            "loss": loss.detach(),
            "image_grad": img.grad,
            "text_grad": txt.grad,
            "scale_grad": scale.grad,
            "per_sample": per_sample,
        }
    tower, images, texts = make_tower_and_inputs(world_size)
    model = nn.parallel.DistributedDataParallel(tower)
    rows = slice(rank * TOWER_BATCH, (rank + 1) * TOWER_BATCH)
    ClipLoss()(*model(images[rows], texts[rows])).backward()
    results["tower"] = {name: p.grad.clone() for name, p in tower.named_parameters()}
    return results


@pytest.fixture(scope="module")
def open_clip_loss():
    from open_clip.loss import ClipLoss as OpenClipLoss

    return OpenClipLoss()


def single_process(open_clip_loss, image, text, scale=SCALE) -> dict:
    """open_clip's loss and gradients on the whole batch in one process."""
    img, txt, s = leaves(image, text, torch.tensor(scale, dtype=image.dtype))
    loss = open_clip_loss(img, txt, s)
    loss.backward()
    return {
        "loss": loss.detach(),
        "image_grad": img.grad,
        "text_grad": txt.grad,
        "scale_grad": s.grad,
    }


# ---------------------------------------------------------------- single process


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch", [2, 5, 16])
@pytest.mark.parametrize("scale", [1.0, 14.3, 100.0])
def test_matches_open_clip(open_clip_loss, batch: int, scale: float, dtype: torch.dtype) -> None:
    image, text = paired_features(batch, seed=batch, dtype=dtype)
    expected = single_process(open_clip_loss, image, text, scale)
    img, txt, s = leaves(image, text, torch.tensor(scale, dtype=dtype))
    loss = ClipLoss()(img, txt, s)
    loss.backward()
    tol = TOL64 if dtype == torch.float64 else TOL32
    torch.testing.assert_close(loss, expected["loss"], **tol)
    torch.testing.assert_close(img.grad, expected["image_grad"], **tol)
    torch.testing.assert_close(txt.grad, expected["text_grad"], **tol)
    torch.testing.assert_close(s.grad, expected["scale_grad"], **tol)


def test_logit_bias_is_ignored_like_a_softmax_shift(open_clip_loss) -> None:
    """open_clip adds the bias to every logit; a softmax does not see it."""
    image, text = paired_features(6, seed=1)
    scale, bias = torch.tensor(SCALE, dtype=torch.float64), torch.tensor(-7.0, dtype=torch.float64)
    expected = open_clip_loss(image, text, scale, bias)
    torch.testing.assert_close(ClipLoss()(image, text, scale, bias), expected, **TOL64)
    torch.testing.assert_close(ClipLoss()(image, text, scale), expected, **TOL64)


def test_reductions_agree_with_functional() -> None:
    image, text = paired_features(7, seed=2)
    scale = torch.tensor(SCALE, dtype=torch.float64)
    per_sample = ClipLoss()(image, text, scale, reduction="none")
    assert per_sample.shape == (7,)
    torch.testing.assert_close(per_sample, clip_loss(image, text, scale, reduction="none"))
    torch.testing.assert_close(ClipLoss()(image, text, scale), per_sample.mean(), **TOL64)
    torch.testing.assert_close(ClipLoss()(image, text, scale, reduction="sum"), per_sample.sum())


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
        ClipLoss()(image, text, torch.tensor(SCALE))


def test_unknown_reduction_raises() -> None:
    image, text = paired_features(4)
    with pytest.raises(ValueError, match=r"`reduction`.*'mena'"):
        ClipLoss()(image, text, torch.tensor(SCALE), reduction="mena")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("name", ["image_features", "text_features", "logit_scale"])
def test_non_finite_input_is_named(name: str, bad: float) -> None:
    image, text = paired_features(4)
    inputs = {"image_features": image, "text_features": text, "logit_scale": torch.tensor(SCALE)}
    inputs[name] = inputs[name].clone()
    inputs[name].view(-1)[-1] = bad
    with pytest.raises(ValueError, match=f"^`{name}` holds non-finite values"):
        ClipLoss()(**inputs)


# ---------------------------------------------------------------- DDP


@pytest.fixture(scope="module")
def ddp_results() -> list[dict]:
    return run_ddp(_ddp_worker, world_size=2)


@pytest.mark.ddp
@pytest.mark.parametrize("batch", DDP_BATCHES)
def test_ddp_loss_and_gradients_equal_single_process(ddp_results, open_clip_loss, batch) -> None:
    world_size = len(ddp_results)
    image, text = paired_features(batch * world_size, seed=batch)
    expected = single_process(open_clip_loss, image, text)
    ranks = [r[batch] for r in ddp_results]
    mean_loss = torch.stack([r["loss"] for r in ranks]).mean()
    torch.testing.assert_close(mean_loss, expected["loss"], **TOL64)
    # backward all-reduces SUM over ranks; DDP's averaging divides by world_size later
    for key in ("image_grad", "text_grad"):
        grads = torch.cat([r[key] for r in ranks]) / world_size
        torch.testing.assert_close(grads, expected[key], **TOL64)
    mean_scale_grad = torch.stack([r["scale_grad"] for r in ranks]).mean()
    torch.testing.assert_close(mean_scale_grad, expected["scale_grad"], **TOL64)


@pytest.mark.ddp
@pytest.mark.parametrize("batch", DDP_BATCHES)
def test_ddp_per_sample_losses_are_the_global_ones(ddp_results, batch) -> None:
    world_size = len(ddp_results)
    image, text = paired_features(batch * world_size, seed=batch)
    expected = clip_loss(image, text, SCALE, reduction="none")
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
