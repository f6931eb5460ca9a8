"""Steering: what a steerable sampler draws from (subset, weights, pacing), and its checks."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

from lightning_plugins.functional._checks import _type_name, check_length

__all__ = ["Steering", "checked_pacing", "checked_subset", "checked_weights"]


@dataclass(frozen=True)
class Steering:
    """What a :class:`CurriculumSampler` draws from: all fields checked, CPU tensors or ``None``.

    ``subset`` is a bool mask ``[N]``, ``weights`` float64 ``[N]``, ``ranking`` int64 ``[N]``
    (a permutation, easiest first) and ``fractions`` float64 ``[steps]``.
    """

    subset: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    ranking: torch.Tensor | None = None
    fractions: torch.Tensor | None = None

    def allowed(self, num_samples: int) -> torch.Tensor:
        """Bool mask of the samples that may be drawn: in ``subset``, with a positive weight."""
        mask = torch.ones(num_samples, dtype=torch.bool) if self.subset is None else self.subset
        return mask if self.weights is None else mask & (self.weights > 0)

    def state_dict(self) -> dict[str, torch.Tensor | None]:
        """The four fields, tensors cloned."""
        return {
            f.name: None if getattr(self, f.name) is None else getattr(self, f.name).clone()
            for f in fields(self)
        }


def checked_subset(subset: Any, num_samples: int) -> torch.Tensor:
    """``subset`` (a bool mask or integer indices) as a bool mask ``[num_samples]``.

    Example:
        >>> checked_subset([0, 2], 4).tolist()
        [True, False, True, False]
    """
    return _subset_mask(subset, num_samples)


def checked_weights(weights: Any, num_samples: int) -> torch.Tensor:
    """Sampling ``weights`` as float64 ``[num_samples]``: finite and non-negative.

    Example:
        >>> checked_weights([1, 0, 2], 3).tolist()
        [1.0, 0.0, 2.0]
    """
    checked = _real_vector(weights, "weights", num_samples)
    bad = ~torch.isfinite(checked) | (checked < 0)
    _check_entries(checked, "weights", bad, "finite and non-negative")
    return checked


def checked_pacing(
    ranking: Any, fractions: Any, num_samples: int, num_steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A permutation ``ranking`` (int64) and per-step ``fractions`` in ``(0, 1]`` (float64).

    Example:
        >>> ranking, fractions = checked_pacing([2, 0, 1], [0.5, 1.0], 3, 2)
        >>> ranking.tolist(), fractions.tolist()
        ([2, 0, 1], [0.5, 1.0])
    """
    order = _ranking(ranking, num_samples)
    shares = _real_vector(fractions, "fractions", num_steps, "step of the epoch")
    _check_entries(shares, "fractions", ~((shares > 0) & (shares <= 1)), "in (0, 1]")
    return order, shares


# ------------------------------------------------------------------------- argument checks
def _as_vector(value: Any, name: str) -> torch.Tensor:
    """``value`` as a 1-D CPU tensor, or ``TypeError`` naming ``name``."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
    elif isinstance(value, str | bytes | dict | set) or not hasattr(value, "__len__"):
        raise TypeError(
            f"`{name}` must be a tensor, array or list, got {value!r} ({_type_name(value)})."
        )
    else:
        try:
            tensor = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(
                f"`{name}` must be a tensor, array or list of numbers, got {value!r} ({err})."
            ) from err
    if tensor.ndim != 1:
        raise ValueError(f"`{name}` must be 1-D, got shape {tuple(tensor.shape)}.")
    return tensor


def _subset_mask(subset: Any, num_samples: int) -> torch.Tensor:
    tensor = _as_vector(subset, "subset")
    if tensor.dtype == torch.bool:
        check_length(tensor, "subset", num_samples, "sample (a bool mask)")
        return tensor.clone()
    if tensor.is_floating_point() or tensor.is_complex():
        raise TypeError(
            f"`subset` must be a bool mask or integer indices, got dtype {tensor.dtype}."
        )
    outside = (tensor < 0) | (tensor >= num_samples)
    if bool(outside.any()):
        raise ValueError(
            f"`subset` indices must be in [0, {num_samples}), got {int(tensor[outside][0])} "
            f"({int(outside.sum())} outside)."
        )
    mask = torch.zeros(num_samples, dtype=torch.bool)
    mask[tensor.long()] = True
    return mask


def _real_vector(value: Any, name: str, length: int, what: str = "sample") -> torch.Tensor:
    tensor = _as_vector(value, name)
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise TypeError(f"`{name}` must hold real numbers, got dtype {tensor.dtype}.")
    check_length(tensor, name, length, what)
    return tensor.to(torch.float64)


def _check_entries(values: torch.Tensor, name: str, bad: torch.Tensor, allowed: str) -> None:
    if bool(bad.any()):
        index = int(torch.nonzero(bad)[0])
        raise ValueError(
            f"`{name}` must be {allowed}, got {values[index].item()} at index {index} "
            f"({int(bad.sum())} bad entries)."
        )


def _ranking(ranking: Any, num_samples: int) -> torch.Tensor:
    tensor = _as_vector(ranking, "ranking")
    if tensor.dtype == torch.bool or tensor.is_floating_point() or tensor.is_complex():
        raise TypeError(f"`ranking` must hold integer sample indices, got dtype {tensor.dtype}.")
    check_length(tensor, "ranking", num_samples, "sample")
    tensor = tensor.long()
    outside = (tensor < 0) | (tensor >= num_samples)
    if bool(outside.any()):
        raise ValueError(
            f"`ranking` must be a permutation of range({num_samples}), got index "
            f"{int(tensor[outside][0])}."
        )
    counts = torch.bincount(tensor, minlength=num_samples)
    if bool((counts != 1).any()):
        missing = int(torch.nonzero(counts == 0)[0])
        repeated = int(torch.nonzero(counts > 1)[0])
        raise ValueError(
            f"`ranking` must be a permutation of range({num_samples}): index {repeated} "
            f"appears {int(counts[repeated])} times and {missing} is missing."
        )
    return tensor.clone()
