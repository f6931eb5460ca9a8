"""Class-wise feature Gaussians for SLCA's classifier alignment (Zhang et al. 2023).

After each task SLCA stores, per new class, the mean and covariance of the backbone's
features and later trains the heads on features sampled from these Gaussians, with the
logits normalised by the mean norm of their per-task blocks.

The statistics are built from *moments* that sum over samples (count, sum of features and
sum of outer products or of squares), so a module can sum them over ranks
(:func:`lightning_plugins.distributed.global_sum`) before finishing them::

    moments = class_moments(features, labels, classes, kind)  # this rank's rows
    moments = {key: global_sum(value) for key, value in moments.items()}
    stats = statistics_from_moments(moments, classes, kind, rank=rank)

The covariance is the unbiased sample covariance (divided by ``n - 1``, as
``numpy.cov``'s default), plus ``eps`` on the diagonal as the reference adds ``1e-4 I``.
Three forms are kept:

- ``"full"``: ``covariance [C, d, d]`` (the reference; ``C·d²`` numbers),
- ``"diagonal"``: ``variance [C, d]``,
- ``"lowrank"``: ``factor [C, d, k]`` and ``residual [C, d]`` with
  ``Σ ≈ U Uᵀ + diag(r)``: ``U`` holds the top-k eigenvectors of the sample covariance
  scaled by the square roots of their eigenvalues, ``r`` is the diagonal of
  ``Σ - U Uᵀ`` clamped at 0, plus ``eps``. Stored in ``C·d·(k+1)`` numbers; with
  ``k = d`` it equals ``"full"`` up to round-off.

The moments of ``"full"`` and ``"lowrank"`` hold one ``d x d`` sum per class (float64); to
bound that memory for many classes, compute the low-rank statistics in chunks of classes
(pass the rows of those classes only) and concatenate the results.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lightning_plugins.functional._checks import check_choice, check_float, check_int

__all__ = [
    "COVARIANCE_KINDS",
    "class_moments",
    "class_statistics",
    "normalized_logits",
    "sample_class_features",
    "shrink_old_means",
    "statistics_from_moments",
]

COVARIANCE_KINDS = ("full", "diagonal", "lowrank")


def _check_classes(classes: Sequence[int] | torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(classes, torch.Tensor):
        if classes.ndim != 1 or classes.dtype.is_floating_point or classes.dtype == torch.bool:
            raise TypeError(
                f"`classes` must be a 1-D integer tensor or a sequence of integers, got "
                f"dtype {classes.dtype} and shape {tuple(classes.shape)}."
            )
        ids = classes.detach().to(device=device, dtype=torch.long)
    else:
        if isinstance(classes, str | bytes) or not isinstance(classes, Sequence):
            raise TypeError(
                "`classes` must be a 1-D integer tensor or a sequence of integers, got "
                f"{classes!r} ({type(classes).__name__})."
            )
        values = [check_int(c, f"classes[{i}]") for i, c in enumerate(classes)]
        ids = torch.tensor(values, dtype=torch.long, device=device)
    if ids.numel() == 0:
        raise ValueError("`classes` must hold at least one class id, got none.")
    if torch.unique(ids).numel() != ids.numel():
        raise ValueError(f"`classes` must hold distinct class ids, got {ids.tolist()}.")
    return ids


def _check_kind_rank(kind: str, rank: int | None, dim: int | None = None) -> int | None:
    check_choice(kind, "kind", COVARIANCE_KINDS)
    if kind != "lowrank":
        if rank is not None:
            raise ValueError(
                f"`rank` is only used with kind='lowrank'; got rank={rank!r} with "
                f"kind={kind!r}. Leave `rank` as None."
            )
        return None
    if rank is None:
        raise ValueError("`rank` must be given with kind='lowrank' (an integer in [1, d]).")
    return check_int(rank, "rank", low=1, high=dim)


def class_moments(
    features: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[int] | torch.Tensor,
    kind: str = "full",
) -> dict[str, torch.Tensor]:
    """Per-class sums over samples from which the class Gaussians follow; summable over ranks.

    Args:
        features: ``[N, d]`` floating features (detached; summed in float64).
        labels: ``[N]`` integer class ids, each one of ``classes``.
        classes: the ``C`` distinct class ids, in the order of the rows of the result.
        kind: ``"full"``, ``"diagonal"`` or ``"lowrank"`` (the last needs the same
            moments as ``"full"``).

    Returns:
        ``count`` (``[C]`` int64), ``sum`` (``[C, d]`` float64) and ``outer``
        (``[C, d, d]``, the sum of ``x xᵀ``; ``full`` / ``lowrank``) or ``sum_squares``
        (``[C, d]``; ``diagonal``). Every entry is a sum over samples, so summing each over
        ranks (or over parts of the data) gives the moments of the union.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])
        >>> m = class_moments(x, torch.tensor([7, 7, 2]), [2, 7], kind="diagonal")
        >>> m["count"], m["sum"], m["sum_squares"]
        (tensor([1, 2]), tensor([[5., 5.],
                [4., 2.]], dtype=torch.float64), tensor([[25., 25.],
                [10.,  4.]], dtype=torch.float64))
    """
    check_choice(kind, "kind", COVARIANCE_KINDS)
    if not isinstance(features, torch.Tensor) or not features.dtype.is_floating_point:
        got = features.dtype if isinstance(features, torch.Tensor) else type(features).__name__
        raise TypeError(f"`features` must be a floating [N, d] tensor, got {got}.")
    if features.ndim != 2:
        raise ValueError(f"`features` must be 2-D [N, d], got shape {tuple(features.shape)}.")
    if (
        not isinstance(labels, torch.Tensor)
        or labels.dtype.is_floating_point
        or labels.dtype == torch.bool
    ):
        got = labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise TypeError(f"`labels` must be an integer [N] tensor, got {got}.")
    if labels.shape != features.shape[:1]:
        raise ValueError(
            f"`labels` must be [N] with one label per row of `features` "
            f"({features.shape[0]}), got shape {tuple(labels.shape)}."
        )
    ids = _check_classes(classes, features.device)
    labels = labels.detach().to(device=features.device, dtype=torch.long)
    sorted_ids, order = ids.sort()
    position = torch.searchsorted(sorted_ids, labels).clamp(max=ids.numel() - 1)
    known = sorted_ids[position] == labels
    if not bool(known.all()):
        bad = int(labels[~known][0])
        raise ValueError(
            f"`labels` holds class {bad}, which is not one of `classes` {ids.tolist()}."
        )
    index = order[position]
    x = features.detach().double()
    num_classes, dim = ids.numel(), x.shape[1]
    count = torch.bincount(index, minlength=num_classes)
    total = torch.zeros(num_classes, dim, dtype=x.dtype, device=x.device).index_add_(0, index, x)
    moments = {"count": count, "sum": total}
    if kind == "diagonal":
        moments["sum_squares"] = torch.zeros_like(total).index_add_(0, index, x * x)
    else:  # one class at a time: N·d² would not fit
        grouped = x[index.argsort(stable=True)].split(count.tolist())
        moments["outer"] = torch.stack([rows.T @ rows for rows in grouped])
    return moments


def statistics_from_moments(
    moments: dict[str, torch.Tensor],
    classes: Sequence[int] | torch.Tensor,
    kind: str = "full",
    rank: int | None = None,
    eps: float = 1e-4,
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """Class means and covariances (in the form ``kind``) from :func:`class_moments`.

    Args:
        moments: the (possibly rank-summed) output of :func:`class_moments` for ``kind``.
        classes: the class ids the moments were computed for (not summed over ranks).
        kind: ``"full"``, ``"diagonal"`` or ``"lowrank"``.
        rank: ``k`` for ``"lowrank"``, in ``[1, d]``; ``None`` otherwise.
        eps: added to the covariance's diagonal (``1e-4`` as the reference).
        dtype: dtype of the floating results; ``None`` keeps float64.

    Returns:
        ``classes`` ``[C]``, ``count`` ``[C]``, ``mean`` ``[C, d]`` and ``covariance``
        ``[C, d, d]`` (full), ``variance`` ``[C, d]`` (diagonal), or ``factor``
        ``[C, d, k]`` and ``residual`` ``[C, d]`` (lowrank). The covariance is unbiased
        (divided by ``n - 1``), so every class needs at least 2 samples.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0], [5.0, 7.0]])
        >>> y = torch.tensor([7, 7, 2, 2])
        >>> s = statistics_from_moments(class_moments(x, y, [2, 7], "diagonal"), [2, 7],
        ...                             "diagonal", eps=0.0, dtype=torch.float32)
        >>> s["mean"], s["variance"]
        (tensor([[5., 6.],
                [2., 1.]]), tensor([[0., 2.],
                [2., 2.]]))
    """
    eps = check_float(eps, "eps", low=0)
    count = moments["count"]
    ids = _check_classes(classes, count.device)
    check_choice(kind, "kind", COVARIANCE_KINDS)
    total = moments["sum"].double()
    num_classes, dim = total.shape
    rank = _check_kind_rank(kind, rank, dim)
    if ids.numel() != num_classes:
        raise ValueError(
            f"`classes` must hold one id per row of the moments ({num_classes}), got {ids.numel()}."
        )
    few = count < 2
    if bool(few.any()):
        first = int(few.nonzero()[0, 0])
        raise ValueError(
            f"class {int(ids[first])} has {int(count[first])} sample(s); its covariance "
            "needs at least 2 (unbiased, divided by n - 1)."
        )
    n = count.double()[:, None]
    mean = total / n
    out: dict[str, torch.Tensor] = {"classes": ids, "count": count.clone(), "mean": mean}
    if kind == "diagonal":
        variance = (moments["sum_squares"].double() - n * mean * mean) / (n - 1)
        out["variance"] = variance.clamp(min=0) + eps
    else:
        outer = moments["outer"].double()
        covariance = (outer - n[:, :, None] * mean[:, :, None] * mean[:, None, :]) / (
            n[:, :, None] - 1
        )
        covariance = (covariance + covariance.transpose(1, 2)) / 2
        if kind == "full":
            eye = torch.eye(dim, dtype=covariance.dtype, device=covariance.device)
            out["covariance"] = covariance + eps * eye
        else:
            values, vectors = torch.linalg.eigh(covariance)  # ascending
            values, vectors = values[:, -rank:].clamp(min=0), vectors[:, :, -rank:]
            factor = vectors * values.sqrt()[:, None, :]
            diagonal = covariance.diagonal(dim1=1, dim2=2)
            out["factor"] = factor
            out["residual"] = (diagonal - (factor * factor).sum(-1)).clamp(min=0) + eps
    if dtype is not None:
        out = {k: v.to(dtype) if v.dtype.is_floating_point else v for k, v in out.items()}
    return out


def class_statistics(
    features: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[int] | torch.Tensor,
    kind: str = "full",
    rank: int | None = None,
    eps: float = 1e-4,
) -> dict[str, torch.Tensor]:
    """Per-class feature mean and covariance of one process's rows, in ``features``' dtype.

    :func:`class_moments` followed by :func:`statistics_from_moments`; under DDP sum the
    moments over ranks in between (module docstring).

    Example:
        >>> x = torch.tensor([[0.0, 0.0], [2.0, 2.0], [1.0, 5.0], [3.0, 1.0]])
        >>> s = class_statistics(x, torch.tensor([0, 0, 1, 1]), [0, 1], "full", eps=0.0)
        >>> s["mean"]
        tensor([[1., 1.],
                [2., 3.]])
        >>> s["covariance"]
        tensor([[[ 2.,  2.],
                 [ 2.,  2.]],
        <BLANKLINE>
                [[ 2., -4.],
                 [-4.,  8.]]])
    """
    _check_kind_rank(kind, rank, features.shape[-1] if isinstance(features, torch.Tensor) else None)
    moments = class_moments(features, labels, classes, kind)
    return statistics_from_moments(moments, classes, kind, rank, eps, dtype=features.dtype)


def sample_class_features(
    statistics: dict[str, torch.Tensor],
    num_per_class: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``num_per_class`` features from each class Gaussian ``N(mean_c, Σ_c)``.

    The form is read from the keys of ``statistics`` (:func:`statistics_from_moments`):
    ``covariance`` → ``mean + L z`` with the Cholesky factor ``L``; ``variance`` →
    ``mean + sqrt(var) · z``; ``factor`` / ``residual`` → ``mean + U z_k + sqrt(r) · z_d``
    (``z_k`` drawn before ``z_d``). All ``z`` are standard normal from ``generator``
    (on the statistics' device).

    Returns:
        ``features [C · n, d]`` grouped by class in the order of ``statistics["classes"]``,
        and their ``labels [C · n]`` (int64 class ids).

    Example:
        >>> stats = {"classes": torch.tensor([3, 5]), "mean": torch.tensor([[0.0], [9.0]]),
        ...          "variance": torch.zeros(2, 1)}
        >>> sample_class_features(stats, 2)
        (tensor([[0.],
                [0.],
                [9.],
                [9.]]), tensor([3, 3, 5, 5]))
    """
    num_per_class = check_int(num_per_class, "num_per_class", low=1)
    mean, classes = statistics["mean"], statistics["classes"]
    num_classes, dim = mean.shape

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=mean.dtype, device=mean.device)

    if "covariance" in statistics:
        lower, info = torch.linalg.cholesky_ex(statistics["covariance"])
        if bool((info > 0).any()):
            bad = int(classes[int((info > 0).nonzero()[0, 0])])
            raise ValueError(
                f"the covariance of class {bad} is not positive definite; use a larger "
                "`eps` or kind='diagonal' / 'lowrank'."
            )
        z = normal(num_classes, num_per_class, dim)
        samples = mean[:, None, :] + z @ lower.transpose(1, 2)
    elif "variance" in statistics:
        z = normal(num_classes, num_per_class, dim)
        samples = mean[:, None, :] + statistics["variance"].sqrt()[:, None, :] * z
    elif "factor" in statistics:
        factor = statistics["factor"]
        z_k = normal(num_classes, num_per_class, factor.shape[-1])
        z_d = normal(num_classes, num_per_class, dim)
        samples = (
            mean[:, None, :]
            + z_k @ factor.transpose(1, 2)
            + statistics["residual"].sqrt()[:, None, :] * z_d
        )
    else:
        raise ValueError(
            "`statistics` must hold 'covariance', 'variance' or 'factor' and 'residual' "
            f"(from statistics_from_moments), got keys {sorted(statistics)}."
        )
    labels = classes.to(mean.device).repeat_interleave(num_per_class)
    return samples.reshape(num_classes * num_per_class, dim), labels


