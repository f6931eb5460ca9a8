"""Shared inputs and helpers for the CLIP and SigLIP loss tests.

Spawned DDP workers import this module: keep its imports light (no open_clip, no lightning).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

TOL64 = {"rtol": 1e-9, "atol": 1e-12}
TOL32 = {"rtol": 1e-5, "atol": 1e-6}
TOL = {torch.float64: TOL64, torch.float32: TOL32}

DDP_BATCHES = (1, 3)  # rows per rank; 1 row per rank is still a global batch of 2
TOWER_BATCH = 4
TOWER_IN_DIM, TOWER_DIM = 6, 5
GRAD_KEYS = ("image_grad", "text_grad", "scale_grad", "bias_grad")

# Features the loss modules must reject, with the message they must give.
BAD_FEATURES = [
    (torch.randn(4, 8), torch.randn(4, 6), "`image_features` and `text_features`"),
    (torch.randn(4, 8), torch.randn(3, 8), "`image_features` and `text_features`"),
    (torch.randn(8), torch.randn(8), "`image_features` and `text_features` must be 2-D"),
    (torch.randn(1, 8), torch.randn(1, 8), "at least 2 image-text pairs in the global batch"),
]
# Feature shapes the functional losses must reject, with the message they must give.
BAD_FEATURE_SHAPES = [
    ((4, 8), (4, 6), "`image_features` and `text_features` must have equal shapes"),
    ((4, 8), (3, 8), "`image_features` and `text_features` must have equal shapes"),
    ((8,), (8,), "must be 2-D"),
    ((2, 4, 8), (2, 4, 8), "must be 2-D"),
]


def paired_features(
    batch: int, dim: int = 8, seed: int = 0, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised image features and noisy captions; captions 0 and 1 are swapped.

    The swap keeps the loss away from zero at any scale, so comparisons are meaningful.
    """
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    text = image + torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    text[[0, 1]] = text[[1, 0]]
    return F.normalize(image, dim=-1).to(dtype), F.normalize(text, dim=-1).to(dtype)


