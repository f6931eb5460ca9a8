"""Row-wise contrastive losses, optionally computed in row blocks with recomputation.

``softmax_row_loss`` and ``sigmoid_row_loss`` score query rows against key rows,
``logits = scale * queries @ keys.T (+ bias)``, and return one loss per query. With
``chunk_size=k`` neither forward nor backward ever holds more than ``k`` rows of the
logit matrix: a custom autograd function keeps only the per-row log-sum-exp and
recomputes each block in backward (the same trade as flash attention), so extra memory
is ``O(k * N)`` instead of ``O(B * N)``, for the same values and gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_plugins.functional._checks import check_int

__all__ = [
    "check_chunk_size",
    "sigmoid_row_loss",
    "softmax_row_loss",
    "symmetric_softmax_loss",
    "upcast_half_precision",
]


def check_chunk_size(chunk_size: int | None) -> None:
    """Raise unless ``chunk_size`` is ``None`` or a positive integer.

    ``TypeError`` for a value that is no integer (``1.5``, ``"8"``, ``True``),
    ``ValueError`` for one below 1.

    Example:
        >>> check_chunk_size(None)
        >>> check_chunk_size(0)
        Traceback (most recent call last):
        ...
        ValueError: `chunk_size` must be a positive integer, got 0.
    """
    check_int(chunk_size, "chunk_size", low=1, optional=True)


def _as_scalar(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(dtype=like.dtype, device=like.device).reshape(())
    return torch.tensor(float(value), dtype=like.dtype, device=like.device)


def upcast_half_precision(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in float32 if it is float16 or bfloat16, else unchanged.

    Losses score half-precision features in float32, as autocast does for losses, so
    their values and gradients do not depend on the training precision.

    Example:
        >>> upcast_half_precision(torch.ones(2, dtype=torch.bfloat16)).dtype
        torch.float32
        >>> upcast_half_precision(torch.ones(2, dtype=torch.float64)).dtype
        torch.float64
    """
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def _targets(rows: int, label_offset: int, device: torch.device) -> torch.Tensor:
    return torch.arange(rows, device=device) + label_offset


def _block_logits(q: torch.Tensor, keys: torch.Tensor, scale: torch.Tensor, bias=None):
    """``scale * q @ keys.T (+ bias)`` with the scale applied to the small operand."""
    logits = (q * scale) @ keys.T
    return logits if bias is None else logits.add_(bias)


def _diagonal(block: torch.Tensor, column_offset: int) -> torch.Tensor:
    """View of the entries ``(i, column_offset + i)`` of a block."""
    return block.diagonal(offset=column_offset)


def _accumulate(grad_logits, q, keys, scale, grad_queries, grad_keys, start, stop):
    """Gradients of ``scale * q @ keys.T`` from the block's ``d loss / d logits``.

    Returns this block's ``d loss / d scale`` as ``sum_i q_i . (G @ keys)_i``, which needs
    no second pass over the ``[k, N]`` block.
    """
    grad_times_keys = grad_logits @ keys
    grad_queries[start:stop] = grad_times_keys * scale
    grad_keys += (grad_logits.T @ q) * scale
    return (q * grad_times_keys).sum(dtype=torch.float64)


class _ChunkedSoftmaxRows(torch.autograd.Function):
    """Cross-entropy of each query row over all keys, target ``label_offset + row``."""

    @staticmethod
    def forward(ctx, queries, keys, scale, label_offset, chunk_size):  # type: ignore[override]
        losses = torch.empty(queries.shape[0], dtype=queries.dtype, device=queries.device)
        lse = torch.empty_like(losses)
        for start in range(0, queries.shape[0], chunk_size):
            stop = min(start + chunk_size, queries.shape[0])
            logits = _block_logits(queries[start:stop], keys, scale)
            lse[start:stop] = torch.logsumexp(logits, dim=1)
            losses[start:stop] = lse[start:stop] - _diagonal(logits, label_offset + start)
        ctx.save_for_backward(queries, keys, scale, lse)
        ctx.label_offset, ctx.chunk_size = label_offset, chunk_size
        return losses

    @staticmethod
    def backward(ctx, grad_loss):  # type: ignore[override]
        queries, keys, scale, lse = ctx.saved_tensors
        grad_queries = torch.empty_like(queries)
        grad_keys = torch.zeros_like(keys)
        grad_scale = torch.zeros((), dtype=torch.float64, device=queries.device)
        for start in range(0, queries.shape[0], ctx.chunk_size):
            stop = min(start + ctx.chunk_size, queries.shape[0])
            q, g = queries[start:stop], grad_loss[start:stop]
            # d loss_i / d logit_ij = softmax_ij - [j == target_i], times the upstream grad
            grad_logits = _block_logits(q, keys, scale).sub_(lse[start:stop, None]).exp_()
            grad_logits.mul_(g[:, None])
            _diagonal(grad_logits, ctx.label_offset + start).sub_(g)
            grad_scale += _accumulate(
                grad_logits, q, keys, scale, grad_queries, grad_keys, start, stop
            )
        return grad_queries, grad_keys, grad_scale.to(scale.dtype), None, None


