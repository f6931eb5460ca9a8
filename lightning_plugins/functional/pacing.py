"""Curriculum pacing: pure ``step -> float`` functions giving the share of the data in use.

A pacing function maps the training step to a value in ``(0, 1]``: the fraction of the
samples, easiest first, that a curriculum trains on (Platanios et al. 2019's *competence*).
Each starts at ``start`` at step 0 and reaches 1 at ``total_steps``, staying there.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from lightning_plugins.functional._checks import check_float, check_int

__all__ = [
    "PACINGS",
    "check_pacing_value",
    "geometric_pacing",
    "linear_pacing",
    "resolve_pacing",
    "root_pacing",
    "step_pacing",
]


def _check_pacing_arguments(step: int, total_steps: int, start: float) -> tuple[int, int, float]:
    step = check_int(step, "step", low=0)
    total_steps = check_int(total_steps, "total_steps", low=1)
    start = check_float(start, "start", low=0, high=1, low_open=True)
    return step, total_steps, start


def linear_pacing(step: int, total_steps: int, start: float = 0.1) -> float:
    """Linear pacing: ``min(1, start + (1 - start) * step / total_steps)``.

    Args:
        step: the (0-based) step.
        total_steps: the step from which the whole data is in use, at least 1.
        start: the value at step 0, in ``(0, 1]``.

    Raises:
        ValueError: for a negative ``step``, ``total_steps < 1`` or ``start`` outside
            ``(0, 1]``.

    Example:
        >>> [round(linear_pacing(s, 4, start=0.2), 3) for s in range(6)]
        [0.2, 0.4, 0.6, 0.8, 1.0, 1.0]
    """
    step, total_steps, start = _check_pacing_arguments(step, total_steps, start)
    if step >= total_steps:
        return 1.0
    return min(1.0, start + (1.0 - start) * step / total_steps)


def root_pacing(step: int, total_steps: int, start: float = 0.1, power: float = 2.0) -> float:
    """Root pacing: ``min(1, (step * (1 - start**p) / total_steps + start**p) ** (1/p))``.

    With ``power = 2`` it is the competence of Platanios et al. (2019),
    ``c(t) = min(1, sqrt(t (1 - c0²) / T + c0²))``: fast growth early, when the few
    easy samples are learned quickly, slower later. ``power = 1`` is :func:`linear_pacing`.

    Args:
        step: the (0-based) step.
        total_steps: the step from which the whole data is in use, at least 1.
        start: the value at step 0, in ``(0, 1]``.
        power: the root ``p``, positive.

    Raises:
        ValueError: for a negative ``step``, ``total_steps < 1``, ``start`` outside
            ``(0, 1]`` or ``power`` not positive.

    Example:
        >>> [round(root_pacing(s, 4, start=0.2), 3) for s in range(6)]
        [0.2, 0.529, 0.721, 0.872, 1.0, 1.0]
    """
    step, total_steps, start = _check_pacing_arguments(step, total_steps, start)
    power = check_float(power, "power", low=0, low_open=True)
    if step >= total_steps:
        return 1.0
    base = start**power
    return min(1.0, (step * (1.0 - base) / total_steps + base) ** (1.0 / power))


def geometric_pacing(step: int, total_steps: int, start: float = 0.1) -> float:
    """Geometric pacing: ``min(1, start * (1 / start) ** (step / total_steps))``.

    The value grows by the same factor every step: slow early, fast late (computed as
    ``start ** (1 - step / total_steps)``, the same value without overflow for tiny
    ``start``).

    Args:
        step: the (0-based) step.
        total_steps: the step from which the whole data is in use, at least 1.
        start: the value at step 0, in ``(0, 1]``.

    Raises:
        ValueError: for a negative ``step``, ``total_steps < 1`` or ``start`` outside
            ``(0, 1]``.

    Example:
        >>> [round(geometric_pacing(s, 4, start=0.0625), 3) for s in range(6)]
        [0.062, 0.125, 0.25, 0.5, 1.0, 1.0]
    """
    step, total_steps, start = _check_pacing_arguments(step, total_steps, start)
    if step >= total_steps:
        return 1.0
    return min(1.0, start ** (1.0 - step / total_steps))


def step_pacing(step: int, total_steps: int, start: float = 0.1, num_stages: int = 5) -> float:
    """Baby-steps pacing: ``start`` raised in ``num_stages`` equal jumps to 1 at ``total_steps``.

    ``min(1, start + (1 - start) * floor(step * num_stages / total_steps) / num_stages)``.

    Args:
        step: the (0-based) step.
        total_steps: the step from which the whole data is in use, at least 1.
        start: the value at step 0, in ``(0, 1]``.
        num_stages: the number of jumps, at least 1.

    Raises:
        ValueError: for a negative ``step``, ``total_steps < 1``, ``start`` outside
            ``(0, 1]`` or ``num_stages < 1``.

    Example:
        >>> [round(step_pacing(s, 6, start=0.4, num_stages=3), 3) for s in range(8)]
        [0.4, 0.4, 0.6, 0.6, 0.8, 0.8, 1.0, 1.0]
    """
    step, total_steps, start = _check_pacing_arguments(step, total_steps, start)
    num_stages = check_int(num_stages, "num_stages", low=1)
    if step >= total_steps:
        return 1.0
    stage = (step * num_stages) // total_steps  # exact integer floor
    return min(1.0, start + (1.0 - start) * stage / num_stages)


PACINGS: dict[str, Callable[..., float]] = {
    "geometric": geometric_pacing,
    "linear": linear_pacing,
    "root": root_pacing,
    "step": step_pacing,
}
"""The pacing functions by name, as :func:`resolve_pacing` and configs accept them."""


def check_pacing_value(value: Any, name: str = "pacing") -> float:
    """Return ``value`` as a ``float`` if it is a finite number in ``(0, 1]``.

    A pacing value is the share of the data in use: 0 would train on nothing.

    Args:
        value: the value a pacing function returned.
        name: how the error message names it.

    Raises:
        TypeError: for a value that is not a number.
        ValueError: for a value that is not finite or outside ``(0, 1]``.

    Example:
        >>> check_pacing_value(0.25)
        0.25
        >>> check_pacing_value(1.5, "pacing(3)")
        Traceback (most recent call last):
        ...
        ValueError: `pacing(3)` must be a finite number in (0, 1], got 1.5.
    """
    return check_float(value, name, low=0, high=1, low_open=True)


def _checked_pacing(step: int, pacing: Callable[[int], float]) -> float:
    return check_pacing_value(pacing(step), f"pacing({step})")


def resolve_pacing(
    pacing: str | Callable[[int], float], total_steps: int, start: float = 0.1
) -> Callable[[int], float]:
    """The pacing ``step -> float`` function that ``pacing`` names, or ``pacing`` checked.

    A name of :data:`PACINGS` gets ``total_steps`` and ``start`` bound (other arguments
    keep their defaults: bind them yourself with :func:`functools.partial` for, say,
    ``root_pacing(power=3)``); its arguments are checked here. A user callable is called
    with the step alone and each value it returns is checked by
    :func:`check_pacing_value` (``ValueError`` at call time, naming ``pacing(step)``).

    Args:
        pacing: ``"linear"``, ``"root"``, ``"geometric"``, ``"step"`` or a callable
            ``step -> float`` returning values in ``(0, 1]``.
        total_steps: the step from which the named pacing uses the whole data, at least 1.
        start: the named pacing's value at step 0, in ``(0, 1]``.

    Raises:
        TypeError: for ``pacing`` neither a string nor callable.
        ValueError: for an unknown name (the known ones are listed), ``total_steps < 1``
            or ``start`` outside ``(0, 1]``.

    Example:
        >>> competence = resolve_pacing("root", total_steps=4, start=0.2)
        >>> [round(competence(s), 3) for s in range(5)]
        [0.2, 0.529, 0.721, 0.872, 1.0]
        >>> halves = resolve_pacing(lambda step: 0.5 if step < 10 else 1.0, total_steps=10)
        >>> halves(3), halves(12)
        (0.5, 1.0)
        >>> resolve_pacing(lambda step: 0.0, total_steps=10)(3)
        Traceback (most recent call last):
        ...
        ValueError: `pacing(3)` must be a finite number in (0, 1], got 0.0.
    """
    total_steps = check_int(total_steps, "total_steps", low=1)
    start = check_float(start, "start", low=0, high=1, low_open=True)
    if isinstance(pacing, str):
        if pacing not in PACINGS:
            raise ValueError(
                f"`pacing` must be one of {sorted(PACINGS)} or a callable step -> float, "
                f"got {pacing!r}."
            )
        return functools.partial(PACINGS[pacing], total_steps=total_steps, start=start)
    if not callable(pacing):
        raise TypeError(
            f"`pacing` must be a name of {sorted(PACINGS)} or a callable step -> float, got "
            f"{pacing!r} ({type(pacing).__name__})."
        )
    return functools.partial(_checked_pacing, pacing=pacing)
