"""Every distributed variant of the losses equals the single-process loss of the whole batch.

World sizes 2 and 4 (gloo, CPU), equal and unequal local batches (the last step of an
epoch), chunked and unchunked. Convention: DDP averages gradients over ranks, so each
rank's gradient of its own features divided by the world size, and the rank-mean of the
logit scale/bias gradients, must equal the single-process gradients.
"""

import pytest
import torch
import torch.nn.functional as F

from lightning_plugins.functional import clip_loss, siglip_loss
from lightning_plugins.losses import ClipLoss, SigLipLoss
from tests.helpers import run_ddp

DIM = 6
TOL = {"rtol": 1e-9, "atol": 1e-12}
VARIANTS = {
    "clip": lambda: ClipLoss(),
    "clip_chunked": lambda: ClipLoss(chunk_size=2),
    "clip_global": lambda: ClipLoss(local_loss=False),
    "clip_global_chunked": lambda: ClipLoss(local_loss=False, chunk_size=3),
    "siglip_ring": lambda: SigLipLoss(dist_impl="ring"),
    "siglip_ring_chunked": lambda: SigLipLoss(dist_impl="ring", chunk_size=2),
    "siglip_gather": lambda: SigLipLoss(dist_impl="gather"),
    "siglip_gather_chunked": lambda: SigLipLoss(dist_impl="gather", chunk_size=1),
}
SIZES = {2: [(3, 3), (3, 1)], 4: [(2, 2, 2, 2), (3, 2, 2, 1)]}


def global_inputs(sizes: tuple[int, ...]) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(sum(sizes) * 7 + len(sizes))
    n = sum(sizes)
    image = F.normalize(torch.randn(n, DIM, generator=generator, dtype=torch.float64), dim=-1)
    text = F.normalize(
        image + torch.randn(n, DIM, generator=generator, dtype=torch.float64), dim=-1
    )
    text[1] = text[0]  # a duplicated caption: ties inside the batch
    return {
        "image": image,
        "text": text,
        "scale": torch.tensor(12.0, dtype=torch.float64),
        "bias": torch.tensor(-4.0, dtype=torch.float64),
    }


def _grads(name, image, text, scale, bias):
    image, text, scale, bias = (
        t.detach().clone().requires_grad_() for t in (image, text, scale, bias)
    )
    loss = VARIANTS[name]()(image, text, scale, bias if name.startswith("siglip") else None)
    loss.backward()
    grad_bias = bias.grad if bias.grad is not None else torch.zeros(())
    return loss.detach(), image.grad, text.grad, scale.grad, grad_bias


def _worker(rank: int, world_size: int) -> dict:
    out = {}
    for sizes in SIZES[world_size]:
        inputs = global_inputs(sizes)
        start, stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
        for name in VARIANTS:
            local = [inputs["image"][start:stop], inputs["text"][start:stop]]
            out[sizes, name] = _grads(name, *local, inputs["scale"], inputs["bias"])
    return out


def reference(name: str, inputs: dict) -> tuple[torch.Tensor, ...]:
    image, text, scale, bias = (t.clone().requires_grad_() for t in inputs.values())
    if name.startswith("clip"):
        loss = clip_loss(image, text, scale)
    else:
        loss = siglip_loss(image, text, scale, bias)
    loss.backward()
    grad_bias = bias.grad if name.startswith("siglip") else torch.zeros(())
    return loss.detach(), image.grad, text.grad, scale.grad, grad_bias


@pytest.fixture(scope="module", params=[2, 4], ids=["world2", "world4"])
def ddp_results(request):
    return request.param, run_ddp(_worker, world_size=request.param)


@pytest.mark.ddp
@pytest.mark.parametrize("name", list(VARIANTS))
def test_distributed_loss_and_gradients_are_exact(ddp_results, name):
    world_size, results = ddp_results
    for sizes in SIZES[world_size]:
        inputs = global_inputs(sizes)
        loss, grad_image, grad_text, grad_scale, grad_bias = reference(name, inputs)
        ranks = [r[sizes, name] for r in results]
        # DDP averages: the mean of the ranks' losses and scalar gradients is the global one
        torch.testing.assert_close(torch.stack([r[0] for r in ranks]).mean(), loss, **TOL)
        torch.testing.assert_close(torch.stack([r[3] for r in ranks]).mean(), grad_scale, **TOL)
        torch.testing.assert_close(torch.stack([r[4] for r in ranks]).mean(), grad_bias, **TOL)
        for rank, result in enumerate(ranks):
            start, stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
            torch.testing.assert_close(result[1] / world_size, grad_image[start:stop], **TOL)
            torch.testing.assert_close(result[2] / world_size, grad_text[start:stop], **TOL)
