"""Concept-Aware Batch Sampling (CABS): choose a batch from a super-batch by its concepts."""

from __future__ import annotations

import heapq
import numbers
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

from lightning_plugins.functional.concept_lists import ConceptLists, concept_csr

__all__ = [
    "CABS_VARIANTS",
    "cabs_select",
    "cabs_target_counts",
    "check_cabs_arguments",
    "check_cabs_targets",
]

CABS_VARIANTS = ("dm", "fm")
OVER_TARGET_GAIN = -0.5
"""Gain of a concept occurrence once the batch holds the concept's target count."""
NO_CONCEPT_GAIN = -1.0
"""Gain of a sample without concepts: below any annotated sample, so it is picked last."""
GAIN_SCALE = 2.0**32
"""Gains are rounded to multiples of ``1 / GAIN_SCALE``: exact sums, exact ties."""
_WINDOW = 256  # candidates in one round of the greedy
_STALE_LIMIT = 16  # re-scorings in a row after which a round ends
_TARGET_SUM_TOLERANCE = 1e-4


def check_cabs_targets(targets: torch.Tensor, name: str = "targets") -> torch.Tensor:
    """``targets`` as a float64 CPU distribution over concepts, or a ``ValueError``.

    Example:
        >>> check_cabs_targets(torch.tensor([0.25, 0.75])).dtype
        torch.float64
    """
    targets = torch.as_tensor(targets)
    if targets.ndim != 1 or targets.numel() == 0:
        raise ValueError(
            f"`{name}` must be a 1-D distribution over the concept vocabulary, got shape "
            f"{tuple(targets.shape)}."
        )
    targets = targets.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(targets).all()) or bool((targets < 0).any()):
        bad = targets[~torch.isfinite(targets) | (targets < 0)][0].item()
        raise ValueError(f"`{name}` must be finite and non-negative, got an entry {bad}.")
    total = float(targets.sum())
    if abs(total - 1.0) > _TARGET_SUM_TOLERANCE:
        raise ValueError(f"`{name}` must sum to 1 (a distribution over concepts), got {total:.6g}.")
    return targets


def cabs_target_counts(
    targets: torch.Tensor, batch_size: int, cap: int | None = None
) -> torch.Tensor:
    """Wanted occurrences of each concept in a batch: ``targets * batch_size``, capped.

    ``targets`` is a distribution over the vocabulary; the default DM target is uniform
    over the concepts present in the (global) super-batch. A target below one behaves
    like one: a batch holds a concept zero times or at least once.

    Example:
        >>> cabs_target_counts(torch.tensor([0.5, 0.25, 0.25, 0.0]), 40, cap=15).tolist()
        [15.0, 10.0, 10.0, 0.0]
    """
    counts = targets.to(torch.float64) * batch_size
    return counts if cap is None else counts.clamp(max=float(cap))


