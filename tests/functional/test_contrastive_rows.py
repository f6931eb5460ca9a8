"""Chunked row losses equal the naive full-matrix formulas, values and gradients."""

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_plugins.functional import clip_loss, siglip_loss
from lightning_plugins.functional.contrastive_rows import sigmoid_row_loss, softmax_row_loss
from lightning_plugins.losses import ClipLoss, SigLipLoss

REL = {"rtol": 1e-5, "atol": 1e-7}


def naive_clip(image, text, scale):
    """Direct formula: the full N x N matrix, explicit log-softmax both ways."""
    logits = scale * image @ text.T
    n = logits.shape[0]
    i2t = -torch.stack([logits[i, i] - torch.logsumexp(logits[i], 0) for i in range(n)])
    t2i = -torch.stack([logits[i, i] - torch.logsumexp(logits[:, i], 0) for i in range(n)])
    return ((i2t + t2i) / 2).mean()


def naive_siglip(image, text, scale, bias):
    logits = scale * image @ text.T + bias
    labels = 2 * torch.eye(logits.shape[0], dtype=logits.dtype) - 1
    return -F.logsigmoid(labels * logits).sum() / logits.shape[0]


def inputs(kind: str, n: int, dim: int = 8, dtype=torch.float32):
    generator = torch.Generator().manual_seed(n)
    image = F.normalize(torch.randn(n, dim, generator=generator, dtype=torch.float64), dim=-1)
    text = F.normalize(
        image + 0.5 * torch.randn(n, dim, generator=generator, dtype=torch.float64), dim=-1
    )
    scale = 10.0
    if kind == "large_scale":
        scale = 100.0 * math.e  # far above the clamp: logits up to ~270
    elif kind == "duplicates":
        image[1:4] = image[0]
        text[2:5] = text[0]
    elif kind == "collapsed":
        image[:] = image[0]
        text[:] = image[0]
    leaves = [t.to(dtype).requires_grad_() for t in (image, text)]
    scalars = [torch.tensor(v, dtype=dtype, requires_grad=True) for v in (scale, -7.0)]
    return leaves + scalars


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


def assert_grads_close(ours, expected):
    """Float32 against a float64 reference: 1e-5 relative to each gradient's scale."""
    for a, b in zip(ours, expected, strict=True):
        scale = float(b.abs().max())
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-5, atol=1e-5 * scale + 1e-6)


KINDS = ["random", "large_scale", "duplicates", "collapsed"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("n", "chunk"), [(16, 16), (17, 4), (23, 5), (9, 1), (10, 64)])
def test_chunked_clip_equals_naive(kind, n, chunk):
    image, text, scale, _ = inputs(kind, n)
    expected = naive_clip(image.double(), text.double(), scale.double())
    ours = clip_loss(image, text, scale, chunk_size=chunk)
    torch.testing.assert_close(ours.double(), expected, **REL)
    assert_grads_close(grads(ours, [image, text, scale]), grads(expected, [image, text, scale]))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("n", "chunk"), [(16, 16), (17, 4), (23, 5), (9, 1), (10, 64)])
def test_chunked_siglip_equals_naive(kind, n, chunk):
    image, text, scale, bias = inputs(kind, n)
    tensors = [image, text, scale, bias]
    expected = naive_siglip(image.double(), text.double(), scale.double(), bias.double())
    ours = siglip_loss(image, text, scale, bias, chunk_size=chunk)
    torch.testing.assert_close(ours.double(), expected, **REL)
    assert_grads_close(grads(ours, tensors), grads(expected, tensors))


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_chunked_rows_with_offsets_and_negative_blocks_in_float64(chunk):
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(7, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    k = torch.randn(12, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    s = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(7, generator=generator, dtype=torch.float64)
    cases = [
        (lambda cs: softmax_row_loss(q, k, s, 4, cs), [q, k, s]),
        (lambda cs: sigmoid_row_loss(q, k, s, b, 5, cs), [q, k, s, b]),
        (lambda cs: sigmoid_row_loss(q, k, s, b, None, cs), [q, k, s, b]),
    ]
    for fn, tensors in cases:
        full, chunked = fn(None), fn(chunk)
        torch.testing.assert_close(chunked, full, rtol=1e-12, atol=1e-12)
        for a, c in zip(
            grads((full * weights).sum(), tensors),
            grads((chunked * weights).sum(), tensors),
            strict=True,
        ):
            torch.testing.assert_close(c, a, rtol=1e-10, atol=1e-12)


def test_gradcheck_chunked_rows():
    generator = torch.Generator().manual_seed(1)
    q = torch.randn(5, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    k = torch.randn(6, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    s = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-0.5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: softmax_row_loss(*t, 1, 2), (q, k, s))
    assert torch.autograd.gradcheck(lambda *t: sigmoid_row_loss(*t, 0, 2), (q, k, s, b))


def test_half_precision_inputs_are_scored_in_float32():
    image, text, scale, bias = inputs("random", 12, dtype=torch.float64)
    expected = siglip_loss(image, text, scale, bias)
    half = siglip_loss(image.bfloat16(), text.bfloat16(), scale, bias, chunk_size=5)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half.double(), expected, rtol=2e-2, atol=1e-2)


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (0, ValueError, "`chunk_size` must be a positive integer, got 0"),
        (-3, ValueError, "`chunk_size` must be a positive integer, got -3"),
        (True, TypeError, "`chunk_size` must be an integer or None, got True"),
        (2.5, TypeError, "`chunk_size` must be an integer or None, got 2.5"),
    ],
)
def test_bad_chunk_size(bad, error, match):
    with pytest.raises(error, match=match):
        ClipLoss(chunk_size=bad)
    with pytest.raises(error, match=match):
        SigLipLoss(chunk_size=bad)


def test_unknown_dist_impl():
    with pytest.raises(ValueError, match="`dist_impl` must be one of .*'ring'.*got 'allreduce'"):
        SigLipLoss(dist_impl="allreduce")


@pytest.mark.parametrize("loss", [ClipLoss(), SigLipLoss()], ids=["clip", "siglip"])
def test_unnormalised_features_are_rejected_on_first_call(loss):
    image, text, scale, bias = (t.detach() for t in inputs("random", 6))
    with pytest.raises(ValueError, match="`text_features` must be L2-normalised"):
        loss(image, 3 * text, scale, bias)
    loss(image, text, scale, bias)  # the check passes once, then is skipped
    loss(image, 3 * text, scale, bias)
    relaxed = type(loss)(normalized=False)
    relaxed(2 * image, text, scale, bias)


@pytest.mark.parametrize("chunk", [1, 4, 11])
def test_symmetric_chunked_loss_with_uneven_upstream_gradients(chunk):
    from lightning_plugins.functional.contrastive_rows import symmetric_softmax_loss

    generator = torch.Generator().manual_seed(2)
    image = torch.randn(11, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    text = torch.randn(11, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(11, generator=generator, dtype=torch.float64)
    tensors = [image, text, scale]
    two_way = (softmax_row_loss(image, text, scale) + softmax_row_loss(text, image, scale)) / 2
    fused = symmetric_softmax_loss(image, text, scale, chunk)
    torch.testing.assert_close(fused, two_way, rtol=1e-12, atol=1e-12)
    for a, b in zip(
        grads((fused * weights).sum(), tensors),
        grads((two_way * weights).sum(), tensors),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
