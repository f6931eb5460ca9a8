"""From per-sample scores to training decisions: a curriculum ranking, ease weights, a keep mask.

A curriculum ranking (:func:`difficulty_ranking`), MacAvaney et al. (2020)'s annealed ease
weights (:func:`ease_from_difficulty`, :func:`ease_weights`) and a Data Diet keep mask
(:func:`prune_mask`), from scores such as those of :mod:`.sample_scores`.
"""

from __future__ import annotations

import torch

from lightning_plugins.functional._checks import check_float
from lightning_plugins.functional.sample_scores import check_scores

__all__ = ["difficulty_ranking", "ease_from_difficulty", "ease_weights", "prune_mask"]


def ease_weights(ease: torch.Tensor, progress: float) -> torch.Tensor:
    """Annealed ease weights: ``ease + (1 - ease) * progress``.

    MacAvaney et al. (2020)'s per-sample weight ``w = D (1 - e/m) + e/m`` with ``D`` the
    ease and ``progress = min(1, e/m)`` (``e`` the epoch, ``m`` the epoch from which all
    weights are 1). At ``progress = 0`` the weight is the ease, at 1 it is uniform.

    Args:
        ease: ``[N]`` ease scores in ``[0, 1]`` (1 for the easiest sample), e.g. from
            :func:`ease_from_difficulty`.
        progress: the share of the annealing done, in ``[0, 1]``.

    Returns:
        ``[N]`` weights in ``[ease, 1]``, in ``ease``'s floating dtype.

    Raises:
        ValueError: for ``ease`` not 1-D, not finite or outside ``[0, 1]``, or
            ``progress`` outside ``[0, 1]``.

    Example:
        >>> ease_weights(torch.tensor([1.0, 0.5, 0.0]), progress=0.5)
        tensor([1.0000, 0.7500, 0.5000])
    """
    ease = check_scores(ease, "ease", low=0.0, high=1.0)
    progress = check_float(progress, "progress", low=0, high=1)
    return ease + (1.0 - ease) * progress


def difficulty_ranking(difficulty: torch.Tensor) -> torch.Tensor:
    """The sample indices easiest first: a stable ascending argsort of ``difficulty``.

    Ties keep index order.

    Args:
        difficulty: ``[N]`` finite scores, lower is easier.

    Returns:
        ``[N]`` int64 indices.

    Raises:
        ValueError: for ``difficulty`` not 1-D or not finite.

    Example:
        >>> difficulty_ranking(torch.tensor([0.3, 0.1, 0.3, 0.0]))
        tensor([3, 1, 0, 2])
    """
    difficulty = check_scores(difficulty, "difficulty")
    return torch.argsort(difficulty, stable=True)


def ease_from_difficulty(difficulty: torch.Tensor) -> torch.Tensor:
    """Ease scores from difficulty: ``1 - rank / N``, ``rank`` the place in the easy-first order.

    The easiest sample gets 1, the hardest ``1 / N``; ties are ranked by index, as in
    :func:`difficulty_ranking`. Only the order of ``difficulty`` matters.

    Args:
        difficulty: ``[N]`` finite scores, lower is easier.

    Returns:
        ``[N]`` float32 ease scores in ``(0, 1]``.

    Raises:
        ValueError: for ``difficulty`` not 1-D or not finite.

    Example:
        >>> ease_from_difficulty(torch.tensor([0.3, 0.1, 0.3, 0.0]))
        tensor([0.5000, 0.7500, 0.2500, 1.0000])
    """
    order = difficulty_ranking(difficulty)
    num = order.numel()
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(num, device=order.device)
    return 1.0 - ranks.to(torch.float32) / num


def prune_mask(scores: torch.Tensor, prune: float, offset: float = 0.0) -> torch.Tensor:
    """Data Diet's keep mask: keep the highest scores, optionally skipping the very highest.

    Sorting the scores in descending order (ties keep index order), the ``round(offset *
    N)`` highest are skipped (at most as many as leave room for the kept ones) and the next
    ``N - round(prune * N)`` are kept. ``offset`` drops the hardest samples first, which
    under label noise are mostly mislabelled (Paul et al. 2021). ``round`` is Python's
    (halves to even).

    Args:
        scores: ``[N]`` finite scores, higher is harder (EL2N, GraNd, forgetting counts).
        prune: the fraction of samples to drop, in ``[0, 1)``.
        offset: the fraction of the highest-scored samples to skip, in ``[0, 1)``.

    Returns:
        ``[N]`` bool mask, ``True`` for the samples kept.

    Raises:
        ValueError: for bad ``scores``, ``prune`` or ``offset`` outside ``[0, 1)``, or a
            ``prune`` that would keep no sample.

    Example:
        >>> scores = torch.tensor([0.9, 0.1, 0.5, 0.7, 0.3])
        >>> prune_mask(scores, prune=0.4)
        tensor([ True, False,  True,  True, False])
        >>> prune_mask(scores, prune=0.4, offset=0.2)
        tensor([False, False,  True,  True,  True])
    """
    scores = check_scores(scores, "scores")
    prune = check_float(prune, "prune", low=0, high=1, high_open=True)
    offset = check_float(offset, "offset", low=0, high=1, high_open=True)
    num = scores.numel()
    keep = num - round(prune * num)
    if num and keep < 1:
        raise ValueError(
            f"`prune`={prune!r} would keep none of the {num} samples (round({prune!r} * {num})"
            f" = {num}); use a fraction below {(num - 0.5) / num:g}."
        )
    skip = min(round(offset * num), num - keep)
    order = torch.argsort(scores, descending=True, stable=True)
    mask = torch.zeros(num, dtype=torch.bool, device=scores.device)
    mask[order[skip : skip + keep]] = True
    return mask
