"""``CWCLLoss`` in a single process and under 2-process gloo DDP.

Spawned DDP workers re-import this module: keep its imports light (no lightning).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_plugins.functional.cwcl_loss import cwcl_loss
from lightning_plugins.losses.cwcl import CWCLLoss
from tests.helpers import run_ddp

TOL64 = {"rtol": 1e-9, "atol": 1e-12}
SCALE = 12.0
DIM = 6
# (frozen, symmetric_soft) settings checked under DDP
SETTINGS = (("text", False), ("image", False), ("text", True))
# rows per rank: equal batches, and the short last batch of an epoch
DDP_SIZES = ((3, 3), (3, 1), (1, 1))
TOWER_BATCH, TOWER_IN = 4, 5


def global_batch(sizes: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised image and text features of the whole batch; captions 0 and 1 alike."""
    gen = torch.Generator().manual_seed(sum(sizes) * 10 + len(sizes))
    n = sum(sizes)
    image = torch.randn(n, DIM, generator=gen, dtype=torch.float64)
    text = image + torch.randn(n, DIM, generator=gen, dtype=torch.float64)
    text[1] = text[0] + 0.1 * torch.randn(DIM, generator=gen, dtype=torch.float64)
    return F.normalize(image, dim=-1), F.normalize(text, dim=-1)


def loss_and_grads(loss: nn.Module, image: torch.Tensor, text: torch.Tensor) -> dict:
    image, text = (t.detach().clone().requires_grad_() for t in (image, text))
    scale = torch.tensor(SCALE, dtype=torch.float64, requires_grad=True)
    value = loss(image, text, scale)
    value.backward()
    return {"loss": value.detach(), "image": image.grad, "text": text.grad, "scale": scale.grad}


class Tower(nn.Module):
    """Trainable image projection, text projection and log-scale."""

    def __init__(self) -> None:
        super().__init__()
        self.image_proj = nn.Linear(TOWER_IN, DIM)
        self.text_proj = nn.Linear(TOWER_IN, DIM)
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (
            F.normalize(self.image_proj(images), dim=-1),
            F.normalize(self.text_proj(texts), dim=-1),
            self.log_scale.exp(),
        )


def tower_and_inputs(world_size: int) -> tuple[Tower, torch.Tensor, torch.Tensor]:
    torch.manual_seed(3)
    tower = Tower().double()
    gen = torch.Generator().manual_seed(4)
    images = torch.randn(TOWER_BATCH * world_size, TOWER_IN, generator=gen, dtype=torch.float64)
    texts = images + 0.5 * torch.randn(images.shape, generator=gen, dtype=torch.float64)
    return tower, images, texts


def _ddp_worker(rank: int, world_size: int) -> dict:
    results: dict = {}
    for sizes in DDP_SIZES:
        image, text = global_batch(sizes)  # the same on every rank
        rows = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
        for frozen, symmetric_soft in SETTINGS:
            loss = CWCLLoss(frozen, symmetric_soft)
            result = loss_and_grads(loss, image[rows], text[rows])
            with torch.no_grad():
                scale = torch.tensor(SCALE, dtype=torch.float64)
                result["per_sample"] = loss(image[rows], text[rows], scale, reduction="none")
            results[sizes, frozen, symmetric_soft] = result
    tower, images, texts = tower_and_inputs(world_size)
    model = nn.parallel.DistributedDataParallel(tower)
    rows = slice(rank * TOWER_BATCH, (rank + 1) * TOWER_BATCH)
    CWCLLoss("text")(*model(images[rows], texts[rows])).backward()
    results["tower"] = {name: p.grad.clone() for name, p in tower.named_parameters()}
    return results


# ---------------------------------------------------------------- single process


@pytest.mark.parametrize(("frozen", "symmetric_soft"), (*SETTINGS, ("image", True)))
def test_equals_functional_with_gradients(frozen, symmetric_soft) -> None:
    image, text = global_batch((5,))
    got = loss_and_grads(CWCLLoss(frozen, symmetric_soft), image, text)
    expected = loss_and_grads(
        lambda i, t, s: cwcl_loss(i, t, s, frozen=frozen, symmetric_soft=symmetric_soft),
        image,
        text,
    )
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, **TOL64)


def test_reductions_and_ignored_bias() -> None:
    image, text = global_batch((6,))
    scale, bias = torch.tensor(SCALE, dtype=torch.float64), torch.tensor(-5.0, dtype=torch.float64)
    loss = CWCLLoss()
    per_sample = loss(image, text, scale, reduction="none")
    assert per_sample.shape == (6,)
    torch.testing.assert_close(per_sample, cwcl_loss(image, text, scale, reduction="none"))
    torch.testing.assert_close(loss(image, text, scale), per_sample.mean(), **TOL64)
    torch.testing.assert_close(loss(image, text, scale, reduction="sum"), per_sample.sum())
    torch.testing.assert_close(loss(image, text, scale, bias), per_sample.mean(), **TOL64)