def scalars(*values: float, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    """0-d tensors of ``values`` (a logit scale, and a bias where the loss has one)."""
    return tuple(torch.tensor(value, dtype=dtype) for value in values)


def leaves(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Detached copies of ``tensors`` that require grad."""
    return [t.detach().clone().requires_grad_() for t in tensors]


def loss_and_grads(loss_fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> tuple:
    """Loss of ``loss_fn(*inputs)`` and its gradient w.r.t. each input, in order."""
    inputs = tuple(leaves(*inputs))
    loss = loss_fn(*inputs)
    loss.backward()
    return (loss.detach(), *(t.grad for t in inputs))


def named_loss_and_grads(loss_fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> dict:
    """``loss_and_grads`` of (image, text, scale[, bias]) as a dict keyed by ``GRAD_KEYS``."""
    loss, *grads = loss_and_grads(loss_fn, *inputs)
    return {"loss": loss, **dict(zip(GRAD_KEYS[: len(grads)], grads, strict=True))}


def assert_results_close(got: dict, expected: dict, tol: dict) -> None:
    """Both dicts hold the same keys and, under each, tensors close within ``tol``."""
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, **tol)


class Tower(nn.Module):
    """A tiny two-tower model: linear projections, a learnable log-scale and optional bias."""

    def __init__(self, with_bias: bool = False) -> None:
        super().__init__()
        self.image_proj = nn.Linear(TOWER_IN_DIM, TOWER_DIM)
        self.text_proj = nn.Linear(TOWER_IN_DIM, TOWER_DIM)
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.bias = nn.Parameter(torch.tensor(-3.0)) if with_bias else None

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> tuple:
        outputs = (
            F.normalize(self.image_proj(images), dim=-1),
            F.normalize(self.text_proj(texts), dim=-1),
            self.log_scale.exp(),
        )
        return outputs if self.bias is None else (*outputs, self.bias)


def make_tower_and_inputs(
    world_size: int, with_bias: bool = False
) -> tuple[Tower, torch.Tensor, torch.Tensor]:
    """A seeded float64 ``Tower`` and a global batch of ``TOWER_BATCH`` rows per rank."""
    torch.manual_seed(1)
    tower = Tower(with_bias).double()
    gen = torch.Generator().manual_seed(2)
    images = torch.randn(TOWER_BATCH * world_size, TOWER_IN_DIM, generator=gen, dtype=torch.float64)
    texts = images + 0.5 * torch.randn(images.shape, generator=gen, dtype=torch.float64)
    return tower, images, texts


def ddp_global_batch(world_size: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch that ``ddp_worker`` splits, ``batch`` rows per rank."""
    return paired_features(batch * world_size, seed=batch)


def ddp_worker(
    rank: int, world_size: int, loss_cls: type[nn.Module], values: tuple[float, ...]
) -> dict:
    """Per-rank results of ``loss_cls()`` on this rank's slice of each global batch.

    ``values`` are the logit scale and, for a loss with one, the bias; the tower carries a
    bias parameter when they include one. Run it with ``tests.helpers.run_ddp``.
    """
    results: dict = {}
    for batch in DDP_BATCHES:
        image, text = ddp_global_batch(world_size, batch)  # same on every rank
        rows = slice(rank * batch, (rank + 1) * batch)
        results[batch] = named_loss_and_grads(
            loss_cls(), image[rows], text[rows], *scalars(*values)
        )
        with torch.no_grad():
            results[batch]["per_sample"] = loss_cls()(
                image[rows], text[rows], *scalars(*values), reduction="none"
            )
    tower, images, texts = make_tower_and_inputs(world_size, with_bias=len(values) > 1)
    model = nn.parallel.DistributedDataParallel(tower)
    rows = slice(rank * TOWER_BATCH, (rank + 1) * TOWER_BATCH)
    loss_cls()(*model(images[rows], texts[rows])).backward()
    results["tower"] = {name: p.grad.clone() for name, p in tower.named_parameters()}
    return results


def assert_ddp_matches_single_process(ddp_results: list[dict], batch: int, expected: dict) -> None:
    """Rank results for ``batch`` combine to ``expected`` (``named_loss_and_grads`` output)."""
    world_size = len(ddp_results)
    ranks = [r[batch] for r in ddp_results]
    assert all(expected.keys() <= r.keys() for r in ranks)
    mean_loss = torch.stack([r["loss"] for r in ranks]).mean()
    torch.testing.assert_close(mean_loss, expected["loss"], **TOL64)
    # backward all-reduces SUM over ranks; DDP's averaging divides by world_size later
    for key in ("image_grad", "text_grad"):
        grads = torch.cat([r[key] for r in ranks]) / world_size
        torch.testing.assert_close(grads, expected[key], **TOL64)
    for key in GRAD_KEYS[2:]:  # the scalars' gradients: scale, and bias where there is one
        if key in expected:
            mean_grad = torch.stack([r[key] for r in ranks]).mean()
            torch.testing.assert_close(mean_grad, expected[key], **TOL64)


def assert_ddp_per_sample(ddp_results: list[dict], batch: int, expected: torch.Tensor) -> None:
    """The ranks' per-sample losses for ``batch``, concatenated, equal ``expected``."""
    got = torch.cat([r[batch]["per_sample"] for r in ddp_results])
    torch.testing.assert_close(got, expected, **TOL64)


def assert_tower_grads_match(ddp_results: list[dict], tower: nn.Module) -> None:
    """Every rank's DDP tower gradients equal ``tower``'s single-process gradients."""
    for rank_result in ddp_results:
        assert rank_result["tower"].keys() == dict(tower.named_parameters()).keys()
        for name, param in tower.named_parameters():
            torch.testing.assert_close(rank_result["tower"][name], param.grad, **TOL64)


def assert_parts_combine_to_full(
    parts: list[torch.Tensor], full: torch.Tensor, reduction: str, inputs: tuple[torch.Tensor, ...]
) -> None:
    """Chunk losses ``parts`` combine, by ``reduction``, to ``full``, in value and in grads."""
    if reduction == "none":
        torch.testing.assert_close(torch.cat(parts), full, **TOL64)
        return
    combined = torch.stack(parts).mean() if reduction == "mean" else torch.stack(parts).sum()
    torch.testing.assert_close(combined, full, **TOL64)
    full_grads = torch.autograd.grad(full, inputs)
    local_grads = torch.autograd.grad(combined, inputs)
    for got, expected in zip(local_grads, full_grads, strict=True):
        torch.testing.assert_close(got, expected, **TOL64)
