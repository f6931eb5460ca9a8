"""The continual-learning accuracy matrix and its summaries, as a torchmetrics ``Metric``."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable

import torch
from torchmetrics import Metric

from lightning_plugins.functional import (
    average_accuracy,
    average_incremental_accuracy,
    backward_transfer,
    forgetting,
    forward_transfer,
    topk_correct,
)
from lightning_plugins.functional._checks import check_int

__all__ = ["ContinualAccuracy"]

BASELINE = -1
"""The ``training_task`` of an evaluation of the model before any training."""

_SUMMARIES = (
    "average_accuracy",
    "average_incremental_accuracy",
    "forgetting",
    "backward_transfer",
    "forward_transfer",
)


class ContinualAccuracy(Metric):
    """Accuracy on each task after training each task: the matrix ``R[i, j]``.

    Each ``update`` adds correct and total counts to the row of the current training task
    ``i`` (set with :meth:`set_training_task`, or passed as ``training_task``), in the
    column of each sample's task ``j``. ``training_task=-1`` records the model before any
    training (the baseline of forward transfer). Counts are sum-reduced, so under DDP each
    process updates with its own samples and ``compute`` gives the matrix of all of them.
    Counts of a row accumulate until :meth:`reset_row` (say, before validating the same
    task again) or ``reset``. All state, the current training task included, is tensors
    in ``state_dict``, so a run resumes with it.

    ``compute`` returns ``accuracy_matrix`` (``[T, T]``, NaN where nothing was counted),
    ``baseline_accuracy`` (``[T]``) and the summaries of
    :mod:`~lightning_plugins.functional.continual_metrics` over the rows up to the last
    one counted: ``average_accuracy``, ``average_incremental_accuracy``, ``forgetting``,
    ``backward_transfer``, ``forward_transfer``; a summary whose cells were not all
    measured (forgetting after one task, forward transfer without the cells above the
    diagonal or a baseline) is NaN. A sample with non-finite logits makes its cell NaN
    (``compute`` warns), never a hit.

    Args:
        num_tasks: number of tasks ``T`` of the stream.

    Raises:
        TypeError: for a ``num_tasks`` that is no integer; in ``update`` for predictions
            or targets that are no integer tensors where class ids are expected.
        ValueError: for ``num_tasks`` below 1; in ``update`` for shapes other than
            ``[B]`` / ``[B, C]`` and ``[B]``, a ``task`` or ``training_task`` outside
            ``[0, num_tasks)`` (``-1`` allowed for ``training_task``).

    Example:
        >>> metric = ContinualAccuracy(num_tasks=2)
        >>> metric.set_training_task(0)
        >>> metric.update(torch.tensor([0, 1, 1, 3]), torch.tensor([0, 1, 0, 2]),
        ...               task=torch.tensor([0, 0, 0, 1]))
        >>> metric.set_training_task(1)
        >>> metric.update(torch.tensor([1, 1, 2, 3]), torch.tensor([0, 1, 2, 3]),
        ...               task=torch.tensor([0, 0, 1, 1]))
        >>> result = metric.compute()
        >>> result["accuracy_matrix"]
        tensor([[0.6667, 0.0000],
                [0.5000, 1.0000]], dtype=torch.float64)
        >>> round(result["average_accuracy"].item(), 4), round(result["forgetting"].item(), 4)
        (0.75, 0.1667)
    """

    full_state_update = False

    def __init__(self, num_tasks: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_tasks = check_int(num_tasks, "num_tasks", low=1)
        square, row = (self.num_tasks, self.num_tasks), (self.num_tasks,)
        # float64 counts: exact to 2**53 and NaN-propagating for a non-finite sample
        for name, shape in (
            ("correct", square),
            ("total", square),
            ("baseline_correct", row),
            ("baseline_total", row),
        ):
            self.add_state(
                name,
                default=torch.zeros(shape, dtype=torch.float64),
                dist_reduce_fx="sum",
                persistent=True,
            )
        # not a metric state: the same on every rank, neither summed nor reset
        self.register_buffer("training_task", torch.tensor(0, dtype=torch.long))

    def _check_training_task(self, training_task: int) -> int:
        return check_int(training_task, "training_task", low=BASELINE, high=self.num_tasks - 1)

    def set_training_task(self, training_task: int) -> None:
        """Set the row that later updates count into: the task trained last, or -1."""
        self.training_task.fill_(self._check_training_task(training_task))

    def reset_row(self, training_task: int) -> None:
        """Zero the counts of one row (``-1``: the baseline), to evaluate it afresh."""
        training_task = self._check_training_task(training_task)
        if training_task == BASELINE:
            self.baseline_correct.zero_()
            self.baseline_total.zero_()
        else:
            self.correct[training_task].zero_()
            self.total[training_task].zero_()
        self._computed = None

    def update(
        self,
        preds: torch.Tensor,
        target: torch.Tensor,
        task: int | torch.Tensor,
        training_task: int | None = None,
    ) -> None:
        """Count ``[B]`` predicted class ids or ``[B, C]`` logits against ``[B]`` targets.

        Args:
            preds: ``[B]`` integer class ids, or ``[B, C]`` scores (top-1 counted).
            target: ``[B]`` integer class ids.
            task: the evaluated task of every sample: an ``int`` or an integer ``[B]``
                tensor, in ``[0, num_tasks)``.
            training_task: the row; ``None`` for the one :meth:`set_training_task` set.
        """
        if not isinstance(target, torch.Tensor) or target.ndim != 1:
            shape = tuple(target.shape) if isinstance(target, torch.Tensor) else target
            raise ValueError(f"`target` must be a [B] tensor of class ids, got {shape!r}.")
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"`target` must hold integer class ids, got dtype {target.dtype}.")
        if not isinstance(preds, torch.Tensor) or preds.ndim not in (1, 2):
            shape = tuple(preds.shape) if isinstance(preds, torch.Tensor) else preds
            raise ValueError(
                f"`preds` must be [B] class ids or [B, C] logits, got {shape!r} (type "
                f"{type(preds).__name__})."
            )
        if preds.shape[0] != target.shape[0]:
            raise ValueError(
                f"`preds` and `target` must hold the same number of samples, got "
                f"{tuple(preds.shape)} and {tuple(target.shape)}."
            )
        if preds.ndim == 2:
            hits = topk_correct(preds, target, (1,))[:, 0]
        elif preds.is_floating_point() or preds.is_complex() or preds.dtype == torch.bool:
            raise TypeError(
                f"`preds` of shape [B] must hold integer class ids, got dtype {preds.dtype} "
                "(pass logits as [B, C])."
            )
        else:
            hits = (preds == target).to(torch.float64)
        task = self._task_tensor(task, target)
        row = int(self.training_task) if training_task is None else training_task
        row = self._check_training_task(row)
        hits = hits.to(device=self.correct.device, dtype=torch.float64)
        task = task.to(self.correct.device)
        ones = torch.ones_like(hits)
        if row == BASELINE:
            self.baseline_correct.index_put_((task,), hits, accumulate=True)
            self.baseline_total.index_put_((task,), ones, accumulate=True)
        else:
            rows = torch.full_like(task, row)
            self.correct.index_put_((rows, task), hits, accumulate=True)
            self.total.index_put_((rows, task), ones, accumulate=True)

    def _task_tensor(self, task: int | torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if isinstance(task, torch.Tensor) and task.ndim == 1:
            if task.is_floating_point() or task.is_complex() or task.dtype == torch.bool:
                raise TypeError(f"`task` must hold integer task ids, got dtype {task.dtype}.")
            if task.shape != target.shape:
                raise ValueError(
                    f"`task` must be an int or have the shape of `target` "
                    f"{tuple(target.shape)}, got {tuple(task.shape)}."
                )
            outside = (task < 0) | (task >= self.num_tasks)
            if bool(outside.any()):
                raise ValueError(
                    f"`task` must hold task ids in [0, {self.num_tasks}) "
                    f"(num_tasks={self.num_tasks}), got {int(task[outside][0])}."
                )
            return task.long()
        task = check_int(task, "task", low=0, high=self.num_tasks - 1)
        return torch.full(target.shape, task, dtype=torch.long)

    def compute(self) -> dict[str, torch.Tensor]:
        """The matrix, the baseline row and the summaries (see the class docstring)."""
        matrix = self.correct / self.total  # 0 / 0: NaN, not measured
        baseline = self.baseline_correct / self.baseline_total
        non_finite = (matrix.isnan() & (self.total > 0)).sum() + (
            baseline.isnan() & (self.baseline_total > 0)
        ).sum()
        if int(non_finite):
            warnings.warn(
                f"ContinualAccuracy: {int(non_finite)} cells counted samples with non-finite "
                "scores (NaN or inf); their accuracy is NaN instead of counting them as "
                "hits or misses. Check the model's outputs (a diverged model).",
                stacklevel=2,
            )
        out = {"accuracy_matrix": matrix, "baseline_accuracy": baseline}
        counted = (self.total > 0).any(dim=1).nonzero()
        seen = int(counted[-1, 0]) + 1 if counted.numel() else 0
        head, base = matrix[:seen, :seen], baseline[:seen]
        calls: dict[str, Callable[[], torch.Tensor]] = {
            "average_accuracy": lambda: average_accuracy(head),
            "average_incremental_accuracy": lambda: average_incremental_accuracy(head),
            "forgetting": lambda: forgetting(head),
            "backward_transfer": lambda: backward_transfer(head),
            "forward_transfer": lambda: forward_transfer(head, base),
        }
        for name in _SUMMARIES:
            try:
                out[name] = calls[name]()
            except ValueError:  # a cell it reads was not measured, or too few tasks
                out[name] = torch.tensor(math.nan, dtype=matrix.dtype, device=matrix.device)
        return out

    def save(
        self, folder: str | os.PathLike, result: dict[str, torch.Tensor] | None = None
    ) -> tuple[str, str]:
        """Write ``accuracy_matrix.csv`` and ``accuracy_matrix.png`` (a heatmap) to ``folder``.

        ``result`` is what :meth:`compute` returned; ``None`` calls it. Under DDP
        ``compute`` syncs every process, so call it on every rank and pass its result to
        ``save`` on one. The CSV has a header ``after_task,task_0,…``, one row per
        training task (``init`` first when a baseline was counted), empty cells where not
        measured. Matplotlib runs with its Agg canvas and no pyplot.

        Returns:
            The paths of the CSV and the PNG.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        if not isinstance(folder, str | os.PathLike):
            raise TypeError(f"`folder` must be a path, got {folder!r} ({type(folder).__name__}).")
        result = self.compute() if result is None else result
        matrix = result["accuracy_matrix"].detach().cpu().double()
        baseline = result["baseline_accuracy"].detach().cpu().double()
        rows = [(str(i), matrix[i]) for i in range(self.num_tasks)]
        if not bool(baseline.isnan().all()):  # from the result: synced under DDP
            rows.insert(0, ("init", baseline))
        os.makedirs(folder, exist_ok=True)
        csv_path = os.path.join(os.fspath(folder), "accuracy_matrix.csv")
        with open(csv_path, "w") as file:
            file.write(",".join(["after_task"] + [f"task_{j}" for j in range(self.num_tasks)]))
            file.write("\n")
            for label, values in rows:
                cells = ["" if math.isnan(v) else f"{v:.6g}" for v in values.tolist()]
                file.write(",".join([label, *cells]) + "\n")
        size = 1.0 + 0.6 * self.num_tasks
        figure = Figure(figsize=(size + 1.0, size), layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        image = axes.imshow(
            torch.stack([values for _, values in rows]).numpy(), vmin=0.0, vmax=1.0, cmap="viridis"
        )
        for r, (_, values) in enumerate(rows):
            for j, value in enumerate(values.tolist()):
                if not math.isnan(value):
                    color = "black" if value > 0.5 else "white"
                    axes.text(j, r, f"{value:.2f}", ha="center", va="center", color=color)
        axes.set_xticks(range(self.num_tasks), [str(j) for j in range(self.num_tasks)])
        axes.set_yticks(range(len(rows)), [label for label, _ in rows])
        axes.set_xlabel("evaluated task j")
        axes.set_ylabel("after training task i")
        axes.set_title("accuracy R[i, j]")
        figure.colorbar(image, ax=axes, label="accuracy")
        png_path = os.path.join(os.fspath(folder), "accuracy_matrix.png")
        figure.savefig(png_path, dpi=120)
        return csv_path, png_path
