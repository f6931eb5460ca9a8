"""Summaries of a continual-learning accuracy matrix: average accuracy, forgetting, transfer.

``accuracy_matrix[i, j]`` is the accuracy on task ``j`` after training task ``i`` (rows:
training steps, columns: evaluated tasks), a float ``[T, T]`` tensor with NaN where a cell
was not measured. Entries above the diagonal (a task evaluated before it was trained) are
only read by :func:`forward_transfer`. Each function checks that the cells it reads are
finite and names the first one that is not, so a missing evaluation is never averaged
silently.
"""

from __future__ import annotations

import torch

from lightning_plugins.functional._checks import check_int

__all__ = [
    "average_accuracy",
    "average_incremental_accuracy",
    "backward_transfer",
    "forgetting",
    "forward_transfer",
]


def _check_matrix(accuracy_matrix: torch.Tensor, min_tasks: int = 1, what: str = "") -> int:
    """Return ``T`` for a floating-point ``[T, T]`` tensor with ``T >= min_tasks``."""
    if not isinstance(accuracy_matrix, torch.Tensor):
        raise TypeError(
            "`accuracy_matrix` must be a [T, T] float tensor, got "
            f"{type(accuracy_matrix).__name__}."
        )
    if not accuracy_matrix.is_floating_point():
        raise TypeError(
            f"`accuracy_matrix` must be a floating-point tensor, got dtype {accuracy_matrix.dtype}."
        )
    shape = tuple(accuracy_matrix.shape)
    if accuracy_matrix.ndim != 2 or shape[0] != shape[1] or shape[0] == 0:
        raise ValueError(
            "`accuracy_matrix` must be a square [T, T] tensor with T >= 1 (rows: after "
            f"training task i, columns: task j), got shape {shape}."
        )
    if shape[0] < min_tasks:
        raise ValueError(
            f"{what} needs at least {min_tasks} tasks (rows of `accuracy_matrix`), got "
            f"shape {shape}."
        )
    return shape[0]


def _check_cells(
    values: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, name: str = "accuracy_matrix"
) -> torch.Tensor:
    """Return ``values[rows, cols]`` after checking each is finite (NaN: not measured)."""
    cells = values[rows, cols] if name == "accuracy_matrix" else values[cols]
    bad = ~torch.isfinite(cells)
    if bool(bad.any()):
        k = int(bad.nonzero()[0, 0])
        where = (
            f"[{int(rows[k])}, {int(cols[k])}]"
            if name == "accuracy_matrix"
            else f"[{int(cols[k])}]"
        )
        value = float(cells[k])
        reason = "not measured (NaN)" if value != value else "not finite"
        raise ValueError(
            f"`{name}`{where} is {reason}, got {value}; this summary reads it, so every "
            "cell it reads must hold a measured accuracy."
        )
    return cells


def average_accuracy(accuracy_matrix: torch.Tensor, step: int | None = None) -> torch.Tensor:
    """Mean accuracy over the tasks trained so far, after training task ``step``.

    ``mean_{j <= t} R[t, j]`` with ``t = step`` (default: the last row, ``T - 1``).

    Args:
        accuracy_matrix: ``[T, T]`` float, ``R[i, j]`` the accuracy on task ``j`` after
            training task ``i``; NaN where not measured.
        step: the row ``t`` in ``[0, T)``; ``None`` for the last.

    Returns:
        0-d tensor.

    Raises:
        TypeError: for no floating-point tensor or a ``step`` that is no integer.
        ValueError: for a matrix that is not square, a ``step`` outside ``[0, T)`` or a
            cell it reads that is NaN or infinite.

    Example:
        >>> R = torch.tensor([[0.9, float("nan")], [0.6, 0.8]])
        >>> average_accuracy(R)
        tensor(0.7000)
        >>> average_accuracy(R, step=0)
        tensor(0.9000)
    """
    num_tasks = _check_matrix(accuracy_matrix)
    t = num_tasks - 1 if step is None else check_int(step, "step", low=0, high=num_tasks - 1)
    cols = torch.arange(t + 1)
    return _check_cells(accuracy_matrix, torch.full_like(cols, t), cols).mean()


def average_incremental_accuracy(accuracy_matrix: torch.Tensor) -> torch.Tensor:
    """The mean over every step ``t`` of :func:`average_accuracy` at ``t`` (Rebuffi et al.).

    Example:
        >>> R = torch.tensor([[0.9, float("nan")], [0.6, 0.8]])
        >>> average_incremental_accuracy(R)  # (0.9 + 0.7) / 2
        tensor(0.8000)
    """
    num_tasks = _check_matrix(accuracy_matrix)
    return torch.stack([average_accuracy(accuracy_matrix, t) for t in range(num_tasks)]).mean()