class _ChunkedSymmetricSoftmax(torch.autograd.Function):
    """CLIP's two cross-entropies of one square batch, from one pass over row blocks.

    Row ``i`` of ``logits = scale * images @ texts.T`` gives image ``i``'s cross-entropy
    over texts; column ``i`` gives text ``i``'s over images. Row log-sum-exps are exact per
    block, column ones are accumulated online (running maximum and rescaled sum).
    """

    @staticmethod
    def forward(ctx, images, texts, scale, chunk_size):  # type: ignore[override]
        n = images.shape[0]
        row_lse = torch.empty(n, dtype=images.dtype, device=images.device)
        positive = torch.empty_like(row_lse)
        col_max = torch.full_like(row_lse, float("-inf"))
        col_sum = torch.zeros_like(row_lse)
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            logits = _block_logits(images[start:stop], texts, scale)
            row_lse[start:stop] = torch.logsumexp(logits, dim=1)
            positive[start:stop] = _diagonal(logits, start)
            new_max = torch.maximum(col_max, logits.max(dim=0).values)
            col_sum.mul_(torch.exp(col_max - new_max)).add_(logits.sub_(new_max).exp_().sum(dim=0))
            col_max = new_max
        col_lse = col_max + col_sum.log()
        ctx.save_for_backward(images, texts, scale, row_lse, col_lse)
        ctx.chunk_size = chunk_size
        return (row_lse + col_lse) / 2 - positive

    @staticmethod
    def backward(ctx, grad_loss):  # type: ignore[override]
        images, texts, scale, row_lse, col_lse = ctx.saved_tensors
        grad_images = torch.empty_like(images)
        grad_texts = torch.zeros_like(texts)
        grad_scale = torch.zeros((), dtype=torch.float64, device=images.device)
        half = grad_loss / 2
        for start in range(0, images.shape[0], ctx.chunk_size):
            stop = min(start + ctx.chunk_size, images.shape[0])
            q = images[start:stop]
            logits = _block_logits(q, texts, scale)
            by_column = (logits - col_lse).exp_().mul_(half)
            grad_logits = logits.sub_(row_lse[start:stop, None]).exp_()
            grad_logits.mul_(half[start:stop, None]).add_(by_column)
            _diagonal(grad_logits, start).sub_(grad_loss[start:stop])
            grad_scale += _accumulate(
                grad_logits, q, texts, scale, grad_images, grad_texts, start, stop
            )
        return grad_images, grad_texts, grad_scale.to(scale.dtype), None


class _ChunkedSigmoidRows(torch.autograd.Function):
    """Sum over keys of ``-log sigmoid(label * logit)`` per query row."""

    @staticmethod
    def forward(ctx, queries, keys, scale, bias, label_offset, chunk_size):  # type: ignore[override]
        losses = torch.empty(queries.shape[0], dtype=queries.dtype, device=queries.device)
        for start in range(0, queries.shape[0], chunk_size):
            stop = min(start + chunk_size, queries.shape[0])
            logits = _block_logits(queries[start:stop], keys, scale, bias)
            # -log sigmoid(-x) = softplus(x) for negatives; softplus(-x) = softplus(x) - x
            row = F.softplus(logits).sum(dim=1)
            if label_offset is not None:
                row -= _diagonal(logits, label_offset + start)
            losses[start:stop] = row
        ctx.save_for_backward(queries, keys, scale, bias)
        ctx.label_offset, ctx.chunk_size = label_offset, chunk_size
        return losses

    @staticmethod
    def backward(ctx, grad_loss):  # type: ignore[override]
        queries, keys, scale, bias = ctx.saved_tensors
        grad_queries = torch.empty_like(queries)
        grad_keys = torch.zeros_like(keys)
        grad_scale = torch.zeros((), dtype=torch.float64, device=queries.device)
        grad_bias = torch.zeros((), dtype=torch.float64, device=queries.device)
        for start in range(0, queries.shape[0], ctx.chunk_size):
            stop = min(start + ctx.chunk_size, queries.shape[0])
            q, g = queries[start:stop], grad_loss[start:stop]
            # d/dx softplus(x) = sigmoid(x); positives subtract 1
            grad_logits = _block_logits(q, keys, scale, bias).sigmoid_()
            if ctx.label_offset is not None:
                _diagonal(grad_logits, ctx.label_offset + start).sub_(1.0)
            grad_logits.mul_(g[:, None])
            grad_bias += grad_logits.sum(dtype=torch.float64)
            grad_scale += _accumulate(
                grad_logits, q, keys, scale, grad_queries, grad_keys, start, stop
            )
        return (
            grad_queries,
            grad_keys,
            grad_scale.to(scale.dtype),
            grad_bias.to(bias.dtype),
            None,
            None,
        )


