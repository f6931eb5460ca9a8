"""Schedules: pure ``step -> float`` functions for EMA decay, pacing and step sizes."""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

from lightning_plugins.functional._checks import check_int

__all__ = [
    "SCHEDULES",
    "constant_schedule",
    "cosine_schedule",
    "resolve_schedule",
    "warmup_cosine_schedule",
    "warmup_decay_schedule",
]


def constant_schedule(step: int, value: float) -> float:
    """The same ``value`` at every step.

    Args:
        step: the (0-based) step; only checked.
        value: the value.

    Raises:
        ValueError: for a negative ``step``.

    Example:
        >>> constant_schedule(0, 0.999), constant_schedule(1000, 0.999)
        (0.999, 0.999)
    """
    check_int(step, "step", low=0)
    return float(value)


def warmup_decay_schedule(
    step: int,
    decay: float = 0.9999,
    gamma: float = 1.0,
    power: float = 2 / 3,
    min_decay: float = 0.0,
) -> float:
    """EMA decay with timm's warmup: ``1 - (1 + step / gamma) ** -power``, clamped.

    The decay starts at 0 (the first update copies the model) and rises towards 1; it is
    clamped to ``[min_decay, decay]``. timm's ``ModelEmaV3`` defaults: ``gamma = 1`` and
    ``power = 2/3`` (about 0.999 at 31.6k steps, 0.9999 at 1M steps); ``power = 3/4``
    suits short runs (0.999 at 10k steps, 0.9999 at 215k steps).

    Args:
        step: the (0-based) step.
        decay: the largest decay.
        gamma: the warmup's step scale, positive.
        power: the warmup's exponent, positive.
        min_decay: the smallest decay.

    Raises:
        ValueError: for a negative ``step``, ``gamma`` or ``power`` not positive, or not
            ``0 <= min_decay <= decay <= 1``.

    Example:
        >>> warmup_decay_schedule(0)
        0.0
        >>> round(warmup_decay_schedule(999, decay=0.9999, power=3 / 4), 6)
        0.994377
        >>> warmup_decay_schedule(10**9, decay=0.999)
        0.999
    """
    check_int(step, "step", low=0)
    if not gamma > 0 or not power > 0:
        raise ValueError(f"`gamma` and `power` must be positive, got {gamma} and {power}.")
    if not 0.0 <= min_decay <= decay <= 1.0:
        raise ValueError(
            f"`min_decay` and `decay` must satisfy 0 <= min_decay <= decay <= 1, got "
            f"{min_decay} and {decay}."
        )
    value = 1.0 - (1.0 + step / gamma) ** -power
    return max(min(float(decay), value), float(min_decay))


def cosine_schedule(step: int, max_steps: int, start_value: float, end_value: float) -> float:
    """Cosine from ``start_value`` at step 0 to ``end_value`` at step ``max_steps - 1``.

    ``end - (end - start) * (cos(pi * step / (max_steps - 1)) + 1) / 2``, lightly's
    ``cosine_schedule``; steps from ``max_steps - 1`` on give ``end_value``. With
    ``start_value = 0.996`` and ``end_value = 1`` it is the teacher momentum of BYOL and
    DINO.

    Args:
        step: the (0-based) step.
        max_steps: the number of steps of the schedule, at least 1.
        start_value: the value at step 0.
        end_value: the value at the last step and after.

    Raises:
        ValueError: for a negative ``step`` or ``max_steps < 1``.

    Example:
        >>> [round(cosine_schedule(s, 5, 0.996, 1.0), 6) for s in range(6)]
        [0.996, 0.996586, 0.998, 0.999414, 1.0, 1.0]
    """
    check_int(step, "step", low=0)
    check_int(max_steps, "max_steps", low=1)
    if step >= max_steps - 1:
        return float(end_value)
    cosine = (math.cos(math.pi * step / (max_steps - 1)) + 1.0) / 2.0
    return float(end_value - (end_value - start_value) * cosine)


def warmup_cosine_schedule(
    step: int, warmup_steps: int, max_steps: int, peak_value: float, end_value: float = 0.0
) -> float:
    """Linear warmup to ``peak_value``, then cosine to ``end_value``: open_clip's ``cosine_lr``.

    During warmup (``step < warmup_steps``) the value is ``peak_value * (step + 1) /
    warmup_steps``; then ``end + (peak - end) * (1 + cos(pi * e / es)) / 2`` with
    ``e = step - warmup_steps`` and ``es = max_steps - warmup_steps``; from ``max_steps`` on
    it is ``end_value``. With ``end_value = 0`` this is open_clip's default learning rate
    schedule.

    Args:
        step: the (0-based) step.
        warmup_steps: the steps of linear warmup, at least 0.
        max_steps: the steps of the whole schedule (warmup included), at least 1.
        peak_value: the value reached at the end of warmup.
        end_value: the value at ``max_steps`` and after.

    Raises:
        ValueError: for a negative ``step`` or ``warmup_steps``, or ``max_steps < 1``.

    Example:
        >>> [round(warmup_cosine_schedule(s, 2, 6, 1.0), 3) for s in range(7)]
        [0.5, 1.0, 1.0, 0.854, 0.5, 0.146, 0.0]
    """
    check_int(step, "step", low=0)
    check_int(warmup_steps, "warmup_steps", low=0)
    check_int(max_steps, "max_steps", low=1)
    if step < warmup_steps:
        return float(peak_value) * (step + 1) / warmup_steps
    if step >= max_steps:
        return float(end_value)
    cosine = (1.0 + math.cos(math.pi * (step - warmup_steps) / (max_steps - warmup_steps))) / 2
    return float(end_value + (peak_value - end_value) * cosine)


SCHEDULES: dict[str, Callable[..., float]] = {
    "constant": constant_schedule,
    "cosine": cosine_schedule,
    "warmup": warmup_decay_schedule,
}
"""The schedules by name, as :func:`resolve_schedule` and configs accept them."""


def resolve_schedule(name: str, **kwargs: Any) -> Callable[[int], float]:
    """The schedule called ``name`` with its arguments bound: a ``step -> float`` function.

    Args:
        name: a key of :data:`SCHEDULES` (``"constant"``, ``"cosine"``, ``"warmup"``).
        **kwargs: the schedule's arguments other than ``step``.

    Raises:
        ValueError: for an unknown ``name``.
        TypeError: for arguments the schedule does not take, or missing ones.

    Example:
        >>> schedule = resolve_schedule("cosine", max_steps=3, start_value=0.5, end_value=1.0)
        >>> [schedule(step) for step in range(3)]
        [0.5, 0.75, 1.0]
    """
    if name not in SCHEDULES:
        raise ValueError(f"`schedule` must be one of {sorted(SCHEDULES)}, got {name!r}.")
    function = SCHEDULES[name]
    try:
        inspect.signature(function).bind(0, **kwargs)
    except TypeError as error:
        parameters = [p for p in inspect.signature(function).parameters if p != "step"]
        raise TypeError(
            f"The {name!r} schedule takes {parameters} (besides `step`), got {sorted(kwargs)}: "
            f"{error}."
        ) from None
    return functools.partial(function, **kwargs)
