"""Argument checks shared by the functional losses (private)."""

from __future__ import annotations

import torch

_REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> None:
    """Raise ``ValueError`` unless ``reduction`` is one of ``mean``, ``sum``, ``none``."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {_REDUCTIONS}, got {reduction!r}.")


def check_feature_pair(image_features: torch.Tensor, text_features: torch.Tensor) -> None:
    """Raise ``ValueError`` unless both features are 2-D with equal shape."""
    if image_features.ndim != 2 or text_features.ndim != 2:
        raise ValueError(
            "`image_features` and `text_features` must be 2-D [batch, dim], got shapes "
            f"{tuple(image_features.shape)} and {tuple(text_features.shape)}."
        )
    if image_features.shape != text_features.shape:
        raise ValueError(
            "`image_features` and `text_features` must have equal shapes (one caption per "
            f"image, one embedding size), got {tuple(image_features.shape)} and "
            f"{tuple(text_features.shape)}."
        )


def check_global_features(
    image_features: torch.Tensor,
    label_offset: int,
    *,
    positives: bool = True,
    **global_features: torch.Tensor,
) -> None:
    """Raise ``ValueError`` unless the global features fit the local ``[B, D]`` rows.

    Every global tensor must be ``[N, D]`` with the local ``D`` and the same ``N``, and
    (when the global rows hold the local rows' ``positives``) ``label_offset`` must place
    the ``B`` local rows inside the ``N`` global ones.
    """
    batch, dim = image_features.shape
    num_rows = batch
    for position, (name, rows) in enumerate(global_features.items()):
        if rows.ndim != 2 or rows.shape[1] != dim:
            raise ValueError(
                f"`{name}` must be [N, {dim}] (the local embedding size), got shape "
                f"{tuple(rows.shape)}."
            )
        if position > 0 and rows.shape[0] != num_rows:
            names = " and ".join(f"`{key}`" for key in global_features)
            raise ValueError(
                f"{names} must hold the same number of rows (pass both or neither), got "
                f"{[tuple(t.shape) for t in global_features.values()]}."
            )
        num_rows = rows.shape[0]
    if positives and not 0 <= label_offset <= num_rows - batch:
        raise ValueError(
            f"`label_offset` must place the {batch} local rows inside the {num_rows} global "
            f"rows, i.e. lie in [0, {num_rows - batch}], got {label_offset}."
        )


def check_unit_norm(tolerance: float = 2e-2, **features: torch.Tensor) -> None:
    """Raise ``ValueError`` naming the first feature tensor whose rows are not unit length.

    The tolerance admits half-precision round-off of normalised features.
    """
    for name, tensor in features.items():
        norms = tensor.detach().float().norm(dim=-1)
        norms = norms[torch.isfinite(norms)]  # non-finite rows get their own error later
        worst = float((norms - 1).abs().max()) if norms.numel() else 0.0
        if worst > tolerance:
            raise ValueError(
                f"`{name}` must be L2-normalised (rows of norm 1), but a row's norm differs "
                f"from 1 by {worst:.3g}. Normalise with torch.nn.functional.normalize(x, "
                "dim=-1), or pass `normalized=False` to the loss to skip this check."
            )


def explain_non_finite(what: str, **tensors: torch.Tensor | float | None) -> None:
    """Raise ``ValueError`` for a non-finite ``what``, naming the input that caused it.

    Called once a result turned out non-finite, so the common finite path costs nothing
    beyond one check of the result.
    """
    for name, tensor in tensors.items():
        if tensor is not None and not bool(torch.isfinite(torch.as_tensor(tensor)).all()):
            raise ValueError(
                f"`{name}` holds non-finite values (NaN or inf), so the {what} is undefined. "
                "Check the towers' outputs and the learning rate."
            )
    raise ValueError(f"The {what} is non-finite although its inputs are finite.")


def apply_reduction(per_sample: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce a ``[B]`` per-sample loss by ``mean``, ``sum`` or ``none``."""
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample
