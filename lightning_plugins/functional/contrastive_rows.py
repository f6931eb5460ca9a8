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

__all__ = ["check_chunk_size", "sigmoid_row_loss", "softmax_row_loss"]


def check_chunk_size(chunk_size: int | None) -> None:
    """Raise ``ValueError`` unless ``chunk_size`` is ``None`` or a positive integer."""
    if chunk_size is not None and (isinstance(chunk_size, bool) or chunk_size < 1):
        raise ValueError(f"`chunk_size` must be a positive integer or None, got {chunk_size!r}.")


def _as_scalar(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(dtype=like.dtype, device=like.device).reshape(())
    return torch.tensor(float(value), dtype=like.dtype, device=like.device)


def _exact(tensor: torch.Tensor) -> torch.Tensor:
    """Half-precision inputs are scored in float32 (as autocast does for losses)."""
    return tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor


def _targets(rows: int, label_offset: int, device: torch.device) -> torch.Tensor:
    return torch.arange(rows, device=device) + label_offset


class _ChunkedSoftmaxRows(torch.autograd.Function):
    """Cross-entropy of each query row over all keys, target ``label_offset + row``."""

    @staticmethod
    def forward(ctx, queries, keys, scale, label_offset, chunk_size):  # type: ignore[override]
        losses = []
        lse_blocks = []
        for start in range(0, queries.shape[0], chunk_size):
            q = queries[start : start + chunk_size]
            logits = scale * (q @ keys.T)
            lse = torch.logsumexp(logits, dim=1)
            target = _targets(q.shape[0], label_offset + start, q.device)
            positive = logits.gather(1, target[:, None]).squeeze(1)
            losses.append(lse - positive)
            lse_blocks.append(lse)
        ctx.save_for_backward(queries, keys, scale, torch.cat(lse_blocks))
        ctx.label_offset, ctx.chunk_size = label_offset, chunk_size
        return torch.cat(losses)

    @staticmethod
    def backward(ctx, grad_loss):  # type: ignore[override]
        queries, keys, scale, lse = ctx.saved_tensors
        grad_queries = torch.empty_like(queries)
        grad_keys = torch.zeros_like(keys)
        grad_scale = torch.zeros((), dtype=torch.float64, device=queries.device)
        for start in range(0, queries.shape[0], ctx.chunk_size):
            stop = start + ctx.chunk_size
            q, g = queries[start:stop], grad_loss[start:stop]
            raw = q @ keys.T
            # d loss_i / d logit_ij = softmax_ij - [j == target_i], times the upstream grad
            grad_logits = torch.exp(scale * raw - lse[start:stop, None]) * g[:, None]
            target = _targets(q.shape[0], ctx.label_offset + start, q.device)
            grad_logits.scatter_add_(1, target[:, None], -g[:, None])
            grad_scale += (grad_logits * raw).sum(dtype=torch.float64)
            grad_logits = grad_logits * scale
            grad_queries[start:stop] = grad_logits @ keys
            grad_keys += grad_logits.T @ q
        return grad_queries, grad_keys, grad_scale.to(scale.dtype), None, None


class _ChunkedSigmoidRows(torch.autograd.Function):
    """Sum over keys of ``-log sigmoid(label * logit)`` per query row."""

    @staticmethod
    def forward(ctx, queries, keys, scale, bias, label_offset, chunk_size):  # type: ignore[override]
        losses = []
        for start in range(0, queries.shape[0], chunk_size):
            q = queries[start : start + chunk_size]
            logits = scale * (q @ keys.T) + bias
            losses.append(-F.logsigmoid(_signed(logits, label_offset, start)).sum(dim=1))
        ctx.save_for_backward(queries, keys, scale, bias)
        ctx.label_offset, ctx.chunk_size = label_offset, chunk_size
        return torch.cat(losses)

    @staticmethod
    def backward(ctx, grad_loss):  # type: ignore[override]
        queries, keys, scale, bias = ctx.saved_tensors
        grad_queries = torch.empty_like(queries)
        grad_keys = torch.zeros_like(keys)
        grad_scale = torch.zeros((), dtype=torch.float64, device=queries.device)
        grad_bias = torch.zeros((), dtype=torch.float64, device=queries.device)
        for start in range(0, queries.shape[0], ctx.chunk_size):
            stop = start + ctx.chunk_size
            q, g = queries[start:stop], grad_loss[start:stop]
            raw = q @ keys.T
            signed = _signed(scale * raw + bias, ctx.label_offset, start)
            # d/dz -log sigmoid(z) = -sigmoid(-z); z = label * logit
            grad_logits = torch.sigmoid(-signed)
            grad_logits = _signed(grad_logits, ctx.label_offset, start).neg_() * g[:, None]
            grad_scale += (grad_logits * raw).sum(dtype=torch.float64)
            grad_bias += grad_logits.sum(dtype=torch.float64)
            grad_logits = grad_logits * scale
            grad_queries[start:stop] = grad_logits @ keys
            grad_keys += grad_logits.T @ q
        return (
            grad_queries,
            grad_keys,
            grad_scale.to(scale.dtype),
            grad_bias.to(bias.dtype),
            None,
            None,
        )


def _signed(logits: torch.Tensor, label_offset: int | None, start: int) -> torch.Tensor:
    """``label * logits``: -1 everywhere, +1 at ``(i, label_offset + start + i)``."""
    signed = -logits
    if label_offset is not None:
        rows = torch.arange(logits.shape[0], device=logits.device)
        cols = rows + label_offset + start
        signed[rows, cols] = logits[rows, cols]
    return signed


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
    queries, keys = _exact(queries), _exact(keys)
    with torch.autocast(queries.device.type, enabled=False):
        return _ChunkedSoftmaxRows.apply(
            queries, keys, _as_scalar(scale, queries), label_offset, chunk_size
        )


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
        return -F.logsigmoid(_signed(logits, label_offset, 0)).sum(dim=1)
    queries, keys = _exact(queries), _exact(keys)
    with torch.autocast(queries.device.type, enabled=False):
        return _ChunkedSigmoidRows.apply(
            queries,
            keys,
            _as_scalar(scale, queries),
            _as_scalar(0.0 if bias is None else bias, queries),
            label_offset,
            chunk_size,
        )
