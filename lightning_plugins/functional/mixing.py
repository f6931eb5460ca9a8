"""Online data mixing: the Skill-It and DGA mixture updates, and the check of mixture weights.

Pure formulas over ``k`` sources (skills, domains): :func:`skill_it_weights` (Chen et al.
2023), :func:`dga_weights` (Fan, Grangier & Ablin 2024) and :func:`check_mixture_weights`,
the check every mixture weight goes through (e.g. ``MixtureSampler.set_weights``). Both
updates are computed in float64 in log space with a max-subtraction, so large losses or
inner products never overflow to ``inf`` / ``nan``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lightning_plugins.functional._checks import _type_name, check_float, check_int

__all__ = ["check_mixture_weights", "dga_weights", "skill_it_weights"]


def check_mixture_weights(
    weights: Any, name: str = "weights", num_sources: int | None = None
) -> torch.Tensor:
    """Mixture ``weights`` checked and normalised to sum to 1, as float64 ``[num_sources]``.

    Only ratios matter: ``[2, 1, 1]`` is ``[0.5, 0.25, 0.25]``. A weight of 0 excludes a
    source.

    Args:
        weights: one non-negative finite number per source (a tensor, array or list), not
            all 0.
        name: the argument's name, for the messages.
        num_sources: the required length (``None``: any length of at least 1).

    Returns:
        float64 ``[num_sources]`` CPU tensor summing to 1 (a new tensor).

    Raises:
        TypeError: for anything but a 1-D sequence of real numbers.
        ValueError: for the wrong shape or length, NaN, infinite or negative entries, or
            all entries 0.

    Example:
        >>> check_mixture_weights([2, 1, 1], "weights", 3)
        tensor([0.5000, 0.2500, 0.2500], dtype=torch.float64)
        >>> check_mixture_weights([1.0, -1.0], "weights", 2)
        Traceback (most recent call last):
        ...
        ValueError: `weights` must be finite and non-negative, got -1.0 at index 1 (source 1) in [1.0, -1.0].
    """  # noqa: E501
    tensor = _real_tensor(weights, name)
    if tensor.ndim != 1:
        raise ValueError(
            f"`{name}` must be 1-D (one weight per source), got shape {tuple(tensor.shape)}."
        )
    if num_sources is not None and tensor.numel() != num_sources:
        raise ValueError(
            f"`{name}` must hold one weight per source ({num_sources}), got {tensor.numel()}: "
            f"{tensor.tolist()}."
        )
    if tensor.numel() == 0:
        raise ValueError(f"`{name}` must hold at least one weight, got {tensor.tolist()}.")
    bad = ~torch.isfinite(tensor) | (tensor < 0)
    if bool(bad.any()):
        index = int(torch.nonzero(bad)[0])
        raise ValueError(
            f"`{name}` must be finite and non-negative, got {tensor[index].item()} at index "
            f"{index} (source {index}) in {tensor.tolist()}."
        )
    total = tensor.sum()
    if not bool(total > 0):
        raise ValueError(
            f"`{name}` must not be all 0 (they are normalised to sum to 1), got {tensor.tolist()}."
        )
    if not bool(torch.isfinite(total)):  # e.g. [1e308, 1e308]
        tensor = tensor / tensor.max()
        total = tensor.sum()
    return tensor / total


def skill_it_weights(
    prior: Any,
    graph: Any,
    losses_window: Any,
    eta: float,
    target: Sequence[int] | None = None,
) -> torch.Tensor:
    """Skill-It's mixture: ``p ∝ prior ⊙ exp(eta · A · Σ_window L)``.

    ``Σ_window L`` sums the ``w`` rows of ``losses_window`` (the per-skill validation
    losses of the last ``w`` evaluations): a windowed sum, not a product with the previous
    ``p``. ``A[i, j]`` is how much training on skill ``i`` helps skill ``j``. In
    fine-tuning mode (``target``) only the target skills' columns count:
    ``A[:, target] @ Σ_window L[target]``. Computed in float64 as
    ``softmax(log prior + eta · A · ΣL)`` with a max-subtraction (stable for large
    losses); a skill with prior 0 gets 0.

    Args:
        prior: ``[k]`` non-negative prior over skills, not all 0 (only ratios matter).
        graph: ``[k, k]`` skills graph ``A``, finite and non-negative.
        losses_window: ``[w, k]`` finite losses, one row per evaluation (``w >= 1``).
        eta: finite step size (0 returns the normalised prior).
        target: the target skills' indices (distinct, in ``[0, k)``), or ``None`` for all.

    Returns:
        float64 ``[k]`` mixture weights summing to 1.

    Raises:
        TypeError: for non-numeric inputs, a non-integer ``target`` entry.
        ValueError: for wrong shapes, negative or non-finite entries, a non-finite
            ``eta``, an empty, repeated or out-of-range ``target``, or an update
            ``eta · A · ΣL`` that overflows float64.

    Example:
        >>> graph = torch.tensor([[1.0, 0.2], [0.5, 1.0]])  # skill 0 helps skill 1
        >>> losses = torch.tensor([[2.0, 1.0], [2.0, 1.0]])  # 2 evaluations: sum [4, 2]
        >>> skill_it_weights([0.5, 0.5], graph, losses, eta=0.5)  # ∝ exp(0.5 [4.4, 4])
        tensor([0.5498, 0.4502], dtype=torch.float64)
        >>> skill_it_weights([0.5, 0.5], graph, losses, eta=0.5, target=[1])  # ∝ exp([0.2, 1])
        tensor([0.3100, 0.6900], dtype=torch.float64)
    """
    prior = check_mixture_weights(prior, "prior")
    k = prior.numel()
    matrix = _real_tensor(graph, "graph")
    if tuple(matrix.shape) != (k, k):
        raise ValueError(
            f"`graph` must be a [k, k] = [{k}, {k}] skills graph (k from `prior`), got shape "
            f"{tuple(matrix.shape)}."
        )
    _check_entries(matrix, "graph", ~torch.isfinite(matrix) | (matrix < 0), "finite, >= 0")
    losses = _real_tensor(losses_window, "losses_window")
    if losses.ndim != 2 or losses.shape[1] != k or losses.shape[0] < 1:
        raise ValueError(
            f"`losses_window` must be [w, k] = [w, {k}] with w >= 1 (one row of per-skill "
            f"losses per evaluation), got shape {tuple(losses.shape)}."
        )
    _check_entries(losses, "losses_window", ~torch.isfinite(losses), "finite")
    eta = check_float(eta, "eta")
    summed = losses.sum(dim=0)
    if target is not None:
        columns = _check_target(target, k)
        matrix, summed = matrix[:, columns], summed[columns]
    update = eta * (matrix @ summed)
    if not bool(torch.isfinite(update).all()):
        raise ValueError(
            f"`eta` * `graph` @ sum(`losses_window`) overflows float64 (eta={eta}, max |loss| "
            f"{losses.abs().max().item():g}): normalise the losses (e.g. by the initial loss)."
        )
    return _log_softmax_weights(prior, update)


def dga_weights(
    alpha: Any,
    domain_grads: Any,
    target_grad: Any,
    eta: float,
    beta: float,
) -> torch.Tensor:
    """DGA's update: ``alpha_hat ∝ alpha ⊙ exp(eta <g_i, g_target>)``, then an EMA.

    The new weights are ``(1 - beta) alpha + beta alpha_hat``.

    ``g_i`` is the gradient of the loss on domain ``i``, ``g_target`` that on the target
    examples (flattened over all parameters); domains whose gradient aligns with the
    target's gain weight. ``alpha`` is normalised first, the inner products are taken in
    float64 and ``alpha_hat`` is computed as ``softmax(log alpha + eta <g_i, g_t>)`` with a
    max-subtraction (stable for large inner products).

    Args:
        alpha: ``[k]`` current mixture weights, non-negative, not all 0.
        domain_grads: ``[k, P]`` tensor, or a list of ``k`` tensors of ``P`` entries each
            (any shape, flattened), finite.
        target_grad: the target gradient, ``P`` entries (any shape, flattened), finite.
        eta: finite step size.
        beta: the EMA rate in ``[0, 1]`` (1: take ``alpha_hat``; 0: keep ``alpha``).

    Returns:
        float64 ``[k]`` mixture weights summing to 1.

    Raises:
        TypeError: for non-numeric inputs.
        ValueError: for mismatched sizes, non-finite gradients, a non-finite ``eta`` or
            ``beta`` outside ``[0, 1]``.

    Example:
        >>> grads = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> target = torch.tensor([1.0, 0.0])  # aligned with domain 0 only
        >>> dga_weights([0.5, 0.5], grads, target, eta=1.0, beta=1.0)  # ∝ [e, 1]
        tensor([0.7311, 0.2689], dtype=torch.float64)
        >>> dga_weights([0.5, 0.5], grads, target, eta=1.0, beta=0.5)
        tensor([0.6155, 0.3845], dtype=torch.float64)
    """
    alpha = check_mixture_weights(alpha, "alpha")
    k = alpha.numel()
    eta = check_float(eta, "eta")
    beta = check_float(beta, "beta", low=0, high=1)
    target = _real_tensor(target_grad, "target_grad").reshape(-1)
    if isinstance(domain_grads, torch.Tensor):
        grads = _real_tensor(domain_grads, "domain_grads")
        if grads.ndim < 1 or grads.shape[0] != k:
            raise ValueError(
                f"`domain_grads` must hold one gradient per domain ({k}, from `alpha`): a "
                f"[k, P] tensor, got shape {tuple(grads.shape)}."
            )
        grads = grads.reshape(k, -1)
    elif isinstance(domain_grads, list | tuple):
        if len(domain_grads) != k:
            raise ValueError(
                f"`domain_grads` must hold one gradient per domain ({k}, from `alpha`), got "
                f"{len(domain_grads)}."
            )
        flat = [
            _real_tensor(g, f"domain_grads[{i}]").reshape(-1) for i, g in enumerate(domain_grads)
        ]
        sizes = {g.numel() for g in flat}
        if len(sizes) > 1:
            raise ValueError(
                f"`domain_grads` must all have the same number of entries, got "
                f"{[g.numel() for g in flat]}."
            )
        grads = torch.stack(flat)
    else:
        raise TypeError(
            "`domain_grads` must be a [k, P] tensor or a list of k tensors, got "
            f"{_type_name(domain_grads)}."
        )
    if grads.shape[1] != target.numel():
        raise ValueError(
            f"`domain_grads` have {grads.shape[1]} entries each but `target_grad` has "
            f"{target.numel()}: both must be gradients of the same parameters."
        )
    _check_entries(grads, "domain_grads", ~torch.isfinite(grads), "finite")
    _check_entries(target, "target_grad", ~torch.isfinite(target), "finite")
    update = eta * (grads @ target)
    if not bool(torch.isfinite(update).all()):
        raise ValueError(
            f"`eta` * <g_i, g_target> overflows float64 (eta={eta}): scale the gradients down."
        )
    tilted = _log_softmax_weights(alpha, update)
    mixed = (1.0 - beta) * alpha + beta * tilted
    return mixed / mixed.sum()


# ----------------------------------------------------------------------------- helpers
def _log_softmax_weights(prior: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    """``prior ⊙ exp(update)``, normalised, through log space (``prior`` sums to 1)."""
    logits = torch.where(prior > 0, torch.log(prior) + update, -torch.inf)
    logits = logits - logits.max()
    weights = torch.exp(logits)
    return weights / weights.sum()


def _real_tensor(value: Any, name: str) -> torch.Tensor:
    """``value`` as a float64 CPU tensor, or ``TypeError`` naming ``name``."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
    elif isinstance(value, str | bytes | dict | set) or not hasattr(value, "__len__"):
        raise TypeError(
            f"`{name}` must be a tensor, array or list of numbers, got {value!r} "
            f"({_type_name(value)})."
        )
    else:
        try:
            tensor = torch.as_tensor(value)
            if tensor.is_floating_point():  # Python floats: read as float64, not float32
                tensor = torch.as_tensor(value, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(
                f"`{name}` must be a tensor, array or list of numbers, got {value!r} ({err})."
            ) from err
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise TypeError(f"`{name}` must hold real numbers, got dtype {tensor.dtype}.")
    return tensor.to(torch.float64)


def _check_entries(values: torch.Tensor, name: str, bad: torch.Tensor, allowed: str) -> None:
    if bool(bad.any()):
        where = tuple(int(i) for i in torch.nonzero(bad)[0])
        index = where[0] if len(where) == 1 else list(where)
        raise ValueError(
            f"`{name}` must be {allowed}, got {values[where].item()} at index {index} "
            f"({int(bad.sum())} bad entries)."
        )


def _check_target(target: Any, k: int) -> list[int]:
    if isinstance(target, str | bytes) or not isinstance(target, Sequence | torch.Tensor):
        raise TypeError(
            f"`target` must be a sequence of skill indices or None, got {target!r} "
            f"({_type_name(target)})."
        )
    columns = [check_int(t, f"target[{i}]", low=0, high=k - 1) for i, t in enumerate(target)]
    if not columns:
        raise ValueError("`target` must name at least one skill, got []; None means all skills.")
    if len(set(columns)) != len(columns):
        raise ValueError(f"`target` must not repeat a skill, got {columns}.")
    return columns