def cabs_select(
    concepts: ConceptLists,
    batch_size: int,
    variant: str = "dm",
    targets: torch.Tensor | None = None,
    cap: int | None = 10,
    generator: torch.Generator | None = None,
    num_concepts: int | None = None,
) -> torch.Tensor:
    """Indices of the ``batch_size`` samples CABS keeps from a super-batch.

    **FM** (frequency maximisation) keeps the samples with the most annotated objects,
    stable in super-batch order for equal counts.

    **DM** (diversity maximisation) fills the batch greedily. Concept ``c`` has a target
    count ``t_c = min(targets[c] * batch_size, cap)``; with ``targets=None`` the target is
    uniform over the concepts present. With ``n_c`` the batch's current count and
    ``f_c`` the number of super-batch samples holding ``c``, one occurrence of ``c``
    gains ``(t_c - n_c) / t_c + 1 / f_c`` while ``n_c < t_c`` and ``-0.5`` after. A
    sample's gain is the mean over its occurrences (duplicates count); a sample without
    concepts gains ``-1`` (picked last); a sample that would take any concept past
    ``cap`` is excluded. The best sample is picked, counts update, repeat. Equal gains
    are ordered by a random permutation drawn from ``generator`` (never by concept id).
    If every remaining sample is excluded, the rest of the batch is filled in that random
    order, and caps may then be exceeded. Gains only fall as the batch fills, so a lazy
    priority queue re-scores just the candidates that reach its top: the picks equal the
    plain greedy's.

    Args:
        concepts: concept ids of each super-batch sample (see :data:`ConceptLists`).
        batch_size: samples to keep, ``1 <= batch_size <= len(super-batch)``.
        variant: ``"dm"`` or ``"fm"``.
        targets: ``[num_concepts]`` target distribution (non-negative, sums to 1), or
            ``None`` for uniform over the present concepts (DM only).
        cap: most occurrences of one concept in the batch (DM only), ``None`` for no cap.
        generator: random source for tie-breaking and the fill (DM only).
        num_concepts: vocabulary size, to check ids; defaults to ``len(targets)``.

    Returns:
        ``[batch_size]`` int64 positions in the super-batch, in pick order.

    Raises:
        ValueError: for an unknown variant, a batch size outside ``[1, len(super-batch)]``,
            a cap below 1, ids outside the vocabulary, or targets that are not a
            distribution.

    Example:
        >>> concepts = [[0, 0, 0], [0, 1], [2], [0], [], [1, 2, 3]]
        >>> cabs_select(concepts, 3, "fm").tolist()
        [0, 5, 1]
        >>> gen = torch.Generator().manual_seed(0)
        >>> sorted(cabs_select(concepts, 3, "dm", cap=1, generator=gen).tolist())
        [3, 4, 5]
    """
    if variant not in CABS_VARIANTS:
        raise ValueError(f"`variant` must be one of {CABS_VARIANTS}, got {variant!r}.")
    if cap is not None and (isinstance(cap, bool) or int(cap) != cap or cap < 1):
        raise ValueError(f"`cap` must be a positive integer or None, got {cap!r}.")
    if targets is not None:
        targets = check_cabs_targets(targets)
        if num_concepts is not None and targets.numel() != num_concepts:
            raise ValueError(
                f"`targets` must have one entry per concept ({num_concepts}), got "
                f"{targets.numel()}."
            )
        num_concepts = targets.numel()
    ids, offsets = concept_csr(concepts, num_concepts)
    num_samples = offsets.numel() - 1
    if isinstance(batch_size, bool) or not 1 <= batch_size <= num_samples:
        raise ValueError(
            f"`batch_size` must be in [1, {num_samples}] (the super-batch size), got {batch_size}."
        )
    if variant == "fm":
        return torch.sort(offsets.diff(), descending=True, stable=True).indices[:batch_size]
    order = torch.randperm(num_samples, generator=generator)
    return _greedy_dm(ids, offsets, order, targets, batch_size, cap)


def _stable_concept_order(ids: np.ndarray) -> np.ndarray:
    """A stable argsort of non-negative ids below 2**32: two 16-bit radix passes."""
    order = np.argsort((ids & 0xFFFF).astype(np.uint16), kind="stable")
    high = ids >> 16
    if high.any():
        order = order[np.argsort(high[order].astype(np.uint16), kind="stable")]
    return order