def normalized_logits(
    logits: torch.Tensor, task_sizes: Sequence[int], temperature: float = 0.1
) -> torch.Tensor:
    """SLCA's logit normalisation for classifier alignment.

    The logits ``[B, C]`` are split into consecutive per-task blocks of ``task_sizes``
    columns; for each sample the L2 norm of every block is taken (plus ``1e-7``, as the
    reference), the norms are averaged over the blocks, and the logits are divided by that
    mean times ``temperature``::

        out[b] = logits[b] / (temperature · mean_t (‖logits[b, block_t]‖₂ + 1e-7))

    Args:
        logits: ``[B, C]`` with ``C = sum(task_sizes)`` (the heads of all tasks so far).
        task_sizes: number of classes of each task, in column order (unequal allowed).
        temperature: ``τ > 0``; the reference uses 0.1.

    Example:
        >>> normalized_logits(torch.tensor([[3.0, 4.0, 0.0]]), [2, 1], temperature=0.5)
        tensor([[2.4000, 3.2000, 0.0000]])
    """
    temperature = check_float(temperature, "temperature", low=0, low_open=True)
    if isinstance(task_sizes, str | bytes) or not isinstance(task_sizes, Sequence):
        raise TypeError(
            f"`task_sizes` must be a sequence of integers, got {task_sizes!r} "
            f"({type(task_sizes).__name__})."
        )
    sizes = [check_int(s, f"task_sizes[{i}]", low=1) for i, s in enumerate(task_sizes)]
    if not sizes:
        raise ValueError("`task_sizes` must hold at least one task, got none.")
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
        raise ValueError(f"`logits` must be a 2-D [batch, classes] tensor, got {shape}.")
    if sum(sizes) != logits.shape[1]:
        raise ValueError(
            f"`task_sizes` {sizes} must sum to the number of logits ({logits.shape[1]}), "
            f"got {sum(sizes)}."
        )
    norms = torch.stack([block.norm(dim=1) + 1e-7 for block in logits.split(sizes, dim=1)], 1)
    return logits / (norms.mean(dim=1, keepdim=True) * temperature)