def test_differs_from_clip_loss_and_repr() -> None:
    from lightning_plugins.functional.clip_loss import clip_loss

    image, text = global_batch((6,))
    assert not torch.allclose(CWCLLoss()(image, text, SCALE), clip_loss(image, text, SCALE))
    assert repr(CWCLLoss("image", True)) == "CWCLLoss(frozen='image', symmetric_soft=True)"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"frozen": "audio"}, ValueError, r"`frozen` must be one of \('text', 'image'\)"),
        ({"frozen": "Text"}, ValueError, r"got 'Text'"),
        (
            {"symmetric_soft": "yes"},
            TypeError,
            r"`symmetric_soft` must be a bool .*\(str\)",
        ),
    ],
)
def test_bad_construction_raises(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        CWCLLoss(**kwargs)


@pytest.mark.parametrize(
    ("image", "text", "match"),
    [
        (torch.randn(4, 8), torch.randn(4, 6), "`image_features` and `text_features`"),
        (torch.randn(8), torch.randn(8), "`image_features` and `text_features` must be 2-D"),
        (torch.randn(1, 8), torch.randn(1, 8), "at least 2 image-text pairs in the global batch"),
    ],
)
def test_bad_features_raise(image, text, match) -> None:
    with pytest.raises(ValueError, match=match):
        CWCLLoss()(image, text, torch.tensor(SCALE))


def test_unknown_reduction_raises() -> None:
    image, text = global_batch((4,))
    with pytest.raises(ValueError, match=r"`reduction`.*'mena'"):
        CWCLLoss()(image, text, torch.tensor(SCALE), reduction="mena")


@pytest.mark.parametrize("frozen", ["text", "image"])
@pytest.mark.parametrize("name", ["image_features", "text_features", "logit_scale"])
def test_non_finite_input_is_named(frozen, name) -> None:
    image, text = global_batch((4,))
    scale = torch.tensor(SCALE, dtype=image.dtype)
    inputs = {"image_features": image, "text_features": text, "logit_scale": scale}
    inputs[name] = inputs[name].clone()
    inputs[name].view(-1)[-1] = float("nan")
    with pytest.raises(ValueError, match=f"^`{name}` holds non-finite values"):
        CWCLLoss(frozen)(**inputs)


# ---------------------------------------------------------------- DDP


@pytest.fixture(scope="module")
def ddp_results() -> list[dict]:
    return run_ddp(_ddp_worker, world_size=2)


@pytest.mark.ddp
@pytest.mark.parametrize("sizes", DDP_SIZES, ids=str)
@pytest.mark.parametrize(("frozen", "symmetric_soft"), SETTINGS)
def test_ddp_loss_and_gradients_equal_single_process(
    ddp_results, sizes, frozen, symmetric_soft
) -> None:
    """Mean of rank losses, and rank gradients / world_size, are the whole batch's."""
    world_size = len(ddp_results)
    image, text = global_batch(sizes)
    expected = loss_and_grads(CWCLLoss(frozen, symmetric_soft), image, text)
    ranks = [r[sizes, frozen, symmetric_soft] for r in ddp_results]
    torch.testing.assert_close(
        torch.stack([r["loss"] for r in ranks]).mean(), expected["loss"], **TOL64
    )
    # backward all-reduces SUM over ranks; DDP's averaging divides by world_size later
    for key in ("image", "text"):
        grads = torch.cat([r[key] for r in ranks]) / world_size
        torch.testing.assert_close(grads, expected[key], **TOL64)
    mean_scale_grad = torch.stack([r["scale"] for r in ranks]).mean()
    torch.testing.assert_close(mean_scale_grad, expected["scale"], **TOL64)
    per_sample = torch.cat([r["per_sample"] for r in ranks])
    torch.testing.assert_close(
        per_sample,
        cwcl_loss(
            image, text, SCALE, frozen=frozen, symmetric_soft=symmetric_soft, reduction="none"
        ),
        **TOL64,
    )


@pytest.mark.ddp
def test_ddp_tower_parameter_grads_equal_single_process(ddp_results) -> None:
    tower, images, texts = tower_and_inputs(len(ddp_results))
    CWCLLoss("text")(*tower(images, texts)).backward()
    for rank_result in ddp_results:
        assert rank_result["tower"].keys() == dict(tower.named_parameters()).keys()
        for name, param in tower.named_parameters():
            torch.testing.assert_close(rank_result["tower"][name], param.grad, **TOL64)