def _greedy_dm(
    ids: torch.Tensor,
    offsets: torch.Tensor,
    order: torch.Tensor,
    targets: torch.Tensor | None,
    batch_size: int,
    cap: int | None,
) -> torch.Tensor:
    """Greedy DM: exact picks of the plain greedy, in rounds over a window of candidates.

    A round takes the window of samples whose gain is at least a threshold (a few hundred
    of the best) and runs a lazy greedy on it: gains only fall as the batch fills, so the
    window's queue holds upper bounds, and a popped sample whose re-computed gain is
    unchanged is the best of the window. While that gain is at least the threshold it is
    also better than every sample outside the window, hence exactly the plain greedy's
    next pick (equal gains go to the lower rank in ``order``). When the window's best
    falls below the threshold, the counts and the gains of every sample holding a changed
    concept are updated in one vectorised step and the next round starts.
    """
    state = _GreedyState(ids.numpy(), offsets.numpy(), order.numpy())
    if targets is None:  # uniform over the concepts present
        present = np.full(state.present.size, 1.0 / max(state.present.size, 1))
    else:
        present = targets.numpy()[state.present]
    state.start(cabs_target_counts(torch.from_numpy(present), batch_size, cap).numpy(), cap)
    picked: list[int] = []
    while len(picked) < batch_size:
        queue, threshold = state.window()
        if not queue:
            break  # every remaining sample would break a cap
        accepted: list[int] = []
        stale = 0  # re-scorings since the last pick
        while queue and len(picked) + len(accepted) < batch_size:
            negative_gain, rank, position = queue[0]
            gain = state.exact_gain(position)
            if gain is None:  # it would break a cap now
                heapq.heappop(queue)
            elif -gain != negative_gain:  # a stale bound: re-queue with the true gain
                heapq.heapreplace(queue, (-gain, rank, position))
                stale += 1
                if stale > _STALE_LIMIT and accepted:
                    break  # cheaper to re-score everything at once
            elif gain < threshold and accepted:
                break  # a sample outside the window may be better now
            else:
                heapq.heappop(queue)
                accepted.append(position)
                state.count(position)
                stale = 0
        picked.extend(accepted)
        state.take(accepted)
    if len(picked) < batch_size:  # fill in tie-break order; caps may break
        taken = np.zeros(state.num_samples, dtype=bool)
        taken[picked] = True
        rest = state.order[~taken[state.order]]
        picked.extend(rest[: batch_size - len(picked)].tolist())
    return torch.tensor(picked, dtype=torch.long)