def shrink_old_means(
    means: torch.Tensor,
    class_tasks: torch.Tensor | Sequence[int],
    current_task: int,
    shrink: float = 0.1,
) -> torch.Tensor:
    """Scale each class mean by its age, as the reference does before sampling.

    A class first seen in task ``t`` (0-based) is scaled, during classifier alignment after
    task ``T``, by ``1 - shrink + shrink · (t + 1) / (T + 1)``: the current task's classes
    keep their means, older ones shrink towards 0 (at most by ``shrink``). The reference
    computes ``t`` as ``class // task_size``, which is wrong for unequal tasks; here
    ``class_tasks`` gives each class's task.

    Args:
        means: ``[C, d]`` class means.
        class_tasks: ``[C]`` task index of each class, in ``[0, current_task]``.
        current_task: ``T``, the task just finished (0-based).
        shrink: the largest shrinkage, in ``[0, 1]`` (reference 0.1).

    Example:
        >>> shrink_old_means(torch.ones(3, 1), [0, 1, 1], current_task=1)
        tensor([[0.9500],
                [1.0000],
                [1.0000]])
    """
    current_task = check_int(current_task, "current_task", low=0)
    shrink = check_float(shrink, "shrink", low=0, high=1)
    tasks = torch.as_tensor(class_tasks, device=means.device)
    if tasks.dtype.is_floating_point or tasks.shape != means.shape[:1]:
        raise ValueError(
            f"`class_tasks` must hold one integer task index per class ({means.shape[0]}), "
            f"got {tasks.dtype} of shape {tuple(tasks.shape)}."
        )
    if bool(((tasks < 0) | (tasks > current_task)).any()):
        raise ValueError(
            f"`class_tasks` must lie in [0, current_task={current_task}], got {tasks.tolist()}."
        )
    scale = 1 - shrink + shrink * (tasks.to(means.dtype) + 1) / (current_task + 1)
    return means * scale[:, None]
