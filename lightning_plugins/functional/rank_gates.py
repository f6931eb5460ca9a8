"""Rank gates of CoDyRA: the proximal step of an L1 penalty on the gates, and its strength."""

from __future__ import annotations

import torch

from lightning_plugins.functional._checks import check_float, check_int

__all__ = ["proximal_strength", "soft_threshold_"]


@torch.no_grad()
def soft_threshold_(gates: torch.Tensor, threshold: float) -> torch.Tensor:
    """Soft-threshold ``gates`` in place: ``w <- sign(w) * max(|w| - threshold, 0)``.

    This is the proximal operator of ``threshold * ||w||_1``: the minimiser over ``v`` of
    ``0.5 * (v - w) ** 2 + threshold * |v|``. After a gradient step of size ``lr`` on the loss,
    soft-thresholding by ``lr * strength`` is the proximal-gradient step on
    ``loss + strength * ||w||_1`` (CoDyRA's update of the rank gates). Gates with
    ``|w| <= threshold`` become exactly zero. Runs without autograd.

    Args:
        gates: a floating-point tensor, changed in place.
        threshold: the shrinkage, non-negative; 0 leaves ``gates`` unchanged.

    Returns:
        ``gates`` itself.

    Raises:
        TypeError: for a tensor that is not floating-point.
        ValueError: for a negative or non-finite ``threshold``.

    Example:
        >>> soft_threshold_(torch.tensor([1.0, -0.3, 0.1, -2.0]), 0.25)
        tensor([ 0.7500, -0.0500,  0.0000, -1.7500])
    """
    if not isinstance(gates, torch.Tensor) or not gates.is_floating_point():
        raise TypeError(
            "`gates` must be a floating-point tensor, got "
            f"{gates.dtype if isinstance(gates, torch.Tensor) else type(gates).__name__}."
        )
    threshold = check_float(threshold, "threshold", low=0.0)
    if threshold == 0.0:
        return gates
    shrunk = gates.abs().sub_(threshold).clamp_(min=0.0)
    return gates.copy_(shrunk.mul_(gates.sign()))


def proximal_strength(
    step: int, total_steps: int, start_fraction: float = 0.5, kappa: float = 1e-4
) -> float:
    """The L1 strength on the rank gates at ``step`` of a task: 0, then a linear ramp to ``kappa``.

    CoDyRA applies the proximal step only in the later part of each task, with its strength
    ramped up. With ``start = floor(start_fraction * total_steps)`` the strength is 0 for
    ``step < start`` and ``kappa * (step - start + 1) / (total_steps - start)`` from there
    on: positive from the first step of the ramp, exactly ``kappa`` at the last step
    ``total_steps - 1``, and held at ``kappa`` beyond it (a task that runs longer than
    planned). The ramp is linear (our choice: the paper ramps the strength up without a
    closed form). The soft-threshold after an optimizer step of learning rate ``lr`` is
    ``lr * proximal_strength(...)``.

    Args:
        step: the 0-based optimizer step within the task.
        total_steps: the task's number of optimizer steps, positive.
        start_fraction: the fraction of the task before the ramp starts, in ``[0, 1)``.
        kappa: the final strength, non-negative.

    Returns:
        The strength, in ``[0, kappa]``.

    Raises:
        ValueError: for a negative ``step``, ``total_steps < 1``, ``start_fraction`` outside
            ``[0, 1)`` or a negative ``kappa``.

    Example:
        >>> [proximal_strength(s, total_steps=8, start_fraction=0.5, kappa=1.0) for s in range(9)]
        [0.0, 0.0, 0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    """
    step = check_int(step, "step", low=0)
    total_steps = check_int(total_steps, "total_steps", low=1)
    start_fraction = check_float(
        start_fraction, "start_fraction", low=0.0, high=1.0, high_open=True
    )
    kappa = check_float(kappa, "kappa", low=0.0)
    start = min(int(start_fraction * total_steps), total_steps - 1)
    if step < start:
        return 0.0
    return kappa * min(1.0, (step - start + 1) / (total_steps - start))