class _GreedyState:
    """Counts, fixed-point gain sums and an inverted concept index of one DM selection.

    Gains are integers (in units of ``1 / GAIN_SCALE``) held in float64, so sums are
    exact and do not depend on the order of additions; ``-inf`` marks a sample that is
    picked or excluded by the cap.
    """

    def __init__(self, flat: np.ndarray, starts: np.ndarray, order: np.ndarray) -> None:
        self.starts, self.order = starts, order
        self.num_samples = starts.size - 1
        self.rank = np.empty(self.num_samples, dtype=np.int64)
        self.rank[order] = np.arange(self.num_samples)
        self.lengths = np.diff(starts)
        self.rows = np.repeat(np.arange(self.num_samples), self.lengths)
        # Occurrences grouped by concept, samples ascending within a concept. Concepts are
        # renumbered 0..K-1 over those present, so no array grows with the vocabulary.
        by_concept = _stable_concept_order(flat)
        concept_of = flat[by_concept]
        self.holder = self.rows[by_concept]
        new_concept = np.ones(flat.size, dtype=bool)
        new_concept[1:] = concept_of[1:] != concept_of[:-1]
        self.present = concept_of[new_concept]  # vocabulary id of each dense id
        dense = np.cumsum(new_concept) - 1
        self.flat = np.empty_like(flat)
        self.flat[by_concept] = dense
        new_pair = new_concept.copy()
        new_pair[1:] |= self.holder[1:] != self.holder[:-1]
        pair = np.cumsum(new_pair) - 1
        self.multiplicity = np.bincount(pair)[pair]  # copies of the concept in its sample
        num_present = self.present.size
        self.frequencies = np.bincount(dense[new_pair], minlength=num_present)
        self.concept_start = np.append(np.flatnonzero(new_concept), flat.size)
        self.max_multiplicity = (
            np.maximum.reduceat(self.multiplicity, self.concept_start[:-1])
            if num_present
            else np.zeros(0, dtype=np.int64)
        )
        self.inv_freq = 1.0 / self.frequencies
        self.counts = np.zeros(num_present, dtype=np.int64)
        self.starts_list = starts.tolist()

    def start(self, target_counts: np.ndarray, cap: int | None) -> None:
        """Gains on the empty batch."""
        self.targets = target_counts
        self.cap = np.inf if cap is None else cap
        concepts = np.arange(self.counts.size)
        per_concept = self.term(concepts, self.counts)
        terms = per_concept[self.flat]
        self.sums = np.bincount(self.rows, weights=terms, minlength=self.num_samples)
        self.gains = np.where(
            self.lengths > 0, self.sums / np.maximum(self.lengths, 1), NO_CONCEPT_GAIN
        )
        self.gains[self.holder[self.multiplicity > self.cap]] = -np.inf
        # Python-side mirrors for the per-sample loop: each concept's current term, and
        # whether one more sample could take it past the cap
        self.counts_list = self.counts.tolist()
        self.targets_list = self.targets.tolist()
        self.inv_list = self.inv_freq.tolist()
        self.terms_list = per_concept.tolist()
        self.max_copies_list = self.max_multiplicity.tolist()
        self.near_cap_list = (self.max_multiplicity > self.cap).tolist()
        self.concept_start_list = self.concept_start.tolist()
        self.capped = np.zeros(self.num_samples, dtype=bool)  # a concept is at its cap

    def term(self, concepts: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Fixed-point gain of one occurrence of each of ``concepts`` at ``counts``."""
        target = self.targets[concepts]
        under = counts < target
        fresh = (target - counts) / np.where(under, target, 1.0) + self.inv_freq[concepts]
        return np.round(np.where(under, fresh, OVER_TARGET_GAIN) * GAIN_SCALE)

    def row(self, position: int) -> list[int]:
        """Concept ids of one sample."""
        return self.flat[self.starts_list[position] : self.starts_list[position + 1]].tolist()

    def window(self) -> tuple[list[tuple[float, int, int]], float]:
        """The samples with gain at least a threshold, as a sorted queue, and the threshold.

        Every sample outside the window has a smaller gain than the threshold.
        """
        alive = self.gains[self.gains > -np.inf]
        if alive.size == 0:
            return [], -np.inf
        keep = min(alive.size, _WINDOW)
        threshold = float(np.partition(alive, alive.size - keep)[alive.size - keep])
        inside = np.flatnonzero(self.gains >= threshold)
        inside = inside[np.lexsort((self.rank[inside], -self.gains[inside]))]
        keys = zip(
            (-self.gains[inside]).tolist(), self.rank[inside].tolist(), inside.tolist(), strict=True
        )
        return list(keys), threshold  # sorted, hence a valid heap

    def exact_gain(self, position: int) -> float | None:
        """The gain of one sample at the current counts, as the vectorised ``term`` gives it.

        ``None`` if adding the sample would break a cap.
        """
        if self.capped[position]:
            return None
        row = self.flat[self.starts_list[position] : self.starts_list[position + 1]].tolist()
        if not row:
            return NO_CONCEPT_GAIN
        if any(map(self.near_cap_list.__getitem__, row)):
            counts = self.counts_list
            for concept, copies in Counter(row).items():
                if counts[concept] + copies > self.cap:
                    return None
        return sum(map(self.terms_list.__getitem__, row)) / len(row)

    def count(self, position: int) -> None:
        """Add one sample's concepts to the Python-side mirrors (the arrays follow in ``take``).

        The term is the scalar form of :meth:`term`, with the same floating-point steps.
        """
        counts, targets, inv_freq = self.counts_list, self.targets_list, self.inv_list
        row = self.flat[self.starts_list[position] : self.starts_list[position + 1]].tolist()
        for concept in row:
            count = counts[concept] = counts[concept] + 1
            target = targets[concept]
            value = (target - count) / target + inv_freq[concept] if count < target else -0.5
            self.terms_list[concept] = round(value * GAIN_SCALE)
            self.near_cap_list[concept] = count + self.max_copies_list[concept] > self.cap
            if count == self.cap:  # no sample holding it fits any more
                span = self.concept_start_list[concept], self.concept_start_list[concept + 1]
                self.capped[self.holder[span[0] : span[1]]] = True

    def take(self, picked: list[int]) -> None:
        """Add ``picked`` to the batch and re-score the samples whose gain changes."""
        if not picked:
            return
        self.gains[picked] = -np.inf
        positions = np.asarray(picked)
        changed = self.flat[_ranges(self.starts[positions], self.starts[positions + 1])]
        if changed.size == 0:
            return
        concepts, increments = np.unique(changed, return_counts=True)
        before = self.counts[concepts]
        after = before + increments
        self.counts[concepts] = after
        terms = self.term(np.concatenate([concepts, concepts]), np.concatenate([after, before]))
        delta = terms[: concepts.size] - terms[concepts.size :]
        touched = (delta != 0) | (after + self.max_multiplicity[concepts] > self.cap)
        if not touched.any():
            return
        concepts, delta, after = concepts[touched], delta[touched], after[touched]
        begin, end = self.concept_start[concepts], self.concept_start[concepts + 1]
        occurrence = _ranges(begin, end)
        holder = self.holder[occurrence]
        weights = np.repeat(delta, end - begin)
        if holder.size > self.num_samples // 4:
            self.sums += np.bincount(holder, weights=weights, minlength=self.num_samples)
        else:
            np.add.at(self.sums, holder, weights)
        alive = holder[self.gains[holder] > -np.inf]
        self.gains[alive] = self.sums[alive] / self.lengths[alive]
        over = self.multiplicity[occurrence] + np.repeat(after, end - begin) > self.cap
        self.gains[holder[over]] = -np.inf


def _ranges(begin: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(b, e)`` for each pair, vectorised."""
    lengths = end - begin
    shift = np.repeat(begin - (np.cumsum(lengths) - lengths), lengths)
    return np.arange(int(lengths.sum())) + shift


def check_cabs_arguments(
    filter_ratio: float,
    variant: str,
    cap: int | None,
    targets: torch.Tensor | Sequence[float] | None = None,
    prefix: str = "",
) -> torch.Tensor | None:
    """Check the CABS settings a sampler or datamodule takes; return ``targets`` checked.

    Args:
        filter_ratio: share of each super-batch dropped, a number in ``[0, 1)``.
        variant: one of :data:`CABS_VARIANTS`.
        cap: most occurrences of one concept per batch, a positive integer or ``None``.
        targets: a distribution over the concept vocabulary (see
            :func:`check_cabs_targets`), or ``None``.
        prefix: prefix of the names ``variant``, ``cap`` and ``targets`` in the messages
            (``"cabs_"`` for a datamodule's ``cabs_variant``, ``cabs_cap``, ...).

    Returns:
        ``targets`` as a float64 CPU tensor, or ``None``.

    Raises:
        ValueError: for an argument outside what is allowed, naming it and its value.

    Example:
        >>> check_cabs_arguments(0.8, "dm", 10, [0.25, 0.75]).tolist()
        [0.25, 0.75]
        >>> check_cabs_arguments(0.8, "xx", 10, prefix="cabs_")
        Traceback (most recent call last):
        ...
        ValueError: `cabs_variant` must be one of ('dm', 'fm'), got 'xx'.
    """
    if isinstance(filter_ratio, bool) or not isinstance(filter_ratio, numbers.Real):
        raise ValueError(f"`filter_ratio` must be a number in [0, 1), got {filter_ratio!r}.")
    if not 0.0 <= filter_ratio < 1.0:
        raise ValueError(f"`filter_ratio` must be in [0, 1), got {filter_ratio!r}.")
    if variant not in CABS_VARIANTS:
        raise ValueError(f"`{prefix}variant` must be one of {CABS_VARIANTS}, got {variant!r}.")
    if cap is not None and (
        isinstance(cap, bool) or not isinstance(cap, numbers.Integral) or cap < 1
    ):
        raise ValueError(f"`{prefix}cap` must be a positive integer or None, got {cap!r}.")
    if targets is None:
        return None
    return check_cabs_targets(torch.as_tensor(targets), f"{prefix}targets")
