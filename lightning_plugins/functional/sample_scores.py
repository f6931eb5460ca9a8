"""Per-sample scores for data selection (Data Diet, forgetting) and curricula, in pure torch.

Scores: EL2N and GraNd (Paul et al. 2021), forgetting events (Toneva et al. 2019). Turning
them into training decisions is :mod:`.difficulty`'s job.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from lightning_plugins.functional._checks import check_int, check_length

__all__ = [
    "check_scores",
    "el2n_scores",
    "forgetting_events",
    "grand_scores",
    "per_sample_grad_norms",
]


def check_scores(
    scores: Any,
    name: str = "scores",
    length: int | None = None,
    *,
    low: float | None = None,
    high: float | None = None,
) -> torch.Tensor:
    """Return per-sample ``scores`` as a 1-D floating-point tensor, checked.

    A tensor, numpy array or sequence of numbers is accepted; a floating-point tensor keeps
    its dtype, integers and bools become float64 (exact). Every score must be finite and,
    when given, in ``[low, high]``.

    Args:
        scores: one score per sample.
        name: how the error messages name ``scores``.
        length: the number of samples, or ``None`` for any.
        low: the smallest allowed score, or ``None``.
        high: the largest allowed score, or ``None``.

    Raises:
        TypeError: for scores that are not real numbers.
        ValueError: for scores that are not 1-D, hold a number of entries other than
            ``length``, or hold values that are not finite or outside ``[low, high]``
            (naming how many and the first one's index and value).

    Example:
        >>> check_scores([3, 1, 2], "difficulty", 3)
        tensor([3., 1., 2.], dtype=torch.float64)
        >>> check_scores(torch.tensor([0.5, float("nan"), 1.0, float("inf")]), "difficulty", 4)
        Traceback (most recent call last):
        ...
        ValueError: `difficulty` must be finite, but 2 of its 4 values are not; the first at index 1 (nan).
        >>> check_scores(torch.ones(4), "difficulty", 5)
        Traceback (most recent call last):
        ...
        ValueError: `difficulty` must hold one entry per sample (5), got 4.
    """  # noqa: E501
    if not isinstance(scores, torch.Tensor):
        try:
            scores = torch.as_tensor(scores)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                f"`{name}` must be a tensor of numbers, got {type(scores).__name__}."
            ) from None
    if scores.is_complex():
        raise TypeError(f"`{name}` must hold real numbers, got dtype {scores.dtype}.")
    if not scores.is_floating_point():
        scores = scores.to(torch.float64)
    if scores.ndim != 1:
        raise ValueError(
            f"`{name}` must be 1-D (one score per sample), got shape {tuple(scores.shape)}."
        )
    if length is not None:
        check_length(scores, name, length, "sample")
    bad = ~torch.isfinite(scores)
    what = "finite"
    if low is not None or high is not None:
        lower = -float("inf") if low is None else low
        upper = float("inf") if high is None else high
        bad |= (scores < lower) | (scores > upper)
        what = f"finite and in [{lower:g}, {upper:g}]"
    count = int(bad.sum())
    if count:
        first = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"`{name}` must be {what}, but {count} of its {scores.numel()} values are not; "
            f"the first at index {first} ({float(scores[first]):g})."
        )
    return scores


@torch.no_grad()
def el2n_scores(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """EL2N: the L2 norm of the error vector ``‖softmax(logits) - onehot(targets)‖₂`` per sample.

    Paul et al. (2021): high scores mark hard (or mislabelled) samples. Computed in at least
    float32 (half-precision logits are upcast) and without gradients. The score lies in
    ``[0, √2]``.

    Args:
        logits: ``[B, C]`` class logits.
        targets: ``[B]`` class indices in ``[0, C)``.

    Returns:
        ``[B]`` scores, float32 (float64 for float64 logits).

    Raises:
        TypeError: for non-floating ``logits`` or non-integer ``targets``.
        ValueError: for shapes other than ``[B, C]`` and ``[B]`` or targets outside
            ``[0, C)``.

    Example:
        >>> logits = torch.tensor([[10.0, 0.0], [0.0, 0.0], [0.0, 10.0]])
        >>> el2n_scores(logits, torch.tensor([0, 1, 0]))
        tensor([6.4202e-05, 7.0711e-01, 1.4141e+00])
    """
    if not logits.is_floating_point():
        raise TypeError(f"`logits` must be a floating-point tensor, got dtype {logits.dtype}.")
    if targets.is_floating_point() or targets.is_complex() or targets.dtype == torch.bool:
        raise TypeError(f"`targets` must be an integer tensor, got dtype {targets.dtype}.")
    if logits.ndim != 2 or targets.ndim != 1 or logits.shape[0] != targets.shape[0]:
        raise ValueError(
            f"`logits` must be [B, C] and `targets` [B], got shapes {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}."
        )
    num_classes = logits.shape[1]
    if targets.numel() and not bool(((targets >= 0) & (targets < num_classes)).all()):
        raise ValueError(
            f"`targets` must be class indices in [0, {num_classes}), got values from "
            f"{int(targets.min())} to {int(targets.max())}."
        )
    dtype = torch.promote_types(logits.dtype, torch.float32)
    # ‖p - e_y‖² = (1 - p_y)² + Σ_{j≠y} p_j², with 1 - p_y summed from the other classes:
    # no cancellation in 1 - p_y for confident predictions
    others = logits.to(dtype).softmax(dim=-1)
    others[torch.arange(len(targets), device=targets.device), targets] = 0.0
    return (others.sum(dim=-1).square() + others.square().sum(dim=-1)).sqrt()


def grand_scores(
    loss_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    params: dict[str, torch.Tensor],
    chunk_size: int | None = None,
) -> torch.Tensor:
    """GraNd: the per-sample gradient norm ``‖∂loss_i/∂params‖₂`` for every sample ``i``.

    ``loss_fn(params)`` returns the ``[B]`` per-sample losses of one batch (build it with
    :func:`torch.func.functional_call`). One backward pass per sample is replaced by one
    :func:`torch.func.vjp` and a :func:`torch.func.vmap` over the one-hot cotangents, so
    each norm is that of the true gradient of ``loss_i`` even when samples interact (an
    in-batch softmax, batch statistics). Only the norms are kept: memory grows with
    ``chunk_size`` (samples per vmapped pass; ``None`` for all ``B`` at once) times the
    number of parameters. Put a model with batch norm in ``eval()`` mode first. The result
    carries no gradient.

    Args:
        loss_fn: ``params -> [B]`` per-sample losses.
        params: the parameters to differentiate by name (e.g.
            ``dict(model.named_parameters())``); they are detached.
        chunk_size: how many samples each vmapped pass handles, at least 1, or ``None``.

    Returns:
        ``[B]`` gradient norms, in the loss's dtype.

    Raises:
        TypeError: for ``params`` that is not a non-empty dict of floating-point tensors.
        ValueError: for ``loss_fn`` not returning a 1-D floating-point tensor, or
            ``chunk_size < 1``.

    Example:
        >>> weight = torch.tensor([[1.0, 2.0]])
        >>> inputs = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
        >>> def loss_fn(params):
        ...     return (inputs @ params["weight"].T).squeeze(1) ** 2 / 2  # grad: (x·w) x
        >>> grand_scores(loss_fn, {"weight": weight})
        tensor([ 1., 55.])
    """
    if not isinstance(params, dict) or not params:
        raise TypeError(
            "`params` must be a non-empty dict of tensors (e.g. dict(model.named_parameters())),"
            f" got {params!r:.80}."
        )
    for key, value in params.items():
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise TypeError(
                f"`params[{key!r}]` must be a floating-point tensor, got "
                f"{getattr(value, 'dtype', type(value).__name__)}."
            )
    chunk_size = check_int(chunk_size, "chunk_size", low=1, optional=True)
    params = {key: value.detach() for key, value in params.items()}
    losses, vjp_fn = torch.func.vjp(loss_fn, params)
    if not isinstance(losses, torch.Tensor) or losses.ndim != 1 or not losses.is_floating_point():
        shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise ValueError(
            f"`loss_fn` must return the [B] per-sample losses (1-D, floating point), got {shape}."
        )

    def gradient_norm(cotangent: torch.Tensor) -> torch.Tensor:
        (gradients,) = vjp_fn(cotangent)
        squares = [gradient.pow(2).sum() for gradient in gradients.values()]
        return torch.stack(squares).sum().sqrt()

    cotangents = torch.eye(losses.shape[0], dtype=losses.dtype, device=losses.device)
    return torch.func.vmap(gradient_norm, chunk_size=chunk_size)(cotangents).detach()


def per_sample_grad_norms(
    loss_fn: Callable[[dict[str, torch.Tensor], dict[str, Any]], torch.Tensor],
    params: dict[str, torch.Tensor],
    batch: Mapping[str, Any],
    chunk_size: int | None = None,
) -> torch.Tensor:
    """GraNd of independent samples: ``‖∇ loss(x_i, y_i)‖₂`` with each sample on its own.

    The per-sample gradients come from one :func:`torch.func.vmap` of
    :func:`torch.func.grad` over the samples (the cost of about one batched backward pass),
    each sample seen as a batch of one. ``loss_fn(params, batch)`` returns the ``[B]``
    per-sample losses of a batch; it is called with batches of one sample. Tensors of
    ``batch`` whose first dimension is the batch size are split into samples; everything
    else is passed whole. Use :func:`grand_scores` when a sample's loss depends on the
    other samples of its batch (an in-batch softmax). Put a model with batch norm in
    ``eval()`` mode first; ``loss_fn`` must not sync with the host (no ``.item()``).

    Args:
        loss_fn: ``(params, batch) -> [B]`` per-sample losses.
        params: the parameters to differentiate by name; they are detached.
        batch: the samples, a dict whose tensors have the batch size as first dimension.
        chunk_size: how many samples each vmapped pass handles, or ``None`` for all.

    Returns:
        ``[B]`` gradient norms, without gradient.

    Raises:
        ValueError: for a batch without tensors, or ``chunk_size < 1``.

    Example:
        >>> inputs = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
        >>> def loss_fn(params, batch):  # grad of (x·w)^2 / 2: (x·w) x
        ...     return (batch["x"] @ params["weight"].T).squeeze(1) ** 2 / 2
        >>> per_sample_grad_norms(loss_fn, {"weight": torch.tensor([[1.0, 2.0]])}, {"x": inputs})
        tensor([ 1., 55.])
    """
    chunk_size = check_int(chunk_size, "chunk_size", low=1, optional=True)
    tensors = [v for v in batch.values() if isinstance(v, torch.Tensor) and v.ndim >= 1]
    if not tensors:
        raise ValueError(f"`batch` must hold tensors of samples, got keys {sorted(batch)}.")
    size = tensors[0].shape[0]
    split = {
        k: v
        for k, v in batch.items()
        if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == size
    }
    whole = {k: v for k, v in batch.items() if k not in split}
    params = {key: value.detach() for key, value in params.items()}

    def sample_loss(
        values: dict[str, torch.Tensor], sample: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        one = {**whole, **{k: v.unsqueeze(0) for k, v in sample.items()}}
        return loss_fn(values, one).reshape(())

    gradients = torch.func.vmap(
        torch.func.grad(sample_loss), in_dims=(None, 0), chunk_size=chunk_size
    )(params, split)
    squares = [g.pow(2).reshape(size, -1).sum(dim=1) for g in gradients.values()]
    return torch.stack(squares).sum(dim=0).sqrt().detach()


def forgetting_events(correct: torch.Tensor) -> torch.Tensor:
    """Forgetting events (Toneva et al. 2019): per sample, the correct → wrong transitions.

    ``correct[e, i]`` says whether sample ``i`` was classified correctly at its ``e``-th
    presentation (e.g. epoch). The count is taken over consecutive rows; a sample never
    correct in any row gets ``E`` (the number of rows), more than any learned sample can
    have: never learned counts as the most forgotten.

    Args:
        correct: ``[E, N]`` bool, one row per presentation, at least one row.

    Returns:
        ``[N]`` int64 counts.

    Raises:
        TypeError: for a tensor that is not bool.
        ValueError: for a tensor that is not 2-D with at least one row.

    Example:
        >>> correct = torch.tensor([[True, False, True], [False, False, True],
        ...                         [True, False, True], [False, False, False]])
        >>> forgetting_events(correct)
        tensor([2, 4, 1])
    """
    if not isinstance(correct, torch.Tensor) or correct.dtype != torch.bool:
        dtype = getattr(correct, "dtype", type(correct).__name__)
        raise TypeError(f"`correct` must be a bool tensor (use `.bool()`), got {dtype}.")
    if correct.ndim != 2 or correct.shape[0] < 1:
        raise ValueError(
            "`correct` must be [E, N] with at least one row (presentation), got shape "
            f"{tuple(correct.shape)}."
        )
    events = (correct[:-1] & ~correct[1:]).sum(dim=0)
    return events.masked_fill(~correct.any(dim=0), correct.shape[0])