def forgetting(accuracy_matrix: torch.Tensor) -> torch.Tensor:
    """Mean forgetting of the tasks before the last (Chaudhry et al. 2018).

    ``f_j = max_{j <= i < T-1} R[i, j] - R[T-1, j]``: the best accuracy on task ``j`` at an
    earlier step since it was trained, minus the final one, averaged over ``j < T - 1``.
    Cells above the diagonal (task ``j`` evaluated before it was trained) are not part of
    the maximum.

    Raises:
        ValueError: for fewer than 2 tasks, or a cell it reads that is NaN or infinite.

    Example:
        >>> R = torch.tensor([[0.9, float("nan"), float("nan")],
        ...                   [0.7, 0.8, float("nan")],
        ...                   [0.5, 0.6, 0.9]])
        >>> forgetting(R)  # ((0.9 - 0.5) + (0.8 - 0.6)) / 2
        tensor(0.3000)
    """
    num_tasks = _check_matrix(accuracy_matrix, 2, "forgetting")
    last = num_tasks - 1
    per_task = []
    for j in range(last):
        rows = torch.arange(j, last)
        earlier = _check_cells(accuracy_matrix, rows, torch.full_like(rows, j)).max()
        final = _check_cells(accuracy_matrix, torch.tensor([last]), torch.tensor([j]))[0]
        per_task.append(earlier - final)
    return torch.stack(per_task).mean()


def backward_transfer(accuracy_matrix: torch.Tensor) -> torch.Tensor:
    """``mean_{j < T-1} (R[T-1, j] - R[j, j])`` (Lopez-Paz & Ranzato 2017); negative: forgetting.

    Raises:
        ValueError: for fewer than 2 tasks, or a cell it reads that is NaN or infinite.

    Example:
        >>> R = torch.tensor([[0.9, float("nan"), float("nan")],
        ...                   [0.7, 0.8, float("nan")],
        ...                   [0.5, 0.6, 0.9]])
        >>> backward_transfer(R)  # ((0.5 - 0.9) + (0.6 - 0.8)) / 2
        tensor(-0.3000)
    """
    num_tasks = _check_matrix(accuracy_matrix, 2, "backward_transfer")
    tasks = torch.arange(num_tasks - 1)
    final = _check_cells(accuracy_matrix, torch.full_like(tasks, num_tasks - 1), tasks)
    just_trained = _check_cells(accuracy_matrix, tasks, tasks)
    return (final - just_trained).mean()


def forward_transfer(accuracy_matrix: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
    """``mean_{j >= 1} (R[j-1, j] - baseline[j])`` (Lopez-Paz & Ranzato 2017).

    ``R[j-1, j]`` is the accuracy on task ``j`` just before training it; ``baseline[j]``
    that of the model before any training (a random initialisation, or the pretrained
    model a stream starts from). ``baseline[0]`` is not read.

    Args:
        accuracy_matrix: ``[T, T]`` float, NaN where not measured.
        baseline: ``[T]`` float.

    Raises:
        TypeError: for a ``baseline`` that is no floating-point tensor.
        ValueError: for fewer than 2 tasks, a ``baseline`` of another shape than ``[T]``,
            or a cell either reads that is NaN or infinite.

    Example:
        >>> R = torch.tensor([[0.9, 0.3, 0.2],
        ...                   [0.7, 0.8, 0.4],
        ...                   [0.5, 0.6, 0.9]])
        >>> forward_transfer(R, baseline=torch.tensor([0.1, 0.2, 0.2]))  # (0.1 + 0.2) / 2
        tensor(0.1500)
    """
    num_tasks = _check_matrix(accuracy_matrix, 2, "forward_transfer")
    if not isinstance(baseline, torch.Tensor) or not baseline.is_floating_point():
        got = baseline.dtype if isinstance(baseline, torch.Tensor) else type(baseline).__name__
        raise TypeError(
            f"`baseline` must be a [T] floating-point tensor (the accuracy of the model "
            f"before any training, per task), got {got}."
        )
    if tuple(baseline.shape) != (num_tasks,):
        raise ValueError(
            f"`baseline` must have shape ({num_tasks},), one accuracy per task of "
            f"`accuracy_matrix`, got {tuple(baseline.shape)}."
        )
    tasks = torch.arange(1, num_tasks)
    before = _check_cells(accuracy_matrix, tasks - 1, tasks)
    return (before - _check_cells(baseline, tasks, tasks, "baseline")).mean()