def softmax_row_loss(
    queries: torch.Tensor,
    keys: torch.Tensor,
    scale: torch.Tensor | float,
    label_offset: int = 0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Cross-entropy of each query over all keys, the target being key ``label_offset + i``.

    Args:
        queries: ``[B, D]``.
        keys: ``[N, D]``.
        scale: scalar multiplying ``queries @ keys.T``.
        label_offset: key index of query 0's target.
        chunk_size: query rows per block, or ``None`` to build the ``[B, N]`` logits at once.

    Returns:
        ``[B]`` losses.

    Example:
        >>> q, k = torch.eye(3), torch.eye(3)
        >>> full = softmax_row_loss(q, k, 5.0)
        >>> torch.allclose(full, softmax_row_loss(q, k, 5.0, chunk_size=2))
        True
    """
    check_chunk_size(chunk_size)
    if chunk_size is None:
        logits = scale * queries @ keys.T  # open_clip's order of operations
        target = _targets(queries.shape[0], label_offset, queries.device)
        return F.cross_entropy(logits, target, reduction="none")
    queries, keys = upcast_half_precision(queries), upcast_half_precision(keys)
    with torch.autocast(queries.device.type, enabled=False):
        return _ChunkedSoftmaxRows.apply(
            queries, keys, _as_scalar(scale, queries), label_offset, chunk_size
        )


def symmetric_softmax_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    scale: torch.Tensor | float,
    chunk_size: int,
) -> torch.Tensor:
    """Per-pair CLIP loss of one square batch, in row blocks of ``chunk_size``.

    Equals ``(softmax_row_loss(images, texts) + softmax_row_loss(texts, images)) / 2``
    with one pass over the logits instead of two.

    Args:
        image_features: ``[N, D]``.
        text_features: ``[N, D]``, row ``i`` the caption of image ``i``.
        scale: scalar multiplying ``image_features @ text_features.T``.
        chunk_size: image rows per block.

    Returns:
        ``[N]`` losses.

    Example:
        >>> x = torch.eye(4)
        >>> two_way = (softmax_row_loss(x, x.roll(1, 0), 3.0)
        ...            + softmax_row_loss(x.roll(1, 0), x, 3.0)) / 2
        >>> torch.allclose(symmetric_softmax_loss(x, x.roll(1, 0), 3.0, 3), two_way)
        True
    """
    check_chunk_size(chunk_size)
    images, texts = upcast_half_precision(image_features), upcast_half_precision(text_features)
    with torch.autocast(images.device.type, enabled=False):
        return _ChunkedSymmetricSoftmax.apply(images, texts, _as_scalar(scale, images), chunk_size)


def sigmoid_row_loss(
    queries: torch.Tensor,
    keys: torch.Tensor,
    scale: torch.Tensor | float,
    bias: torch.Tensor | float | None = None,
    label_offset: int | None = 0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Sum over keys of ``-log sigmoid(label * (scale * <q, k> + bias))`` per query.

    The label is +1 for key ``label_offset + i`` and -1 for every other key; with
    ``label_offset=None`` every key is a negative (a block of another rank's texts).

    Args:
        queries: ``[B, D]``.
        keys: ``[N, D]``.
        scale: scalar multiplying ``queries @ keys.T``.
        bias: scalar added to the logits, or ``None``.
        label_offset: key index of query 0's positive, or ``None`` for negatives only.
        chunk_size: query rows per block, or ``None`` to build the ``[B, N]`` logits at once.

    Returns:
        ``[B]`` losses.

    Example:
        >>> q = torch.eye(3)
        >>> full = sigmoid_row_loss(q, q, 10.0, -5.0)
        >>> torch.allclose(full, sigmoid_row_loss(q, q, 10.0, -5.0, chunk_size=2))
        True
    """
    check_chunk_size(chunk_size)
    if chunk_size is None:
        logits = scale * queries @ keys.T  # open_clip's order of operations
        if bias is not None:
            logits = logits + bias
        # -log sigmoid(-x) = softplus(x) for every pair, and -log sigmoid(x) =
        # softplus(x) - x for the positives: no signed copy of the logits.
        # softplus(x) is x itself past `threshold`; 40 keeps float64 exact too.
        threshold = 40.0 if logits.dtype == torch.float64 else 20.0
        per_row = F.softplus(logits, threshold=threshold).sum(dim=1)
        if label_offset is not None:
            rows = torch.arange(logits.shape[0], device=logits.device)
            per_row = per_row - logits[rows, rows + label_offset]
        return per_row
    queries, keys = upcast_half_precision(queries), upcast_half_precision(keys)
    with torch.autocast(queries.device.type, enabled=False):
        return _ChunkedSigmoidRows.apply(
            queries,
            keys,
            _as_scalar(scale, queries),
            _as_scalar(0.0 if bias is None else bias, queries),
            label_offset,
            chunk_size,
        )
