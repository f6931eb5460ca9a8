"""SLCA's classifier alignment: linear heads trained on features drawn from class Gaussians.

After a task, SLCA (Zhang et al. 2023) trains the concatenated heads of all tasks seen on
features sampled from each seen class's Gaussian (old classes' means shrunk by their age,
:func:`~lightning_plugins.functional.shrink_old_means`), with the logits normalised by the
mean norm of their per-task blocks (:func:`~lightning_plugins.functional.normalized_logits`).
The reference's loop (``_stage2_compact_classifier``): SGD with momentum 0.9 and weight
decay 5e-4 on all head parameters, a cosine learning rate over the epochs (stepped per
epoch), and per epoch ``samples_per_class`` fresh samples of every class, shuffled and
consumed in batches of ``batch_size``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from lightning_plugins.functional import (
    normalized_logits,
    sample_class_features,
    shrink_old_means,
)
from lightning_plugins.functional._checks import check_float, check_int

__all__ = ["ALIGNMENT_MOMENTUM", "ALIGNMENT_WEIGHT_DECAY", "align_linear_classifier"]

ALIGNMENT_MOMENTUM = 0.9
"""SGD momentum of the alignment (the reference's)."""
ALIGNMENT_WEIGHT_DECAY = 5e-4
"""Weight decay of the alignment, on weights and biases (the reference's)."""


def align_linear_classifier(
    weight: torch.Tensor,
    bias: torch.Tensor,
    statistics: dict[str, torch.Tensor],
    class_tasks: torch.Tensor | Sequence[int],
    task_sizes: Sequence[int],
    *,
    samples_per_class: int = 256,
    epochs: int = 5,
    lr: float = 0.01,
    batch_size: int = 256,
    temperature: float = 0.1,
    mean_shrink: float = 0.1,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Train a linear classifier ``x Wᵀ + b`` on features sampled from class Gaussians.

    Works on detached copies (the inputs are not changed): no module, optimizer or DDP
    wrapper is touched, so every rank can run it alone with the same ``generator`` seed.

    Args:
        weight: ``[C, d]``, row ``c`` the class at logit ``c`` (the heads of all tasks seen,
            concatenated in stream order).
        bias: ``[C]``.
        statistics: class Gaussians of the ``C`` logits in the same order, as from
            :func:`~lightning_plugins.functional.statistics_from_moments` (``mean`` and
            ``covariance`` | ``variance`` | ``factor`` + ``residual``); ``classes`` is
            replaced by ``0..C-1`` (the targets are logit positions).
        class_tasks: ``[C]`` the task of each logit, the last task is the one just ended.
        task_sizes: logits of each task in order (sum ``C``), for the logit normalisation.
        samples_per_class: features drawn per class and epoch (reference 256).
        epochs: alignment epochs (reference 5).
        lr: SGD learning rate at the start of the cosine schedule (reference 0.01).
        batch_size: features per step (reference 256).
        temperature: logit-normalisation temperature (reference 0.1).
        mean_shrink: largest shrinking of old class means (reference 0.1).
        generator: random numbers of sampling and shuffling (on the statistics' device).

    Returns:
        The aligned ``weight`` and ``bias`` (float32, detached) and the mean loss of each
        epoch.

    Example:
        >>> stats = {"mean": torch.tensor([[2.0, 0.0], [0.0, 2.0]]), "variance": torch.ones(2, 2)}
        >>> w, b, losses = align_linear_classifier(
        ...     torch.zeros(2, 2), torch.zeros(2), stats, [0, 1], [1, 1], samples_per_class=64,
        ...     epochs=3, lr=0.1, generator=torch.Generator().manual_seed(0))
        >>> bool(w[0, 0] > w[0, 1]), bool(w[1, 1] > w[1, 0]), len(losses)
        (True, True, 3)
    """
    samples_per_class = check_int(samples_per_class, "samples_per_class", low=1)
    epochs = check_int(epochs, "epochs", low=1)
    batch_size = check_int(batch_size, "batch_size", low=1)
    lr = check_float(lr, "lr", low=0, low_open=True)
    temperature = check_float(temperature, "temperature", low=0, low_open=True)
    num_classes = weight.shape[0]
    if weight.ndim != 2 or bias.shape != (num_classes,):
        raise ValueError(
            f"`weight` must be [C, d] and `bias` [C], got {tuple(weight.shape)} and "
            f"{tuple(bias.shape)}."
        )
    if statistics["mean"].shape != weight.shape:
        raise ValueError(
            f"`statistics['mean']` must be [C, d] = {tuple(weight.shape)} like `weight`, got "
            f"{tuple(statistics['mean'].shape)}."
        )
    device = weight.device
    class_tasks = torch.as_tensor(class_tasks, device=device)
    current_task = int(class_tasks.max())
    means = shrink_old_means(statistics["mean"], class_tasks, current_task, mean_shrink)
    gaussians = {
        **statistics,
        "mean": means,
        "classes": torch.arange(num_classes, device=device),
    }
    w = weight.detach().to(torch.float32).clone().requires_grad_(True)
    b = bias.detach().to(torch.float32).clone().requires_grad_(True)
    optimizer = torch.optim.SGD(
        [w, b], lr=lr, momentum=ALIGNMENT_MOMENTUM, weight_decay=ALIGNMENT_WEIGHT_DECAY
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    losses = []
    with torch.enable_grad(), torch.autocast(device.type, enabled=False):
        for _ in range(epochs):
            features, targets = sample_class_features(gaussians, samples_per_class, generator)
            order = torch.randperm(targets.numel(), generator=generator, device=device)
            features, targets = features[order].to(torch.float32), targets[order]
            total = torch.zeros((), device=device)
            for start in range(0, targets.numel(), batch_size):
                x, y = features[start : start + batch_size], targets[start : start + batch_size]
                logits = normalized_logits(F.linear(x, w, b), task_sizes, temperature)
                loss = F.cross_entropy(logits, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.detach() * y.numel()
            losses.append(float(total) / targets.numel())
            schedule.step()
    return w.detach(), b.detach(), losses
